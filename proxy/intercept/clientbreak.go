package intercept

import (
	"errors"
	"fmt"
	"syscall"
	"time"
)

// What Session.broke says: whether a request was under way when the
// client's connection was first seen broken.
const (
	breakBetweenRequests int32 = 1
	breakUnderWay        int32 = 2
)

// NoteClientBreak takes whether a request is under way now, as the
// client's connection is seen broken, and reports it; the first call's
// answer stands, but for a later one that finds a request under way (see
// below). A client that resets while a request is under way
// (an HTTP/1 request, its head begun, or any HTTP/2 stream; or the TLS
// handshake, the first bytes) loses it, and the records say reset; one
// that resets between requests, as real clients close (curl --http2 with
// the appliance's last frames unread sends a RST and no FIN), loses
// nothing, and they say what they would have said. It must be called as
// the break is seen (the client watch calls it from the packet stack's
// callback, and from the Read that takes the reset, before that returns):
// the HTTP/2 server, reading the same reset, ends the streams and makes
// the session look idle soon after. The stack's callback comes as the
// reset arrives, while bytes the client sent right before it may still
// wait in the receive buffer, unread: an HTTP/1 head begun, an HTTP/2
// HEADERS frame. The reader takes them before it takes the reset (the
// Read that ends on the reset calls this again, netstack.Conn.Read, once
// they made the request under way): a later
// call that finds a request under way makes it so. Nothing the appliance
// does after the break starts a request: only the client's bytes, sent
// before its reset, do. afterFIN says the break came after the client's
// FIN (netstack.Conn.BrokenAfterFIN): a WebSocket tunnel is no longer
// under way then, the client having ended its side (answer.go). A tunnel
// that waits for the destination to end its side (upgradedBody.Close)
// ends on the break (clientBreakSignal): a break before the FIN at once,
// one after it once the client watch knows it for one (ClientBroken): a
// clean close completing (the client's FIN, then its ACK of the
// appliance's) looks alike until then, and a tunnel's wait for its
// upload ended on it, its record saying the client broke its connection.
// It only loads and swaps atomics, and closes that channel.
func (s *Session) NoteClientBreak(afterFIN bool) bool {
	if afterFIN {
		s.finBreak.Store(true) // before requestUnderWay loads it
	} else {
		defer s.ClientBroken()
	}
	if s.requestUnderWay() {
		s.broke.Store(breakUnderWay)
		return true
	}
	s.broke.CompareAndSwap(0, breakBetweenRequests)
	return s.broke.Load() == breakUnderWay
}

// clientBreakSignal returns a channel the client's break closes, once
// NoteClientBreak has taken it: a tunnel's drain ends on it. One tunnel
// a session asks for it (an HTTP/1 one, goproxy's last request).
func (s *Session) clientBreakSignal() <-chan struct{} {
	ch := make(chan struct{})
	s.breakCh.Store(&ch)
	// ClientBroken stores brokenSeen before it loads breakCh, and this
	// the other way round (sequentially consistent atomics): one of the
	// two sees the other.
	if s.brokenSeen.Load() {
		s.signalBreak()
	}
	return ch
}

// ClientBroken says the client broke its connection (a reset or a
// vanishing, not a clean close), and ends a tunnel's waits on it
// (clientBreakSignal). The client watch calls it once it has what broke
// the connection, for a break after the client's FIN (NoteClientBreak
// does for one before it).
func (s *Session) ClientBroken() {
	s.brokenSeen.Store(true)
	s.signalBreak()
}

// signalBreak closes the channel of clientBreakSignal, if there is one,
// once.
func (s *Session) signalBreak() {
	if p := s.breakCh.Load(); p != nil && s.breakClosed.CompareAndSwap(false, true) {
		close(*p)
	}
}

// requestUnderWay reports whether a request is under way: one in flight
// (an HTTP/1 one until its response's last byte is written: answer.go),
// a stream the client opened with no answer yet, from its HEADERS frame
// on, its header block whole or not (h2guard.go's unanswered; not one the
// server refused: it never reaches RoundTrip), an HTTP/1 head begun
// (its deadline armed), or the session not serving requests yet (the
// first bytes, the destination check, the handshake). A client that
// completed its handshake and sent no byte of a request, while goproxy
// waits for its first one, has none under way: it loses nothing.
func (s *Session) requestUnderWay() bool {
	rt := s.serving.Load()
	if rt == nil {
		return true
	}
	return rt.busyAtBreak() || !rt.cc.limit.isH2.Load() && rt.cc.limit.timed.Load()
}

