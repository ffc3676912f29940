package intercept

// A connection error after the server's graceful GOAWAY.
//
// x/net's server answers a client's GOAWAY (or its own idle timer) with a
// GOAWAY of NO_ERROR: the streams under way go on. A connection error of
// the client's after it (a connection WINDOW_UPDATE of 0, say) has x/net
// raise that GOAWAY's code without sending a second one (goAway: a GOAWAY
// is out already), process no more frames, write no more, and close the
// connection a second later (its shutdown timer), the streams still open
// with it. The writer sees no GOAWAY for a connection error (serverGoAway
// notes none), and the requests under way were recorded as the client's
// going away, the tls record ok (review rev30b, "not probed"): of a client
// that had closed nothing and waited for its answers.
//
// What the appliance sees is the close: after a graceful GOAWAY, x/net
// closes the connection on its own, the client's side whole (no read of
// the client's ended or was refused, no write to it failed), only once no
// stream is open (its graceful end: no request under way is cut), or for
// an error of the client's (that raised code; or its control frames piled
// up unread, x/net's other close of its own). A request under way whose
// stream that close ended is recorded so, `error`, and the connection's
// tls record with it; x/net says nowhere which error, so the record says
// none. A connection closed so with no request under way cannot be told
// from the graceful end: its tls record stays as it was.

// errClosedAfterGraceful says the server's own close of the connection
// after its graceful GOAWAY, for the records.
const errClosedAfterGraceful = "the appliance's HTTP/2 server closed the connection for an error of the client's after its graceful GOAWAY (NO_ERROR)"

// closedByServer reports, as c closes, whether it is the HTTP/2 server's
// own close, the client's side whole: no read of the client's ended in an
// error (its close or reset, the appliance's deadline or abort) or was
// refused by the appliance's guards, and no write to it failed (x/net
// closes the connection on a failed write). Each of those is noted
// before the read or write returns, so before x/net can close for it.
func (c *hijackedConn) closedByServer() bool {
	return !c.bounds.readFailed.Load() && c.werr.Load() == nil &&
		c.limit.unanswered.writerRefused.Load() == 0 && c.limit.refused.Load() == nil && !c.limit.tooLarge.Load()
}

// cutByServer reports whether the connection was closed by the server on
// its own after its graceful GOAWAY, and notes that a request under way,
// whose stream had no other end, was ended so (cutRequest).
func (n *h2StreamNotes) cutByServer() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.byServer {
		n.cut = true
	}
	return n.byServer
}

// cutRequest reports whether a request under way was ended by the
// server's own close after its graceful GOAWAY (cutByServer).
func (n *h2StreamNotes) cutRequest() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cut
}
