package intercept

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

// errResponseHeadTimeout ends a request whose response head did not
// come whole within responseHeadTimeout of its first byte.
var errResponseHeadTimeout = errors.New("response head not complete in time")

// errTooMany1xx ends a request whose origin sent more than max1xx
// informational responses.
var errTooMany1xx = errors.New("too many 1xx informational responses")

// headDeadline bounds, for http.Transport, the rest of a response head
// once its first byte has come, as h1Transport does (responseHeadTimeout):
// http.Transport's own ResponseHeaderTimeout would bound the wait for the
// first byte too, which a long poll may spend. The request's context is
// ended (cancel), which closes an HTTP/1 upstream connection, or resets an
// HTTP/2 stream. HTTP/2 reports the first byte only once the header list
// is whole (maxResponseHead bounds one still coming), so its head arms no
// timer (start).
//
// It also counts 1xx responses (got1xx): with a Got1xxResponse hook set,
// net/http leaves bounding them to the hook's owner (an HTTP/1 upstream's
// size limit starts over after each, an HTTP/2 upstream's total of them is
// not bounded), so without the count an origin could send them for ever.
// http.Transport reports no first byte of the head after a 1xx, so:
//   - over HTTP/1 the upstream connection's next read that returns bytes
//     (countedConn.onRead) arms the timer: the next head is timed from its
//     first byte, and the wait for it (an origin's thinking after a 103
//     Early Hints, or the upload after a 100 Continue) is not, as in
//     h1Transport. A start of the next head that came in the 1xx's own
//     read, at most the transport's read buffer, waits untimed for the
//     rest, as a head whose first byte has not come does;
//   - over HTTP/2 the next head is not timed: the transport takes a header
//     block whole, and a timer would time only the origin's thinking.
//
// Should the connection be none it knows (no countedConn under it), the
// next head gets responseHeadTimeout from the 1xx. (A 100 Continue is
// one such: the origin's answer to "Expect: 100-continue", expect.go.)
type headDeadline struct {
	cancel  context.CancelCauseFunc
	mu      sync.Mutex
	timer   *time.Timer
	n1xx    int
	done    bool         // the head has come: arm no timer
	h2      bool         // the request went over HTTP/2
	conn    *countedConn // the request's HTTP/1 connection, below TLS
	up      *countedConn // the request's connection, below TLS, if counted
	framing *framingConn // the same, as the transport holds it
	next    func()       // conn.onRead's, while set: start
	used    *usedConn    // where the request's connection is told, if anywhere: redial.go
	// dials: the connections that count for the request (newConnFor,
	// dialcredit.go).
	dials atomic.Int32
	// dialing: its dials let through and not yet made or failed, under
	// mu; dialDone, made by a dial waiting for one of them (dialStart),
	// is closed when one ends.
	dialing  int
	dialDone chan struct{}
	// reqDone is the request's context's Done: a dial waiting for a slot
	// (connset.go) is given up with the request (net/http dials under
	// its values, not its cancellation).
	reqDone <-chan struct{}
	// got is closed once the request has a connection: a dial of its
	// waiting for the first connection is not needed (h2first.go). Made
	// by the first such dial (gotChan), under mu: most requests have none.
	got       chan struct{}
	gotClosed bool // under mu
	// beforeFirstUp: the request came before a request had the session's
	// first connection, HTTP/2: net/http may yet hand it that one
	// (h2first.go).
	beforeFirstUp bool
	// asked counts net/http's asks for a connection for the request
	// (httptrace's GetConn), under mu: one more is a retry (h2first.go).
	asked int
	// The request's wait for an upstream connection (h2wait.go): the
	// session's upstreamWait, which times it while waitTimed (under mu);
	// its place in the session's list of timed waits, and when its bound
	// is next looked at (under wait.mu).
	wait               *upstreamWait
	waitTimed          bool
	waitListed         bool
	waitNext, waitPrev *headDeadline
	waitDue            time.Time
	// What the request's copy that http.Transport takes holds (set by
	// oneHostTransport.RoundTrip), here to be allocated with the rest:
	// its context, its trace and its URL.
	ctx   headDeadlineCtx
	trace httptrace.ClientTrace
	url   url.URL
}

