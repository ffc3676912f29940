package intercept

import (
	"time"
)

// Where the HTTP/1 request in flight stands for a client's break of its
// connection (NoteClientBreak). An HTTP/1 request counts in flight until
// its record is written, once goproxy's loop has closed the response's
// body: after its last byte was written into the client connection's send
// buffer, when the request is over (docs/records.md). A client that had
// its whole response and reset at once reset between requests, and its
// request's record said ok; counted under way, the connection's said
// reset. So the request is over for a break once its response's last
// byte is written (answerOut), and the first of the two decides for both
// records. A break that comes once the response's last bytes were read
// from its body, before their write is seen to be out, is settled by that
// write (answerUndecided): the stack took them into the send buffer before
// the client's reset, or the write fails on it (answerCut). A request the
// break found under way is recorded as the break says, whatever its last
// write did.
const (
	answerPending   int32 = iota // under way
	answerOut                    // the response's last byte is written: over
	answerCut                    // the client's break came first
	answerUndecided              // the break came as the last bytes were going out
	// answerTunnel: the response is a WebSocket tunnel's 101. A tunnel
	// is under way until the client's break, unless that came after
	// the client's FIN: the client had ended its side, what it sent is
	// all there to relay, and the destination's bytes written to it
	// before the reset are counted as any others (bytes_in); what the
	// destination sends after cannot reach it, whatever is recorded.
	answerTunnel
)

// breakAbortWait bounds how long a request the client's break cut waits
// for the client watch's Abort, already on its way (clientWatch.check
// starts it as it takes the break), before its record is written, so that
// the record says what the connection's does (noteAbort); and how long
// that watch waits for an undecided break to be settled.
const breakAbortWait = time.Second

// startAnswer makes the HTTP/1 request goproxy's loop is starting under
// way: RoundTrip's first act, before it counts the request in flight.
func (c *hijackedConn) startAnswer() {
	c.lastPiece.Store(false)
	c.lastWritten.Store(false)
	c.settled.Store(nil)
	c.answer.Store(answerPending)
}

// lastPieceRead says that the response body's last bytes have been read
// (a body of known length, as the recording body reads them; a whole one
// as goproxy closes it, nextHead.Close): goproxy's next write, if any,
// ends the response (wroteLast).
func (c *hijackedConn) lastPieceRead() { c.lastPiece.Store(true) }

// wroteLast says that a write of goproxy's that began once the last
// piece was read has returned: nothing of the response is left to write
// but what is held. goproxy's goroutine only: a flush of held bytes on
// another goroutine must not take the last piece for written before it
// was handed over.
func (c *hijackedConn) wroteLast() {
	c.lastWritten.Store(true)
	c.noteAnswered()
}

// responseWritten says that goproxy is done with a whole response
// (nextHead.Close, after endChunked wrote a chunked one's end): the
// request is over once nothing of it is held. It takes no lock: goproxy
// has the request's body to drain next (rb.done), and a flush that holds
// the lock may wait on a client that reads its answer only once it has
// sent that body.
func (c *hijackedConn) responseWritten() {
	c.lastPiece.Store(true)
	c.wroteLast()
}

// noteAnswered makes the request over once its response's last piece was
// written and nothing of it is held, no write having failed; or settles
// an undecided break by the write that failed. Every write to the client
// calls it once it returns, and so do responseWritten and the record's
// writing. A flush of held bytes on another goroutine clears holding
// after its write and loads lastWritten after that, and wroteLast stores
// lastWritten before it loads holding (sequentially consistent atomics):
// one of the two sees the other.
func (c *hijackedConn) noteAnswered() {
	switch {
	case c.werr.Load() != nil:
		c.settle(answerCut)
	case c.lastWritten.Load() && !c.hold.holding.Load():
		if !c.answer.CompareAndSwap(answerPending, answerOut) {
			c.settle(answerOut)
		}
	}
}

// settle ends an undecided break's wait: to is what the write said.
func (c *hijackedConn) settle(to int32) {
	if c.answer.CompareAndSwap(answerUndecided, to) {
		close(*c.settled.Load()) // stored before the break made it undecided
	}
}

// cutAtBreak is NoteClientBreak's: whether an HTTP/1 request in flight
// is under way as the client's break is seen. One whose response is out
// is not, nor a tunnel whose client's break came after its FIN (afterFIN);
// one whose last bytes are going out is, until their write settles it
// (awaitSettled); any other is cut, and stays so. It only
// loads and swaps atomics (and makes a channel, once a break).
func (c *hijackedConn) cutAtBreak(afterFIN bool) bool {
	if c.answer.Load() == answerTunnel && afterFIN {
		return false
	}
	if c.answer.CompareAndSwap(answerTunnel, answerCut) {
		return true
	}
	if c.lastPiece.Load() && c.werr.Load() == nil {
		ch := make(chan struct{})
		c.settled.Store(&ch)
		if c.answer.CompareAndSwap(answerPending, answerUndecided) {
			return true
		}
	} else if c.answer.CompareAndSwap(answerPending, answerCut) {
		return true
	}
	a := c.answer.Load()
	return a == answerCut || a == answerUndecided
}

// awaitSettled waits, for breakAbortWait at most, for the write that
// settles an undecided break. One still undecided then stays under way:
// that write has not returned in all that time, and the client is gone.
func (c *hijackedConn) awaitSettled() {
	if p := c.settled.Load(); p != nil && c.answer.Load() == answerUndecided {
		t := time.NewTimer(breakAbortWait)
		select {
		case <-*p:
		case <-t.C:
		}
		t.Stop()
	}
}

// awaitBreakAbort waits, for breakAbortWait at most, for the Abort of the
// session whose client's break cut the request in flight (answerCut), so
// that its record, written next, says what the connection's does. Called
// once every write of the response was made: an undecided break is
// settled first.
func (rt *roundTripper) awaitBreakAbort() {
	rt.cc.noteAnswered()
	if rt.cc.answer.Load() != answerCut {
		return
	}
	t := time.NewTimer(breakAbortWait)
	defer t.Stop()
	select {
	case <-rt.s.abortedSignal():
	case <-t.C:
	}
}

// ClientBreakUnderWay is NoteClientBreak's answer, settled: a break that
// came as an HTTP/1 response's last bytes were going out is between
// requests once they went out (answerUndecided), and the session's
// records say so. The client watch asks it before it aborts the session,
// off the packet path: it may wait for that write, breakAbortWait at
// most.
func (s *Session) ClientBreakUnderWay() bool {
	s.settleBreak(true)
	return s.broke.Load() == breakUnderWay
}

// settleBreak makes a break NoteClientBreak took for one under way a
// break between requests when the HTTP/1 request it came in the middle of
// had its response out after all, and nothing else was under way; wait
// says whether to wait for the write that settles it.
func (s *Session) settleBreak(wait bool) {
	rt := s.serving.Load()
	if rt == nil || s.broke.Load() != breakUnderWay || rt.cc.limit.isH2.Load() {
		return
	}
	if wait {
		rt.cc.awaitSettled()
	}
	if rt.cc.answer.Load() == answerOut && !s.requestUnderWay() {
		s.broke.CompareAndSwap(breakUnderWay, breakBetweenRequests)
	}
}
