package intercept

import "net/http"

// A head goproxy's HTTP/1 loop could not read.
//
// goproxy's loop reads a head after each response that leaves the
// connection open, and ends the connection on one http.ReadRequest
// refuses (a malformed head, or one its client's FIN cut short) without a
// word: the session's end writes that head's deny record (goproxy.go,
// records.md). A head begun is marked by its deadline, armed by the read
// that brings its first byte after the previous request's head, or by
// awaitHead for bytes the bounds kept, or that goproxy's reader holds
// past a trailer net/http ended at a bare LF (h1bounds.go).
//
// Once the boundaries are given up (boundLoose), the bytes of a head may
// have reached goproxy's reader with the request before it (a body and
// the head pipelined behind it, in one read): no read brings a byte of
// it, and nothing marks it begun. The loop's end still tells it: after a
// response that went out and left the connection open, goproxy reads a
// head, and it ends the connection with no read of the client having
// failed (no FIN, no break, no deadline) only on a head it holds and
// cannot read (or one it read whose target makes no URL). So a head is
// also taken as unread there when the last response went out
// (nextHead.awaitHead: blind) and no read failed since (readFailed). A
// clean close, the client's FIN after its last response, is a read that
// failed: no record. A read that brings bytes is none, though its error
// came with them (bound keeps it for the next). What this cannot tell is a partial head held so and
// then cut short by the client's FIN from that clean close: goproxy's
// buffers are not in sight, and that one goes unrecorded.

// readEnded takes a read of the client that returned an error, with the
// n bytes it brought: its end, a break, a deadline.
func (c *hijackedConn) readEnded(n int) {
	c.upload.readEnded(n) // a tunnel's upload copy reads no more
	c.bounds.readFailed.Store(true)
}

// headUnread reports whether goproxy's HTTP/1 loop stopped on a head it
// could not read: one begun (its deadline armed: a first byte came after
// the last request's head), or one held unseen past lost boundaries
// (blindUnread), and neither read, nor run past its deadline, nor behind
// a response that closed the connection (goproxy never reads what
// follows that).
func (c *hijackedConn) headUnread() bool {
	if c.limit.isH2.Load() || c.limit.timedOut.Load() || c.lastClosed.Load() {
		return false
	}
	return c.limit.timed.Load() || c.blindUnread()
}

// blindUnread reports whether goproxy's loop ended, with the boundaries
// given up, on a head it held: after a response that went out, no request
// came, no read of the client failed, no write to it, and no body broke
// (bodyfault.go, whose connection ends after its answer).
func (c *hijackedConn) blindUnread() bool {
	h := &c.bounds
	return h.blind.Load() && !h.readFailed.Load() && c.werr.Load() == nil && c.bodyFault.Load() == nil
}

// awaitHead is the connection's awaitHead as goproxy closes b's response,
// which notes, past lost boundaries, that goproxy's loop reads a head
// next from what it may hold unseen: when the response went out.
func (b *nextHead) awaitHead() {
	c := b.cc
	c.awaitHead()
	c.bounds.blind.Store(c.bounds.state == boundLoose && b.wentOut())
}

// wentOut reports whether goproxy's write of the response b closes can
// have succeeded, so that its loop goes on: no write to the client failed,
// and its body was read to its end (or not at all: a HEAD's). A body
// whose read failed (its destination reset it) fails the write, and the
// loop ends there, whatever it holds.
func (b *nextHead) wentOut() bool {
	if b.cc.werr.Load() != nil {
		return false
	}
	rb, ok := b.ReadCloser.(*recordingBody)
	return !ok || rb.ended.Load() || b.resp.Request != nil && b.resp.Request.Method == http.MethodHead
}
