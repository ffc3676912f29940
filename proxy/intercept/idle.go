package intercept

import (
	"bytes"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
)

// The idle bound of an intercepted client connection.
//
// Between requests a client may keep its connection open and send
// nothing; it answers the appliance's keepalives, so its flow never
// expires, and the connection holds its goroutine, TLS and read buffers,
// and the session's kept upstream connection, for good. Every proxy
// bounds that wait: Squid's client_idle_pconn_timeout (2 minutes),
// nginx's keepalive_timeout (75 s), net/http's IdleTimeout. A connection
// with no request in flight and no byte of a new one for
// clientIdleTimeout is closed by the appliance: an HTTP/1 client's, as
// any server closes a kept connection between responses; an HTTP/2
// client's after a GOAWAY (no error, naming the last stream it opened),
// as net/http's HTTP/2 server does. A request under way (a long poll, a
// download, a WebSocket tunnel, an HTTP/2 stream still open) is not
// idleness, however long it lasts.
//
// An HTTP/1 connection's wait is its read deadline, set by goproxy's
// loop when a response ends (and when serving starts): the goroutine
// that reads the next head, so nothing else moves the deadline. The first
// byte of a head replaces it with the head's own (requestHeadTimeout). An
// HTTP/2 connection's server reads frames (PINGs, WINDOW_UPDATEs) that are
// no request, and its streams end on their handlers' goroutines: its wait
// is a timer the session arms when its last request is done.

// clientIdleTimeout bounds the wait for a client's next request: Squid's
// 2 minutes, under the appliance's first keepalive to the client (at half
// --tcp-idle-timeout, 175 s by default), so an abandoned connection ends
// before it costs a probe.
var clientIdleTimeout = newDuration(2 * time.Minute) // set by tests while sessions read it

// clientIdle is the idle bound's state, in headLimit.
type clientIdle struct {
	// armed: the HTTP/1 connection's read deadline is the idle one; set
	// and cleared by goproxy's loop only.
	armed atomic.Bool
	// out: the appliance closed the connection idle.
	out atomic.Bool
	// last is the highest stream an HTTP/2 header block opened, published
	// with headLimit.streams: what the idle close's GOAWAY names.
	last atomic.Uint32
}

// idleDeadline arms the idle deadline on c, the client connection: an
// HTTP/1 connection waits for its next request's first byte.
func (l *headLimit) idleDeadline(c net.Conn) {
	l.timed.Store(false)
	l.conn = c
	l.idle.armed.Store(true)
	_ = c.SetReadDeadline(time.Now().Add(clientIdleTimeout.Load()))
}

// idleNote is what a connection's record says of an idle close.
func idleNote() string {
	return fmt.Sprintf("closed by the appliance: no request for %v", clientIdleTimeout.Load())
}

// armIdle starts the idle timer of an HTTP/2 session (also one whose
// client, having negotiated h2, speaks HTTP/1: goproxy's h2 proxy serves
// it).
func (rt *roundTripper) armIdle() {
	rt.idle = time.AfterFunc(clientIdleTimeout.Load(), rt.idleFired)
}

// idleFired closes the HTTP/2 connection if it is idle still: no request
// in flight, none whose stream was opened and whose handler has yet to
// start (given h2HandlerGrace, once: a stream the server refused never
// starts one), no frame or header block unfinished (the head deadline
// ends those). A request that came since stopped the timer, and its end
// arms it again (requestDone).
func (rt *roundTripper) idleFired() {
	l := &rt.cc.limit
	switch {
	case rt.closed.Load() || rt.inflight.Load() > 0:
		return
	case l.timed.Load():
		rt.idle.Reset(requestHeadTimeout)
	case rt.requests.Load() < l.streams.Load() && !rt.idleGrace.Swap(true):
		rt.idle.Reset(h2HandlerGrace)
	case !rt.cc.closeIdle():
		rt.idle.Reset(10 * time.Millisecond) // the server is writing a frame
	}
}

// closeIdle closes the client connection, idle: an HTTP/2 client gets a
// GOAWAY first, between two of the server's frames, after which nothing
// more is written. It returns false, having done nothing, while the
// server is mid-frame. goproxy then sees its reads fail, and closes the
// connection its own way (Close), which ends the session.
func (c *hijackedConn) closeIdle() bool {
	h := &c.hold
	_ = c.Conn.SetWriteDeadline(time.Now().Add(5 * time.Second)) // as Close
	h.mu.Lock()
	f := &c.frames
	if c.limit.isH2.Load() && f.started && !f.sealed {
		if !f.atBoundary() || f.final != nil {
			h.mu.Unlock()
			return false
		}
		var buf bytes.Buffer
		// Capped by a GOAWAY already out (x/net's graceful one, which a
		// client draws with its own): a second never names a higher last
		// stream (RFC 9113 §6.8; review rev33g F3).
		last := c.limit.unanswered.capLast(c.limit.idle.last.Load())
		_ = http2.NewFramer(&buf, nil).WriteGoAway(last, http2.ErrCodeNo, nil)
		_, _ = c.rawWrite(buf.Bytes())
		f.sealed = true
	}
	c.flushLocked()
	h.mu.Unlock()
	c.limit.idle.out.Store(true)
	_ = c.Conn.Close()
	return true
}
