package intercept

import (
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Streams waiting on the upstream.
//
// An HTTP/2 client's streams towards an HTTP/1 origin share
// maxUpstreamConns connections; the others wait in net/http's queue (or
// for a slot, connset.go) until one comes free. Each waiting stream holds
// goproxy's handler goroutine, its request and its parsed header list:
// 13 KB for a few fields, 157 KB for a list of tiny ones. An origin of
// the client's own that reads requests and never answers held 242 of them
// per client connection (goproxy's server allows 250) for as long as it
// liked, 3-38 MB the memory reclaim never saw (it weighed a connection by
// its stack buffers alone; held.go charges waiting requests to it now); an
// HTTP/2 origin that never answers holds as much, its streams all on one
// connection. So the wait is bounded twice:
//
//   - in number: the appliance advertises SETTINGS_MAX_CONCURRENT_STREAMS
//     h2MaxConcurrentStreams (h2guard.go rewrites goproxy's 250; its
//     server, which cannot be configured, still takes 250), so an honest
//     client never has more than that many streams open, and a session's
//     request that finds maxStreamsInFlight of its requests in flight
//     already (waiting for a connection, for the origin's answer on one,
//     or past their heads) is answered 503 at once (streamcap.go): only a
//     client that ignored the setting (or opened streams before it came)
//     meets that. The waiting requests had a count of their own, until
//     their head or their round trip's end, which refused an honest
//     client's stream opened the moment it had reset one still counted;
//     the requests in flight bound them, and stop counting a reset one
//     at once;
//   - in time: a request that has waited upstreamWaitTimeout for a
//     connection while the session's upstream showed no progress (no
//     request got a connection, and the origin sent no byte) is answered
//     503. An origin that answers or streams, however slowly, keeps its
//     queue moving and its waiting requests waiting (an honest client's
//     ninth request behind eight long downloads); one that sends nothing
//     for that long will not serve them. Once a request has its
//     connection, its wait for the answer is not timed, as an HTTP/1
//     client's is not: an origin that trickles a byte every 29 s keeps
//     its session's requests, at most maxStreamsInFlight of them.
//
// Both 503s are recorded, the error saying why.

// h2MaxConcurrentStreams is the concurrent streams an HTTP/2 client is
// allowed, the value RFC 9113 recommends as the least (browsers open
// about that many towards one origin, and queue the rest themselves).
const h2MaxConcurrentStreams = 100

// upstreamWaitTimeout bounds a request's wait for an upstream connection
// while its session's upstream shows no progress. It covers the dial and
// handshake of a new connection (--dial-timeout each, 10 s by default).
var upstreamWaitTimeout = newDuration(30 * time.Second) // set by tests, read by timers: atomic

// atomicDuration is a time.Duration read and set atomically.
type atomicDuration struct{ v atomic.Int64 }

func newDuration(d time.Duration) *atomicDuration {
	a := &atomicDuration{}
	a.Store(d)
	return a
}

// Load returns the duration.
func (a *atomicDuration) Load() time.Duration { return time.Duration(a.v.Load()) }

// Store sets it.
func (a *atomicDuration) Store(d time.Duration) { a.v.Store(int64(d)) }

// errUpstreamWait ends a request whose wait for an upstream connection
// was bounded; roundTrip answers it 503 (upstreamFailStatus).
var errUpstreamWait = errors.New("waiting for an upstream connection")

// errWaitedTooLong is the bound's error.
var errWaitedTooLong = &waitedTooLong{}

// waitedTooLong is errWaitedTooLong: a timeout, as records.DialResult
// reads it (result "timeout").
type waitedTooLong struct{}

func (*waitedTooLong) Error() string {
	return fmt.Sprintf("%v: none of the session's %d upstream connections came free, and the destination sent nothing, within %v", errUpstreamWait, maxUpstreamConns, upstreamWaitTimeout.Load())
}
func (*waitedTooLong) Unwrap() error   { return errUpstreamWait }
func (*waitedTooLong) Timeout() bool   { return true }
func (*waitedTooLong) Temporary() bool { return true }

// upstreamWait is what a session's requests waiting for an upstream
// connection look at: the progress of its upstream. It bounds their waits
// with one timer, not one each: every HTTP/2 request waits, if only for
// the moment until net/http hands it a connection, and a timer of its own
// was two allocations per request.
type upstreamWait struct {
	// lastGot is when the session's upstream last showed progress
	// (UnixNano): a request got a connection, or the origin sent bytes.
	lastGot atomic.Int64
	// bytesIn reads what the session's upstream connections have
	// received; lastBytes is what it read at the last look.
	bytesIn   func() int64
	lastBytes atomic.Int64

	mu sync.Mutex
	// waiting: the requests whose waits are timed, linked through their
	// waitNext and waitPrev.
	waiting *headDeadline
	// timer runs expire at timerDue (zero: stopped), no later than the
	// soonest look of a waiting request; made by the first wait.
	timer    *time.Timer
	timerDue time.Time
}

// newUpstreamWait returns a session's upstreamWait; in reads what its
// upstream connections have received.
func newUpstreamWait(in func() int64) *upstreamWait {
	return &upstreamWait{bytesIn: in}
}

// moved reports whether the origin sent bytes since the last look, and
// notes it as progress.
func (w *upstreamWait) moved() bool {
	cur := w.bytesIn()
	if cur == w.lastBytes.Swap(cur) {
		return false
	}
	w.lastGot.Store(time.Now().UnixNano())
	return true
}

// add times d's wait: its first look is due after bound.
func (w *upstreamWait) add(d *headDeadline, bound time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := time.Now()
	d.waitDue = now.Add(bound)
	d.waitPrev, d.waitNext = nil, w.waiting
	if w.waiting != nil {
		w.waiting.waitPrev = d
	}
	w.waiting = d
	d.waitListed = true
	switch {
	case w.timer == nil:
		w.timer = time.AfterFunc(bound, w.expire)
	case w.timerDue.IsZero() || d.waitDue.Before(w.timerDue):
		w.timer.Reset(bound)
	default:
		return // the timer comes sooner
	}
	w.timerDue = d.waitDue
}

// remove ends the timing of d's wait, if timed; the timer stops with the
// last one.
func (w *upstreamWait) remove(d *headDeadline) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.unlink(d)
	if w.waiting == nil && !w.timerDue.IsZero() {
		w.timer.Stop()
		w.timerDue = time.Time{}
	}
}

