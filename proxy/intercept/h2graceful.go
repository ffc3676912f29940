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

// x/net processes no frame of the client's after that error: a client's
// RST_STREAM after it in the same write was never processed, the stream
// ending with the close a second later, yet it was recorded as the
// client's going away, and the tls record said ok (review rev31b F2).
// With no GOAWAY for the error to weigh it against (serverGoAway), the
// reader foresees the connection errors it can tell as it reads them
// (connError), and the notes take no reset after one (deaf), as after a
// GOAWAY for an error. One it cannot tell (a SETTINGS value out of range,
// the connection's window overflowed, a frame x/net finds malformed
// otherwise) is not foreseen: a client's reset after it is still the
// client's. The notes are deaf after such an error with no graceful
// GOAWAY out too: the server's GOAWAY for it would weigh a reset after
// it away, but the appliance's refusal of a frame after both does not
// (connError).

// h2TypePing is PING's frame type; h2FlagAck the ACK flag of SETTINGS.
const (
	h2TypePing = 0x6
	h2FlagAck  = 0x1
)

// connError takes the end of the frame just read: if x/net's server takes
// it for a connection error (RFC 9113 §6; a connection WINDOW_UPDATE of
// 0, a WINDOW_UPDATE or RST_STREAM not 4 bytes long, an RST_STREAM on
// the connection, a SETTINGS or PING on a stream or of a wrong length),
// the notes are told (h2StreamNotes.connError).
func (l *h2HeaderLimit) connError() {
	if l.unanswered == nil {
		return
	}
	bad := false
	switch l.typ {
	case h2TypeWindowUpdate:
		bad = l.length != 4 || l.stream == 0 && l.word&(1<<31-1) == 0
	case h2TypeRSTStream:
		bad = l.length != 4 || l.stream == 0
	case h2TypeSettings:
		bad = l.stream != 0 || l.flags&h2FlagAck != 0 && l.length != 0 || l.length%6 != 0
	case h2TypePing:
		bad = l.stream != 0 || l.length != 8
	}
	if bad {
		l.unanswered.ends.connError()
	}
}

// connError notes a connection error of the client's, read: x/net
// processes no frame after it, graceful GOAWAY out or not, so no reset of
// the client's, nor any it foresaw, read after it ended a stream. Once a
// GOAWAY for an error is out, nothing is taken anyway. Only after a
// graceful GOAWAY did it used to be: without one, the server's GOAWAY for
// the error weighs such a reset away (clientBeforeGoAwayLocked), but the
// appliance's refusal of a frame after it, in the same write, weighs
// nothing (h2refused.go), and the reset stayed the client's (review
// rev33a F1).
func (n *h2StreamNotes) connError() {
	n.mu.Lock()
	if !n.goneAway {
		n.deaf = true
	}
	n.mu.Unlock()
}

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
