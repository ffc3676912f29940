package proxy

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
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
// (not nil): stalled when the stall watch aborted it; timeout when a host
// socket gave up on a destination that stopped acknowledging (ETIMEDOUT,
// after the kernel's retransmissions or keep-alive probes went unanswered),
// which sent no reset; reset otherwise.
func relayResultOf(err error) string {
	switch {
	case errors.Is(err, errWriteStalled):
		return "stalled"
	case errors.Is(err, syscall.ETIMEDOUT):
		return "timeout"
	}
	return "reset"
}

// stallWatch aborts relays, and intercepted sessions, whose writes wait
// without progress for longer than the timeout. Writes that find room
// cost it nothing: the connections written to (netstack.Conn,
// hostconn.Conn) tell their writeWatch only when a write is about to
// wait, or waits again after progress (WriteWaiting), and it notes the
// time. A writeWatch joins the watch the first time one of its writes
// waits and leaves it when its owner ends (a relay, a session) or its
// connection closes; one goroutine, running while the watch holds any,
// looks at them all a few times per timeout. A new timeout
// applies at its next look to writes already waiting: a flow stalled for
// five minutes when memory turns short is aborted a minute later, not ten
// minutes later.
type stallWatch struct {
	setMu    sync.Mutex   // held by apply: the last setter's values win
	base     atomic.Int64 // the configured timeout
	pressure atomic.Int32 // netstack.MemoryPressure
	timeout  atomic.Int64 // in force: base, at most the pressure's bound
	stalled  atomic.Uint64
	// stacksClosing is the proxy's (nil outside one): once the stacks
	// close, a relay ends at once and lingers for nothing (relay.go).
	stacksClosing *atomic.Bool

	mu      sync.Mutex
	dirs    map[*writeWatch]struct{}
	running bool          // the sweeper runs
	nudge   chan struct{} // a new timeout for the sweeper
}

func newStallWatch(base time.Duration) *stallWatch {
	if base <= 0 {
		base = DefaultWriteStallTimeout
	}
	w := &stallWatch{dirs: make(map[*writeWatch]struct{}), nudge: make(chan struct{}, 1)}
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

// writeWatch follows the writes to one connection for the stall watch: a
// relay direction's destination, or one of an intercepted session's
// connections (its client's, each to its destination). Its owner is what
// a stall aborts.
type writeWatch struct {
	sw    *stallWatch
	owner stallOwner
	// waitSince is when a write to the connection began to wait, or last
	// made progress while waiting (stallNow); 0 while none waits,
	// negative once the stall watch has taken it.
	waitSince atomic.Int64
	// watched: a write has waited, so the watch holds ww, or ww has been
	// unwatched. gone, guarded by sw.mu: unwatched, so that a first wait
	// racing the end adds nothing.
	watched atomic.Bool
	gone    bool
	// stream: ww follows an HTTP/2 client's stream, not a connection
	// (intercept.Session.WatchStream); conn is nil.
	stream bool
	// The sweeper's own: the connection under its wrappers, and what it
	// last saw of it (stalledFor).
	conn      net.Conn
	kicked    int64 // the wait whose writer was woken to take the room
	ackSince  int64 // the wait ackQueued and ackAt are of
	ackQueued int
	ackAt     int64 // when the destination last took bytes during it
}

// stallOwner is what a stalled write aborts: a relay, or an intercepted
// session.
type stallOwner interface {
	// stall aborts it: ww's write has made no progress for waited. It
	// counts the stall (sw.stalled) unless the owner has ended meanwhile.
	stall(ww *writeWatch, waited, timeout time.Duration)
}

// add puts ww in the watch; the end of its owner takes it out (unwatch).
func (w *stallWatch) add(ww *writeWatch) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if ww.gone {
		return
	}
	w.dirs[ww] = struct{}{}
	if !w.running {
		w.running = true
		go w.sweep()
	}
}

