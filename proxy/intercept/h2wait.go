package intercept

import (
	"errors"
	"fmt"
	"net/http"
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
// connection look at: the progress of its upstream.
type upstreamWait struct {
	// lastGot is when the session's upstream last showed progress
	// (UnixNano): a request got a connection, or the origin sent bytes.
	lastGot atomic.Int64
	// bytesIn reads what the session's upstream connections have
	// received; lastBytes is what it read at the last look.
	bytesIn   func() int64
	lastBytes atomic.Int64
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

// startWait arms the bound on the request's wait for a connection, which
// ends once it has one (gotConnection), its response head, or its end
// (stop); w may be nil (no bound).
func (d *headDeadline) startWait(w *upstreamWait) {
	if w == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.wait = w
	d.waitTimer = time.AfterFunc(upstreamWaitTimeout.Load(), d.waitExpired)
}

// waitExpired ends the request if it still waits for a connection and the
// session's upstream showed no progress for the bound; else it looks
// again then.
func (d *headDeadline) waitExpired() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.waitTimer == nil { // it got one, or ended
		return
	}
	bound := upstreamWaitTimeout.Load()
	if d.wait.moved() {
		d.waitTimer.Reset(bound)
		return
	}
	if since := time.Since(time.Unix(0, d.wait.lastGot.Load())); since < bound {
		d.waitTimer.Reset(bound - since)
		return
	}
	d.cancel(errWaitedTooLong)
}

// gotConnection ends the bound on the request's wait for a connection,
// and notes the progress for the others. Under mu.
func (d *headDeadline) gotConnection() {
	if d.waitTimer == nil {
		return
	}
	d.wait.lastGot.Store(time.Now().UnixNano())
	d.untimeWait()
}

// untimeWait ends the bound on the request's wait. Under mu.
func (d *headDeadline) untimeWait() {
	if d.waitTimer != nil {
		d.waitTimer.Stop()
		d.waitTimer = nil
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
