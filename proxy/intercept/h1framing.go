package intercept

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
)

// framingConn is an HTTP/1 upstream connection as http.Transport holds it
// (above TLS, if any): it keeps h1Transport's rule that a connection whose
// response had faulty framing (headScan.faulty: Transfer-Encoding with a
// Content-Length, or in HTTP/1.0) is not kept. net/http drops the
// Content-Length, reads the body as chunked, and pools the connection,
// while the origin (or what stands behind it) may have framed the body by
// its Content-Length: what follows would be taken for the next response.
//
// While a request's response head is read (arm, from httptrace's GotConn,
// to verdict, once the transport has returned the head) what is read is
// followed by a headScan. A faulty response's body is left to net/http to
// read (hold), and the transport is told the request ended (its context
// is cancelled): it closes what it knows as the connection, which, held,
// closes nothing, and never uses it again. The body's Close closes the
// connection (heldBody). Held, it still counts against maxUpstreamConns:
// its slot (connset.go) is released when the connection really closes.
type framingConn struct {
	net.Conn
	slot  *connSlot   // nil for none
	armed atomic.Bool // a head is read: scan follows it
	held  atomic.Bool // a faulty response's body owns the connection
	mu    sync.Mutex
	scan  headScan
	// readErr: while held, the latest read error; net/http reports the
	// request's cancellation in its place.
	readErr atomic.Pointer[error]
}

func (c *framingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 && c.armed.Load() {
		c.mu.Lock()
		if c.armed.Load() {
			c.scan.feed(b[:n])
		}
		c.mu.Unlock()
	}
	if err != nil && c.held.Load() {
		held := err // only this escapes: every other read allocates nothing
		c.readErr.Store(&held)
	}
	return n, err
}

// Close closes the connection, unless a faulty response's body holds it.
func (c *framingConn) Close() error {
	if c.held.Load() {
		return nil
	}
	return c.closeConn()
}

// closeConn closes the connection itself, and releases its slot.
func (c *framingConn) closeConn() error {
	err := c.Conn.Close()
	c.slot.release()
	return err
}

// NetConn returns the connection under c: unwrapConn's way through.
func (c *framingConn) NetConn() net.Conn { return c.Conn }

// arm starts following what is read, for the response to a request about
// to be written: net/http writes no request on a connection before the
// previous response's body has been read, so what comes next is its head.
func (c *framingConn) arm() {
	c.mu.Lock()
	c.scan = headScan{}
	c.armed.Store(true)
	c.mu.Unlock()
}

// verdict stops following what is read, and reports whether resp, after
// n1xx informational responses, had a faulty framing. A nil resp (the
// request failed) only stops.
func (c *framingConn) verdict(n1xx int, resp *http.Response) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.armed.Store(false)
	return resp != nil && c.scan.faulty(n1xx, resp)
}

// errFaultyFraming is the cause the transport is told a faulty response's
// request ended with: it then keeps the connection no longer.
var errFaultyFraming = errors.New("response framed with both Transfer-Encoding and Content-Length (or Transfer-Encoding in HTTP/1.0): its connection is not kept")

// endFaulty applies framingConn's rule to resp, the response the
// transport returned on fc after n1xx 1xx responses; cancel ends the
// request's context. A 101's connection is never kept anyway. A response
// net/http sees no body in (HEAD, Content-Length 0) was put back in the
// pool before the transport returned it: its connection is closed, and a
// request that took it up meanwhile fails on it, resent where net/http
// resends one that wrote nothing.
func endFaulty(fc *framingConn, n1xx int, req *http.Request, resp *http.Response, cancel func(error)) *http.Response {
	if !fc.verdict(n1xx, resp) || resp.StatusCode == http.StatusSwitchingProtocols {
		return resp
	}
	if req.Method == http.MethodHead || resp.ContentLength == 0 { // net/http's hasBody
		fc.Close()
		return resp
	}
	fc.held.Store(true)
	cancel(errFaultyFraming)
	// Cancelled, the request's context no longer tells net/http of the
	// client's: a client that gives up (an HTTP/2 stream reset) would
	// leave goproxy reading the body for as long as the origin holds it,
	// and the connection's slot held, so that the session's later
	// requests wait for one. The client's end closes the connection.
	stop := context.AfterFunc(req.Context(), func() { fc.closeConn() })
	resp.Body = &heldBody{ReadCloser: resp.Body, c: fc, stop: stop}
	return resp
}

// heldBody is the body of a faulty response: its connection is closed
// with it.
type heldBody struct {
	io.ReadCloser
	c    *framingConn
	stop func() bool // ends the watch on the client's request (endFaulty)
}

func (b *heldBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && errors.Is(err, errFaultyFraming) {
		// net/http reports the cancellation for any read that failed: the
		// connection's own error, if one did, says what.
		if e := b.c.readErr.Load(); e != nil {
			err = *e
		}
	}
	return n, err
}

func (b *heldBody) Close() error {
	err := b.ReadCloser.Close()
	b.stop()
	b.c.held.Store(false)
	b.c.closeConn()
	return err
}
