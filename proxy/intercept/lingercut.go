package intercept

import "errors"

// A client past its share of lingering connections (the proxy counts
// them) whose connection broke after its FIN has its tunnel's linger cut
// short: but, as a relayed flow's, only after one look at the upstream
// socket. A destination that had acknowledged the whole upload already
// has it delivered (the common polite WebSocket close: a close frame, the
// FIN, and the kernel's reset of the echoed close frame), where the
// session's abort at the break recorded a cut upload and reset the
// destination that had everything.

// lingerCutReason is why a tunnel's linger is cut short after its one
// look (Session.CutLinger), and what counts the cut when there is one.
type lingerCutReason struct {
	err     error
	counted func()
}

// CutLinger cuts short the linger of the session's WebSocket tunnel, whose
// client broke after its FIN, for err (the client's share of lingering
// connections held): the tunnel's end looks once at its upstream, closes
// it if the destination has acknowledged all the client sent, and resets
// it else, the records saying the tail was not delivered, counted called
// then. A session with no such tunnel, or whose tunnel's copy of the
// upload is still under way (a write to a destination that takes
// nothing may hold it until the write-stall timeout), is aborted at once
// instead, for result and abortErr, counted called: the tail is cut. It
// reports whether it aborted the session.
func (s *Session) CutLinger(err error, result string, abortErr error, counted func()) bool {
	rt := s.serving.Load()
	if rt == nil || rt.cc == nil || rt.cc.answer.Load() != answerTunnel || !rt.cc.upload.overNow() {
		return s.AbortNoting(result, abortErr, counted)
	}
	s.lingerCut.Store(&lingerCutReason{err: err, counted: counted})
	return false
}

// lingerCutErr is the session's CutLinger reason, nil if none.
func (s *Session) lingerCutErr() *lingerCutReason { return s.lingerCut.Load() }

// lingerCutBy is the tunnel's CutLinger reason if lerr, its linger's
// error, is that cut's.
func (u *upgradedBody) lingerCutBy(lerr error) *lingerCutReason {
	if u.lingerCut == nil || lerr == nil {
		return nil
	}
	if r := u.lingerCut(); r != nil && errors.Is(lerr, r.err) {
		return r
	}
	return nil
}

// overNow reports whether the copy is over already.
func (c *uploadCopy) overNow() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.isOver
}