// unwatch takes ww out of the watch for good, when its owner ends or its
// connection closes; a write that waits later is not watched.
func (w *stallWatch) unwatch(ww *writeWatch) {
	if !ww.watched.Swap(true) {
		return // never waited; and a first wait now adds nothing
	}
	w.mu.Lock()
	ww.gone = true
	delete(w.dirs, ww)
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

// sweep aborts the owners of the writes in the watch whose writes have waited
// without progress for the timeout, until the watch is empty.
func (w *stallWatch) sweep() {
	t := time.NewTimer(sweepEvery(time.Duration(w.timeout.Load())))
	defer t.Stop()
	var waiting []*writeWatch
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
		for ww := range w.dirs {
			if ww.waitSince.Load() > 0 {
				waiting = append(waiting, ww)
			}
		}
		w.mu.Unlock()
		// Looked at without the lock, which relays starting and ending
		// take: a relay that ends meanwhile is not aborted (stall).
		timeout := w.timeout.Load()
		now := stallNow()
		for i, ww := range waiting {
			waiting[i] = nil
			since := ww.waitSince.Load()
			if since <= 0 {
				continue
			}
			if waited, ok := ww.stalledFor(since, now, timeout); ok &&
				ww.waitSince.CompareAndSwap(since, -since) { // a write's progress meanwhile keeps it
				ww.owner.stall(ww, time.Duration(waited), time.Duration(timeout))
			}
		}
		waiting = waiting[:0]
		t.Reset(sweepEvery(time.Duration(timeout)))
	}
}

// stalledFor says whether ww's write, waiting since then, has seen no
// progress for the timeout, and how long. A write's own progress moves
// since; but the stack and the kernel wake a waiting write only once a
// good part of the send buffer is free, so the destination's progress
// while it waits (bytes it acknowledged) is asked of the connection: the
// stack's send buffer has room again, or the socket's queue of bytes not
// yet acknowledged has shrunk since the first look at this wait. It runs
// in the sweeper only.
func (ww *writeWatch) stalledFor(since, now, timeout int64) (int64, bool) {
	switch c := ww.conn.(type) {
	case *netstack.Conn:
		if now-since < timeout {
			return 0, false
		}
		if ww.kicked != since && c.KickWriter() {
			ww.kicked = since // woken to take what the client made room for: its progress moves since
			return 0, false
		}
		return now - since, true
	case *hostconn.Conn:
		if ww.ackSince != since { // a new wait: note the queue
			q, err := c.SendQueued()
			if err != nil {
				q = -1
			}
			ww.ackSince, ww.ackQueued, ww.ackAt = since, q, since
		}
		if now-ww.ackAt < timeout {
			return 0, false
		}
		if q, err := c.SendQueued(); err == nil && q < ww.ackQueued {
			ww.ackQueued, ww.ackAt = q, now // the destination took some
			return 0, false
		}
		return now - ww.ackAt, true
	}
	return now - since, now-since >= timeout
}

// WriteWaiting implements netstack.WriteWaiter and hostconn.WriteWaiter:
// it runs in the writer's goroutine, only when a write to the connection
// is about to wait.
func (ww *writeWatch) WriteWaiting(waiting bool) {
	if !waiting {
		ww.waitSince.Store(0)
		return
	}
	ww.waitSince.Store(stallNow())
	if !ww.watched.Load() && !ww.watched.Swap(true) {
		ww.sw.add(ww)
	}
	// After the wait is in the watch: a wait that began as the stacks
	// closed is ended here or by their close's walk (endWaiting).
	if c := ww.sw.stacksClosing; c != nil && c.Load() {
		if o, ok := ww.owner.(shutdownOwner); ok {
			go o.shutdownWaiting(ww) // not here: the write holds its socket
		}
	}
}

// shutdownOwner is an owner whose waiting writes the stacks' close does
// not reach by itself (a relay, whose client may have ended already).
type shutdownOwner interface {
	// shutdownWaiting ends it, ww's write waiting as the stacks close.
	shutdownWaiting(ww *writeWatch)
}

