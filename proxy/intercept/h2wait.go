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
//     request that finds maxWaitingStreams of its requests without a
//     response head already (waiting for a connection, or for the
//     origin's answer on one, or tried again on a new one) is answered
//     503 at once: only a client that ignored the setting (or opened
//     streams before it came) meets that. (The session's requests in
//     flight, waiting or past their heads, are bounded at as many:
//     streamcap.go.);
//   - in time: a request that has waited upstreamWaitTimeout for a
//     connection while the session's upstream showed no progress (no
//     request got a connection, and the origin sent no byte) is answered
//     503. An origin that answers or streams, however slowly, keeps its
//     queue moving and its waiting requests waiting (an honest client's
//     ninth request behind eight long downloads); one that sends nothing
//     for that long will not serve them. Once a request has its
//     connection, its wait for the answer is not timed, as an HTTP/1
//     client's is not: an origin that trickles a byte every 29 s keeps
//     its session's requests, at most maxWaitingStreams of them.
//
// Both 503s are recorded, the error saying why.

// h2MaxConcurrentStreams is the concurrent streams an HTTP/2 client is
// allowed, the value RFC 9113 recommends as the least (browsers open
// about that many towards one origin, and queue the rest themselves).
const h2MaxConcurrentStreams = 100

// maxWaitingStreams bounds a session's requests without a response head
// at once: an honest client has at most h2MaxConcurrentStreams open.
const maxWaitingStreams = h2MaxConcurrentStreams

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

// errTooManyWaiting and errWaitedTooLong are the two bounds' errors.
var (
	errTooManyWaiting = fmt.Errorf("%w: %d of the session's requests wait on its upstream already (%d connections at most; %d concurrent streams are advertised)",
		errUpstreamWait, maxWaitingStreams, maxUpstreamConns, h2MaxConcurrentStreams)
	errWaitedTooLong = &waitedTooLong{}
)

// waitedTooLong is errWaitedTooLong: a timeout, as records.DialResult
// reads it (result "timeout").
type waitedTooLong struct{}

func (*waitedTooLong) Error() string {
	return fmt.Sprintf("%v: none of the session's %d upstream connections came free, and the destination sent nothing, within %v", errUpstreamWait, maxUpstreamConns, upstreamWaitTimeout.Load())
}
func (*waitedTooLong) Unwrap() error   { return errUpstreamWait }
func (*waitedTooLong) Timeout() bool   { return true }
func (*waitedTooLong) Temporary() bool { return true }

// upstreamWait is a session's requests that have no response head yet:
// waiting for an upstream connection, or for the origin's answer on one.
type upstreamWait struct {
	waiting atomic.Int32
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

// startWait enters the request in w's count, refused past
// maxWaitingStreams, and arms the bound on its wait for a connection; w
// may be nil (no bound). The count lasts until the request has its
// response head or ends (stop): a stream an HTTP/2 origin never answers
// holds as much as one waiting for a connection, and a request net/http
// tries again on a new connection is counted still.
func (d *headDeadline) startWait(w *upstreamWait) error {
	if w == nil {
		return nil
	}
	if w.waiting.Add(1) > maxWaitingStreams {
		w.waiting.Add(-1)
		return errTooManyWaiting
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.wait = w
	d.waitTimer = time.AfterFunc(upstreamWaitTimeout.Load(), d.waitExpired)
	return nil
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

// endWait takes the request out of its session's count, once: it has its
// response head, or ended without one (which is no progress). Under mu.
func (d *headDeadline) endWait() {
	if d.wait == nil {
		return
	}
	d.untimeWait()
	d.wait.waiting.Add(-1)
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