// clientBroker is a client connection that says what broke it when its
// client did, as a read took it (netstack.Conn.ClientBroke, and the
// proxy's wrappers).
type clientBroker interface{ ClientBroke() error }

// noteClientBreak makes the records of a session whose client broke its
// connection say so, as the client watch's Abort does (result reset, or
// timeout for a client that vanished; "the client's connection broke:
// ..."), when the session ended on the read that took the break before
// that Abort came: the HTTP/2 server ends its streams, and the session,
// as soon as its read fails. A reset between requests (NoteClientBreak)
// is left as it is: the client lost nothing. It runs once the session has
// begun to end, after noteReclaimed: an Abort, or the reclaim's reset,
// keeps its reason, and so does a record the session's own end has
// already given another result (a failed handshake's: handshakeReset).
func (s *Session) noteClientBreak() {
	if s.Record.Result != "ok" {
		return
	}
	why := s.clientBroke()
	if why == nil {
		return
	}
	// A vanished client (timeout) is said whenever it went, as the watch
	// says it; a reset only when a request was under way (settled by
	// now: the last request's record is written, answer.go).
	s.settleBreak(false)
	result := clientBreakResult(why)
	if result == "reset" && s.broke.Load() != breakUnderWay {
		return
	}
	if a := s.aborted.Load(); a == nil || a == ending {
		s.aborted.CompareAndSwap(a, &abortReason{result: result, err: fmt.Errorf("the client's connection broke: %w", why)})
	}
}

// noteShutdownEnd makes the records of a session whose client connection
// the stacks' close broke (the drain's end) say the shutdown ended it, as
// the client watch's Abort says: goproxy's read often takes that reset
// first, the session ends on its own, the Abort comes too late, and the
// same end was recorded ok or reset by which came first (3 of 10 idle
// sessions ok). Unless an Abort came first; not for a client's break
// after its FIN, which ended its side cleanly.
func (s *session) noteShutdownEnd() {
	if !s.brokenSeen.Load() || s.finBreak.Load() || s.ic.cfg.ShuttingDown == nil || !s.ic.cfg.ShuttingDown() {
		return
	}
	if a := s.aborted.Load(); a == nil || a == ending {
		s.aborted.CompareAndSwap(a, &abortReason{result: "reset", err: fmt.Errorf("%w: the client's connection: operation aborted", errShutdownLingering)})
	}
}

// clientBroke is what broke the session's client connection when its
// client did, as a read or a write took it (netstack.Conn.ClientBroke);
// nil otherwise, and for a connection that cannot say.
func (s *Session) clientBroke() error {
	if b, ok := s.Client.(clientBroker); ok {
		return b.ClientBroke()
	}
	return nil
}

// clientBreakResult is a record's result for why, the client's break of
// its connection: timeout for a client that vanished (its keepalives or
// retransmissions unanswered), reset otherwise, as the client watch says
// it.
func clientBreakResult(why error) string {
	if errors.Is(why, syscall.ETIMEDOUT) {
		return "timeout"
	}
	return "reset"
}

// ClientBreakTaken says that the client watch has taken what broke the
// client's connection from it (netstack.Conn.BrokenError, which keeps a
// reset or a vanishing for ClientBroke), whatever it makes of it: a
// tunnel's record waits for it (awaitBreakTaken). Safe to call more than
// once.
func (s *Session) ClientBreakTaken() {
	s.upMu.Lock()
	defer s.upMu.Unlock()
	if s.breakTakenCh == nil {
		s.breakTakenCh = make(chan struct{})
	}
	if !s.breakTaken {
		s.breakTaken = true
		close(s.breakTakenCh)
	}
}

// awaitBreakTaken waits, for breakAbortWait at most, for the client
// watch to take the break of a client whose WebSocket tunnel ended on it
// after the client's FIN (finBreak), and returns what broke the client's
// connection then. NoteClientBreak ends the tunnel's wait for the
// destination (clientBreakSignal) on the packet path, before any read
// has taken, and kept, what the break was: the tunnel's record said ok
// for a client that vanished after its FIN while the connection's said
// timeout. A break before the FIN is settled by the watch's Abort
// (awaitBreakAbort).
func (s *Session) awaitBreakTaken() error {
	if why := s.clientBroke(); why != nil || s.broke.Load() == 0 || !s.finBreak.Load() {
		return why
	}
	s.upMu.Lock()
	if s.breakTakenCh == nil {
		s.breakTakenCh = make(chan struct{})
	}
	ch := s.breakTakenCh
	s.upMu.Unlock()
	t := time.NewTimer(breakAbortWait)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
	}
	return s.clientBroke()
}