// endWaiting ends the owners of the writes waiting as the stacks close,
// when they are shutdownOwners: nothing else may ever end such a write
// but the write-stall timeout, long after the drain. Called once the
// stacks are closing (stacksClosing set): a write that waits later sees
// it (WriteWaiting).
func (w *stallWatch) endWaiting() {
	var waiting []*writeWatch
	w.mu.Lock()
	for ww := range w.dirs {
		if ww.waitSince.Load() > 0 {
			waiting = append(waiting, ww)
		}
	}
	w.mu.Unlock()
	for _, ww := range waiting {
		if o, ok := ww.owner.(shutdownOwner); ok {
			o.shutdownWaiting(ww)
		}
	}
}

// watchWrites has conn, under its wrappers, tell ww when a write to it
// waits, if it can (netstack.Conn, hostconn.Conn), for sw to abort owner
// when one makes no progress for the timeout; it reports whether it can.
// A write to anything else is not bounded.
func (ww *writeWatch) watchWrites(sw *stallWatch, owner stallOwner, conn net.Conn) bool {
	ww.sw, ww.owner = sw, owner
	for {
		w, ok := conn.(wrappedConn)
		if !ok {
			break
		}
		conn = w.unwrap()
	}
	switch c := conn.(type) {
	case *netstack.Conn:
		ww.conn = c
		c.OnWriteWait(ww)
	case *hostconn.Conn:
		ww.conn = c
		c.OnWriteWait(ww)
	default:
		return false
	}
	return true
}

// waitedLonger returns which of ww and other has waited longer, and for
// how long: when both wait (a client that stops reading a download soon
// stops its destination reading the upload too), the one that has waited
// longer is the cause, whichever the sweeper met first.
func waitedLonger(ww *writeWatch, waited time.Duration, other *writeWatch) (*writeWatch, time.Duration) {
	if since := other.waitSince.Load(); since > 0 {
		if w := time.Duration(stallNow() - since); w > waited {
			return other, w
		}
	}
	return ww, waited
}

// stallError is the error of a connection aborted because to (the client,
// the destination) accepted nothing written to it for waited.
func stallError(to string, waited, timeout time.Duration) error {
	return fmt.Errorf("%w: the %s accepted nothing written to it for %v (write-stall timeout %v)",
		errWriteStalled, to, waited.Round(time.Millisecond), timeout)
}

// stallBound is the write-stall timeout in force for r's writes (the
// default where r has no watch): the bound of a destination socket closed
// with bytes still to send (closeDelivering).
func (r *relay) stallBound() time.Duration {
	if r.stalls == nil {
		return DefaultWriteStallTimeout
	}
	return time.Duration(r.stalls.timeout.Load())
}

// stall aborts the relay, whose write through ww has made no progress for
// waited: both peers get a reset, the waiting write returns, and the
// record says why.
func (r *relay) stall(ww *writeWatch, waited, timeout time.Duration) {
	r.aborting.Lock()
	defer r.aborting.Unlock()
	if r.left.Load() == 0 || r.stalled.Load() != nil {
		return // the relay has ended meanwhile
	}
	other := &r.in.ww
	if ww == other {
		other = &r.out.ww
	}
	culprit, waited := waitedLonger(ww, waited, other)
	to := "destination"
	if culprit == &r.in.ww {
		to = "client"
	}
	err := stallError(to, waited, timeout)
	r.stalled.Store(&err)
	ww.sw.stalled.Add(1)
	r.cutAfterBreak(err)
	r.cutOnReset(culprit == &r.out.ww) // a stall of the write to the destination
	intercept.Abort(r.client)
	intercept.Abort(r.upstream)
}

// sessionWatch bounds the writes of an intercepted session as a relay's
// are bounded: to its client (under the TLS the appliance terminates),
// and to each of its connections to the destination (under the TLS it
// originates). A stall ends the whole session (intercept.Session.Abort):
// every connection is reset, which ends goproxy's and the transports'
// goroutines waiting on them, and the connection's record says stalled.
type sessionWatch struct {
	p          *Proxy
	is         *intercept.Session
	client, up writeWatch
	// broken ends the session when its client's connection breaks
	// (clientwatch.go).
	broken clientWatch

	mu sync.Mutex
	// more: further connections to the destination, until closed, and
	// the client's HTTP/2 streams, until their relay ends (watchStream).
	more  map[*writeWatch]struct{}
	ended bool
}

