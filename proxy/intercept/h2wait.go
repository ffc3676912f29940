package intercept

import (
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"
)

// Streams waiting for an upstream connection.
//
// An HTTP/2 client's streams towards an HTTP/1 origin share
// maxUpstreamConns connections; the others wait in net/http's queue (or
// for a slot, connset.go) until one comes free. Each waiting stream holds
// goproxy's handler goroutine, its request and its parsed header list:
// 13 KB for a few fields, 157 KB for a list of tiny ones. An origin of
// the client's own that reads requests and never answers held 242 of them
// per client connection (goproxy's server allows 250) for as long as it
// liked, 3-38 MB the memory reclaim never saw (it weighs a connection by
// its stack buffers). So the wait is bounded twice:
//
//   - in number: the appliance advertises SETTINGS_MAX_CONCURRENT_STREAMS
//     h2MaxConcurrentStreams (h2guard.go rewrites goproxy's 250), so an
//     honest client never has more than that many streams open, and a
//     session's request that finds maxWaitingStreams of its requests
//     waiting already is answered 503 at once: only a client that ignored
//     the setting (or opened streams before it came) meets that;
//   - in time: a request that has waited upstreamWaitTimeout while no
//     request of its session got a connection is answered 503. An origin
//     that serves the session's requests, however slowly, keeps its queue
//     moving and its waiting requests waiting; one that serves none for
//     that long will not serve them.
//
// Both 503s are recorded, the error saying why.

// h2MaxConcurrentStreams is the concurrent streams an HTTP/2 client is
// allowed, the value RFC 9113 recommends as the least (browsers open
// about that many towards one origin, and queue the rest themselves).
const h2MaxConcurrentStreams = 100

// maxWaitingStreams bounds a session's requests waiting for an upstream
// connection at once: an honest client has at most
// h2MaxConcurrentStreams-maxUpstreamConns waiting.
const maxWaitingStreams = h2MaxConcurrentStreams

// upstreamWaitTimeout bounds a request's wait for an upstream connection
// while none of its session's requests gets one. It covers the dial and
// handshake of a new connection (--dial-timeout each, 10 s by default).
var upstreamWaitTimeout = 30 * time.Second // a variable for tests

// errUpstreamWait ends a request whose wait for an upstream connection
// was bounded; roundTrip answers it 503 (upstreamFailStatus).
var errUpstreamWait = errors.New("waiting for an upstream connection")

// errTooManyWaiting and errWaitedTooLong are the two bounds' errors.
var (
	errTooManyWaiting = fmt.Errorf("%w: %d of the session's requests wait for one of its %d upstream connections already (%d concurrent streams are advertised)",
		errUpstreamWait, maxWaitingStreams, maxUpstreamConns, h2MaxConcurrentStreams)
	errWaitedTooLong = &waitedTooLong{}
)

// waitedTooLong is errWaitedTooLong: a timeout, as records.DialResult
// reads it (result "timeout").
type waitedTooLong struct{}

func (*waitedTooLong) Error() string {
	return fmt.Sprintf("%v: none of the session's %d upstream connections came free within %v", errUpstreamWait, maxUpstreamConns, upstreamWaitTimeout)
}
func (*waitedTooLong) Unwrap() error   { return errUpstreamWait }
func (*waitedTooLong) Timeout() bool   { return true }
func (*waitedTooLong) Temporary() bool { return true }

// upstreamWait is a session's requests waiting for an upstream connection.
type upstreamWait struct {
	waiting atomic.Int32
	// lastGot is when a request of the session last got a connection
	// (UnixNano): the queue's progress.
	lastGot atomic.Int64
}

// startWait enters the request in w's count, refused past
// maxWaitingStreams, and arms its bound; w may be nil (no bound).
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
	d.waitTimer = time.AfterFunc(upstreamWaitTimeout, d.waitExpired)
	return nil
}

// waitExpired ends the request if no request of its session got a
// connection for upstreamWaitTimeout; else it looks again then.
func (d *headDeadline) waitExpired() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.wait == nil { // it got one, or ended
		return
	}
	if since := time.Since(time.Unix(0, d.wait.lastGot.Load())); since < upstreamWaitTimeout {
		d.waitTimer.Reset(upstreamWaitTimeout - since)
		return
	}
	d.cancel(errWaitedTooLong)
}

// endWait takes the request out of its session's count, once: got says
// it got a connection (progress for the others). Under mu.
func (d *headDeadline) endWait(got bool) {
	if d.wait == nil {
		return
	}
	if got {
		d.wait.lastGot.Store(time.Now().UnixNano())
	}
	d.wait.waiting.Add(-1)
	d.waitTimer.Stop()
	d.wait, d.waitTimer = nil, nil
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
