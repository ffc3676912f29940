package proxy

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/hostconn"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// A relayed flow whose destination of a write accepts nothing (a client
// at a zero window under a download, a destination that stops reading an
// upload) keeps what it has in hand: the relay's 256 KiB buffer, and
// gVisor's send or receive buffer, up to 4 MiB each. Admission control
// refuses new flows when memory is short, but a few thousand flows
// admitted while it was ample, then stalled, would hold gigabytes. As
// Squid's write_timeout does, a relay direction whose write makes no
// progress for the write-stall timeout is aborted, and the timeout is
// shortened while memory is short or critical (SetMemoryPressure).
const (
	// DefaultWriteStallTimeout is the write-stall timeout while memory is
	// ample (Squid's write_timeout).
	DefaultWriteStallTimeout = 15 * time.Minute
	// ShortMemoryWriteStallTimeout and CriticalMemoryWriteStallTimeout
	// bound it while memory is short and critical.
	ShortMemoryWriteStallTimeout    = 60 * time.Second
	CriticalMemoryWriteStallTimeout = 10 * time.Second
)

// errWriteStalled is what a stalled flow's error wraps.
var errWriteStalled = errors.New("write stalled")

// relayResultOf is the record's result for a relay that ended with err
// (not nil).
func relayResultOf(err error) string {
	if errors.Is(err, errWriteStalled) {
		return "stalled"
	}
	return "reset"
}

// stallWatch aborts relays whose writes wait without progress for longer
// than the timeout. Writes that find room cost it nothing: the
// destinations of the writes (netstack.Conn, hostconn.Conn) tell a
// direction only when a write is about to wait, or waits again after
// progress (WriteWaiting), and the direction notes the time. A direction
// joins the watch the first time one of its writes waits and leaves it
// when its relay ends; one goroutine, running while any direction is in
// the watch, looks at them all a few times per timeout. A new timeout
// applies at its next look to writes already waiting: a flow stalled for
// five minutes when memory turns short is aborted a minute later, not ten
// minutes later.
type stallWatch struct {
	setMu    sync.Mutex   // held by apply: the last setter's values win
	base     atomic.Int64 // the configured timeout
	pressure atomic.Int32 // netstack.MemoryPressure
	timeout  atomic.Int64 // in force: base, at most the pressure's bound
	stalled  atomic.Uint64

	mu      sync.Mutex
	dirs    map[*halfRelay]struct{}
	running bool          // the sweeper runs
	nudge   chan struct{} // a new timeout for the sweeper
}

func newStallWatch(base time.Duration) *stallWatch {
	if base <= 0 {
		base = DefaultWriteStallTimeout
	}
	w := &stallWatch{dirs: make(map[*halfRelay]struct{}), nudge: make(chan struct{}, 1)}
	w.base.Store(int64(base))
	w.apply()
	return w
}

// SetWriteStallTimeout sets the write-stall timeout while memory is
// ample (DefaultWriteStallTimeout for 0 or less); under memory pressure
// the shorter bound wins. It applies to writes already waiting.
func (p *Proxy) SetWriteStallTimeout(d time.Duration) {
	if d <= 0 {
		d = DefaultWriteStallTimeout
	}
	p.stalls.base.Store(int64(d))
	p.stalls.apply()
}

// SetMemoryPressure shortens the write-stall timeout while memory is
// short (ShortMemoryWriteStallTimeout) or critical
// (CriticalMemoryWriteStallTimeout), for writes already waiting too, and
// restores it when memory is ample again.
func (p *Proxy) SetMemoryPressure(l netstack.MemoryPressure) {
	p.stalls.pressure.Store(int32(l))
	p.stalls.apply()
}

// WriteStallTimeout returns the write-stall timeout in force.
func (p *Proxy) WriteStallTimeout() time.Duration {
	return time.Duration(p.stalls.timeout.Load())
}

func (w *stallWatch) apply() {
	w.setMu.Lock()
	defer w.setMu.Unlock()
	d := time.Duration(w.base.Load())
	switch netstack.MemoryPressure(w.pressure.Load()) {
	case netstack.MemoryShort:
		d = min(d, ShortMemoryWriteStallTimeout)
	case netstack.MemoryCritical:
		d = min(d, CriticalMemoryWriteStallTimeout)
	}
	if w.timeout.Swap(int64(d)) != int64(d) {
		select {
		case w.nudge <- struct{}{}:
		default: // a nudge is pending already
		}
	}
}

// add puts h in the watch; its relay's end takes it out (remove).
func (w *stallWatch) add(h *halfRelay) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.dirs[h] = struct{}{}
	if !w.running {
		w.running = true
		go w.sweep()
	}
}

func (w *stallWatch) remove(h *halfRelay) {
	w.mu.Lock()
	delete(w.dirs, h)
	w.mu.Unlock()
}

// stallClock anchors stallNow.
var stallClock = time.Now()

// stallNow returns nanoseconds on the monotonic clock, never 0 (a wait's
// start is stored as a positive number): a step of the wall clock, at boot
// or on a VM's resume, must not make every waiting write look stalled.
func stallNow() int64 { return int64(time.Since(stallClock)) + 1 }