// unlink takes d out of the waiting list, if in it. Under mu.
func (w *upstreamWait) unlink(d *headDeadline) {
	if !d.waitListed {
		return
	}
	if d.waitPrev != nil {
		d.waitPrev.waitNext = d.waitNext
	} else {
		w.waiting = d.waitNext
	}
	if d.waitNext != nil {
		d.waitNext.waitPrev = d.waitPrev
	}
	d.waitPrev, d.waitNext, d.waitListed = nil, nil, false
}

// expire looks at every waiting request whose look is due, as a timer of
// its own would have at that moment: it ends the request if the session's
// upstream showed no progress for the bound, else it looks again once the
// bound from the progress has passed. The timer is set for the next look.
func (w *upstreamWait) expire() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.timerDue = time.Time{}
	now := time.Now()
	var next time.Time
	for d := w.waiting; d != nil; {
		nd := d.waitNext
		if !d.waitDue.After(now) {
			bound := upstreamWaitTimeout.Load()
			if w.moved() {
				d.waitDue = now.Add(bound)
			} else if since := time.Since(time.Unix(0, w.lastGot.Load())); since < bound {
				d.waitDue = now.Add(bound - since)
			} else {
				w.unlink(d)
				d.cancel(errWaitedTooLong)
				d = nd
				continue
			}
		}
		if next.IsZero() || d.waitDue.Before(next) {
			next = d.waitDue
		}
		d = nd
	}
	if !next.IsZero() {
		w.timer.Reset(next.Sub(now))
		w.timerDue = next
	}
}

// startWait bounds the request's wait for a connection, which ends once
// it has one (gotConnection), its response head, or its end (stop); w
// may be nil (no bound).
func (d *headDeadline) startWait(w *upstreamWait) {
	if w == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.wait = w
	d.waitTimed = true
	w.add(d, upstreamWaitTimeout.Load())
}

// gotConnection ends the bound on the request's wait for a connection,
// and notes the progress for the others. Under mu.
func (d *headDeadline) gotConnection() {
	if !d.waitTimed {
		return
	}
	d.wait.lastGot.Store(time.Now().UnixNano())
	d.untimeWait()
}

// untimeWait ends the bound on the request's wait. Under mu.
func (d *headDeadline) untimeWait() {
	if d.waitTimed {
		d.wait.remove(d)
		d.waitTimed = false
	}
}

// endWait ends the request's wait, once: it has its response head, or
// ended without one (which is no progress). Under mu.
func (d *headDeadline) endWait() {
	if d.wait == nil {
		return
	}
	d.untimeWait()
	d.wait = nil
}

// upstreamFailStatus is the status of a request the transport failed with
// err: 503 for one refused a wait for an upstream connection (the
// appliance's bound, which a later try may pass), else 502.
func upstreamFailStatus(err error) int {
	if errors.Is(err, errUpstreamWait) {
		return http.StatusServiceUnavailable
	}
	return http.StatusBadGateway
}