// watchSession watches is's client and first upstream connection, and
// each further one it dials, from now until is.Done; and its client's
// connection for a break (clientwatch.go).
// key is its client's, for its share of lingering connections.
func (p *Proxy) watchSession(is *intercept.Session, key shareKey) {
	sw := &sessionWatch{p: p, is: is}
	sw.broken.key = key
	sw.client.watchWrites(p.stalls, sw, is.Client)
	sw.up.watchWrites(p.stalls, sw, is.Upstream)
	is.WatchUpstream = sw.watchUpstream
	is.WatchStream = sw.watchStream
	is.Done = sw.done
	sw.broken.watch(p, is)
}

func (sw *sessionWatch) watchUpstream(c net.Conn) func() {
	ww := new(writeWatch)
	if !ww.watchWrites(sw.p.stalls, sw, c) {
		return nil
	}
	sw.mu.Lock()
	defer sw.mu.Unlock()
	if sw.ended {
		sw.p.stalls.unwatch(ww)
		return nil
	}
	if sw.more == nil {
		sw.more = make(map[*writeWatch]struct{})
	}
	sw.more[ww] = struct{}{}
	return func() {
		sw.mu.Lock()
		delete(sw.more, ww)
		sw.mu.Unlock()
		sw.p.stalls.unwatch(ww)
	}
}

// watchStream watches the relay of a response to one of the client's
// HTTP/2 streams (intercept.Session.WatchStream): the body's reader tells
// it when a write of the body waits on the client, and a write waiting
// for the timeout (a stream the client grants no window, its connection
// read all the while) stalls the session as a connection's write does.
func (sw *sessionWatch) watchStream() (intercept.WriteWaiter, func()) {
	ww := &writeWatch{sw: sw.p.stalls, owner: sw, stream: true}
	sw.mu.Lock()
	defer sw.mu.Unlock()
	if sw.ended {
		return nil, nil
	}
	if sw.more == nil {
		sw.more = make(map[*writeWatch]struct{})
	}
	sw.more[ww] = struct{}{}
	return ww, func() {
		sw.mu.Lock()
		delete(sw.more, ww)
		sw.mu.Unlock()
		sw.p.stalls.unwatch(ww)
	}
}

// done is the session's Done: it leaves the watch, and the connection
// counts as ended.
func (sw *sessionWatch) done() {
	sw.mu.Lock()
	sw.ended = true
	more := sw.more
	sw.more = nil
	sw.mu.Unlock()
	sw.broken.stop()
	st := sw.p.stalls
	st.unwatch(&sw.client)
	st.unwatch(&sw.up)
	for ww := range more {
		st.unwatch(ww)
	}
	sw.p.stats.tcpActive.Add(-1)
}

// stall aborts the session, whose write through ww has made no progress
// for waited.
func (sw *sessionWatch) stall(ww *writeWatch, waited, timeout time.Duration) {
	// Held throughout, so that a session that has ended is not counted:
	// Abort only resets connections, it calls nothing back.
	sw.mu.Lock()
	defer sw.mu.Unlock()
	if sw.ended {
		return
	}
	// Whichever of its writes has waited longest is the cause.
	culprit, waited := waitedLonger(ww, waited, &sw.client)
	culprit, waited = waitedLonger(culprit, waited, &sw.up)
	for o := range sw.more {
		culprit, waited = waitedLonger(culprit, waited, o)
	}
	to := "destination"
	switch {
	case culprit == &sw.client:
		to = "client"
	case culprit.stream:
		to = "client (on an HTTP/2 stream)"
	}
	// Counted before the session's records can be written, as a relay's
	// stall is.
	// A tunnel's write of the upload blocked after its client's break
	// after its FIN is said as its linger says a tail cut short.
	result, err := sw.is.StallAbort(stallError(to, waited, timeout))
	sw.is.AbortNoting(result, err, func() { ww.sw.stalled.Add(1) })
}