// sweepEvery is how often the sweeper looks: a tenth of the timeout,
// between 10 ms and a second. A flow is aborted that long after its
// timeout at most, or, when its peer acknowledged something while the
// write waited (stalledFor), after one more wait: between one and about
// two timeouts after its last progress.
func sweepEvery(timeout time.Duration) time.Duration {
	return min(max(timeout/10, 10*time.Millisecond), time.Second)
}

// sweep aborts the directions in the watch whose writes have waited
// without progress for the timeout, until the watch is empty.
func (w *stallWatch) sweep() {
	t := time.NewTimer(sweepEvery(time.Duration(w.timeout.Load())))
	defer t.Stop()
	var waiting []*halfRelay
	for {
		select {
		case <-t.C:
		case <-w.nudge:
			t.Stop()
		}
		w.mu.Lock()
		if len(w.dirs) == 0 {
			w.running = false
			w.mu.Unlock()
			return
		}
		for h := range w.dirs {
			if h.waitSince.Load() > 0 {
				waiting = append(waiting, h)
			}
		}
		w.mu.Unlock()
		// Looked at without the lock, which relays starting and ending
		// take: a relay that ends meanwhile is not aborted (stall).
		timeout := w.timeout.Load()
		now := stallNow()
		for i, h := range waiting {
			waiting[i] = nil
			since := h.waitSince.Load()
			if since <= 0 {
				continue
			}
			if waited, ok := h.stalledFor(since, now, timeout); ok &&
				h.waitSince.CompareAndSwap(since, -since) { // a write's progress meanwhile keeps it
				h.stall(time.Duration(waited), time.Duration(timeout), &w.stalled)
			}
		}
		waiting = waiting[:0]
		t.Reset(sweepEvery(time.Duration(timeout)))
	}
}

// stalledFor says whether h's write, waiting since then, has seen no
// progress for the timeout, and how long. A write's own progress moves
// since; but the stack and the kernel wake a waiting write only once a
// good part of the send buffer is free, so the destination's progress
// while it waits (bytes it acknowledged) is asked of the connection: the
// stack's send buffer has room again, or the socket's queue of bytes not
// yet acknowledged has shrunk since the first look at this wait. It runs
// in the sweeper only.
func (h *halfRelay) stalledFor(since, now, timeout int64) (int64, bool) {
	switch c := h.wdst.(type) {
	case *netstack.Conn:
		if now-since < timeout {
			return 0, false
		}
		if h.kicked != since && c.KickWriter() {
			h.kicked = since // woken to take what the client made room for: its progress moves since
			return 0, false
		}
		return now - since, true
	case *hostconn.Conn:
		if h.ackSince != since { // a new wait: note the queue
			q, err := c.SendQueued()
			if err != nil {
				q = -1
			}
			h.ackSince, h.ackQueued, h.ackAt = since, q, since
		}
		if now-h.ackAt < timeout {
			return 0, false
		}
		if q, err := c.SendQueued(); err == nil && q < h.ackQueued {
			h.ackQueued, h.ackAt = q, now // the destination took some
			return 0, false
		}
		return now - h.ackAt, true
	}
	return now - since, now-since >= timeout
}

// WriteWaiting implements netstack.WriteWaiter and hostconn.WriteWaiter:
// it runs in the direction's goroutine, only when a write to its
// destination is about to wait.
func (h *halfRelay) WriteWaiting(waiting bool) {
	if !waiting {
		h.waitSince.Store(0)
		return
	}
	h.waitSince.Store(stallNow())
	if !h.watched {
		h.watched = true
		h.r.stalls.add(h)
	}
}

// watchWrites has dst, under its wrappers, tell h when a write to it
// waits, if it can (netstack.Conn, hostconn.Conn): a write to anything
// else is not bounded.
func (h *halfRelay) watchWrites(dst net.Conn) {
	for {
		w, ok := dst.(wrappedConn)
		if !ok {
			break
		}
		dst = w.unwrap()
	}
	switch c := dst.(type) {
	case *netstack.Conn:
		h.wdst = c
		c.OnWriteWait(h)
	case *hostconn.Conn:
		h.wdst = c
		c.OnWriteWait(h)
	}
}

// stall aborts h's relay, whose write has made no progress for waited:
// both peers get a reset, the waiting write returns, and the record says
// why.
func (h *halfRelay) stall(waited, timeout time.Duration, count *atomic.Uint64) {
	r := h.r
	r.aborting.Lock()
	defer r.aborting.Unlock()
	if r.left.Load() == 0 || r.stalled.Load() != nil {
		return // the relay has ended meanwhile
	}
	// When both directions wait (a client that stops reading a download
	// soon stops its destination reading the upload too), the one that
	// has waited longer is the cause, whichever the sweeper met first.
	culprit := h
	other := &r.in
	if h == &r.in {
		other = &r.out
	}
	if since := other.waitSince.Load(); since > 0 {
		if w := time.Duration(stallNow() - since); w > waited {
			culprit, waited = other, w
		}
	}
	to := "destination"
	if culprit == &r.in {
		to = "client"
	}
	err := fmt.Errorf("%w: the %s accepted nothing written to it for %v (write-stall timeout %v)",
		errWriteStalled, to, waited.Round(time.Millisecond), timeout)
	r.stalled.Store(&err)
	count.Add(1)
	intercept.Abort(h.src)
	intercept.Abort(h.dst)
}