// headDeadlineCtx is the context of a request's copy for http.Transport:
// the request's own, cancelled by its headDeadline, which it has as the
// value of headDeadlineKey (context.WithValue would allocate one more).
type headDeadlineCtx struct {
	context.Context
	d *headDeadline
}

// Value returns the headDeadline for headDeadlineKey, else the request
// context's value.
func (c *headDeadlineCtx) Value(key any) any {
	if _, ok := key.(headDeadlineKey); ok {
		return c.d
	}
	return c.Context.Value(key)
}

// gotChan returns the channel closed once the request has a connection
// (got), making it if no dial has yet.
func (d *headDeadline) gotChan() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.got == nil {
		d.got = make(chan struct{})
		if d.gotClosed {
			close(d.got)
		}
	}
	return d.got
}

// requestDone returns the Done of the request whose dial's context ctx
// is, if it is one of oneHostTransport's; else nil.
func requestDone(ctx context.Context) <-chan struct{} {
	if hd, ok := ctx.Value(headDeadlineKey{}).(*headDeadline); ok {
		return hd.reqDone
	}
	return nil
}

// gotConn takes the connection the request went on (httptrace).
func (d *headDeadline) gotConn(info httptrace.GotConnInfo) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.gotClosed { // a retry's connection: once
		if d.got != nil {
			close(d.got)
		}
		d.gotClosed = true
	}
	d.gotConnection()
	d.unwatch() // a retry's new connection
	d.used.set(info.Conn)
	d.up = countedUnder(info.Conn)
	d.up.takenBy(d) // dialcredit.go
	tc, ok := info.Conn.(*tls.Conn)
	d.h2 = ok && tc.ConnectionState().NegotiatedProtocol == "h2"
	if !d.h2 {
		d.conn = countedUnder(info.Conn)
	}
	if d.framing != nil { // a retry's: its head is not coming
		d.framing.verdict(0, nil)
	}
	if d.framing, _ = info.Conn.(*framingConn); d.framing != nil {
		d.framing.arm()
	}
}

func (d *headDeadline) start() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.up.answeredOn() // dialcredit.go
	// HTTP/2 reports the first byte once the header list is whole
	// (processHeaders, before the response is built): the head has come,
	// and stop follows with nothing read between, so a timer would time
	// nothing (and cost two allocations per request). A TODO in
	// net/http may move the report to the first frame; a test says so
	// (TestH2FirstResponseByteAfterWholeHeaderBlock), and then HTTP/2
	// must be timed here again.
	if !d.h2 {
		d.arm()
	}
}

// arm starts the timer, unless it runs or the head has come; under mu.
func (d *headDeadline) arm() {
	if !d.done && d.timer == nil {
		d.timer = time.AfterFunc(responseHeadTimeout, func() { d.cancel(errResponseHeadTimeout) })
	}
}

// unwatch stops waiting for the next head's first byte; under mu.
func (d *headDeadline) unwatch() {
	if d.conn != nil && d.next != nil {
		d.conn.onRead.CompareAndSwap(&d.next, nil)
	}
}

// got1xx takes a 1xx response: it fails the request after max1xx, and
// otherwise leaves the next head to be timed as the type's comment says.
func (d *headDeadline) got1xx(_ int, _ textproto.MIMEHeader) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.n1xx++; d.n1xx > max1xx {
		return errTooMany1xx
	}
	if d.done {
		return nil
	}
	if d.timer != nil { // the 1xx's: its head is whole
		d.timer.Stop()
		d.timer = nil
	}
	switch {
	case d.h2:
	case d.conn != nil:
		if d.next == nil {
			d.next = d.start
		}
		d.conn.onRead.Store(&d.next)
	default:
		d.arm()
	}
	return nil
}

// stop disarms the deadline: the head has come (or the request failed).
// It returns the HTTP/1 connection the head came on, if the transport
// holds it as a framingConn, and the 1xx responses before it.
func (d *headDeadline) stop() (*framingConn, int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.done = true
	d.endWait()
	d.unwatch()
	if d.timer != nil {
		d.timer.Stop()
	}
	return d.framing, d.n1xx
}
