package intercept

import (
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// abortReason is what Abort was told.
type abortReason struct {
	result string
	err    error
	// denied is the decision of a reload that ended the session (a
	// WebSocket tunnel's): the connection's record then names its rule
	// and policy, with action deny, as the tunnel's own record does.
	denied *policy.Decision
	// note, if set, is called by the Abort that ends the session, first.
	note func()
}

// ending marks a session that has begun to end on its own: an Abort after
// it does nothing, and reports so, since the records are being written
// already (a stall counted then would be one no record tells of).
var ending = &abortReason{}

// markEnding makes later Aborts do nothing, unless one came first.
func (s *Session) markEnding() { s.aborted.CompareAndSwap(nil, ending) }

// Abort ends the session at once, from outside (the proxy's write-stall
// bound, a client connection that broke) or for a WebSocket tunnel, or an
// HTTP/1 request under way, a reload ends (tunnelReload): the client and every connection to the destination get a RST,
// which ends what waits on them, and the connection's record, and that of
// each request under way, get result and err. Safe to call from any
// goroutine and more than once (the first call counts); it reports
// whether this call aborted it: not once the session has begun to end.
func (s *Session) Abort(result string, err error) bool {
	return s.abort(&abortReason{result: result, err: err})
}

// AbortUnlessIdle is Abort for a client that reset its connection when no
// request was under way (NoteClientBreak), after its FIN or not: a
// session between requests (goproxy serves it, no request is in flight,
// every stream the client opened has its answer, or was refused by the
// server) is left to end on its
// own, as it does once goproxy reads the FIN or the reset, and its records
// say what they would have said. The client loses nothing, and it resets
// as a matter of course when the appliance's answer to its close (a
// GOAWAY, a close_notify), or frames it never read, reach a socket it has
// closed. A request that starts after the call
// has no client to answer: RoundTrip aborts the session then, for err.
// It reports whether this call aborted the session.
func (s *Session) AbortUnlessIdle(result string, err error) bool {
	rt := s.serving.Load()
	if rt == nil {
		return s.Abort(result, err)
	}
	a := &abortReason{result: result, err: err}
	// Stored before busy loads, as RoundTrip counts a request in flight
	// before it loads lateBreak (sequentially consistent atomics): one of
	// the two sees the other.
	s.lateBreak.Store(a)
	if rt.busy() {
		return s.abort(a)
	}
	return false
}

// abortIfBroken aborts the session if AbortUnlessIdle has left it be:
// RoundTrip's call, once it counts its request in flight.
func (s *Session) abortIfBroken() {
	if a := s.lateBreak.Load(); a != nil {
		s.abort(a)
	}
}

// AbortNoting is Abort that calls note, when this call aborts the
// session, before anything is reset: a counter bumped there is counted
// before any record of the abort can be written.
func (s *Session) AbortNoting(result string, err error, note func()) bool {
	return s.abort(&abortReason{result: result, err: err, note: note})
}

// abort is Abort with all it may be told.
func (s *Session) abort(a *abortReason) bool {
	if !s.aborted.CompareAndSwap(nil, a) {
		return false
	}
	if a.note != nil {
		a.note()
	}
	Abort(s.Client) // set before Serve, never after
	// dialBumped sets Upstream on the serving goroutine while this may
	// run on another: under upMu, and dialBumped, seeing aborted set
	// there, resets what it dialled itself.
	s.upMu.Lock()
	up := s.Upstream
	if s.abortedCh == nil {
		s.abortedCh = make(chan struct{})
	}
	close(s.abortedCh)
	s.upMu.Unlock()
	if cc := s.upCounted.Load(); cc != nil && cc.Conn == up {
		cc.Abort()
	} else if up != nil {
		Abort(up)
	}
	s.upstreams.abortAll()
	return true
}

// abortedSignal is closed once Abort has ended the session: a wait on
// the client (a tunnel's drain) that Abort's resets cannot end, nothing
// reading what they broke, ends on it.
func (s *Session) abortedSignal() <-chan struct{} {
	s.upMu.Lock()
	defer s.upMu.Unlock()
	if s.abortedCh == nil {
		s.abortedCh = make(chan struct{})
	}
	return s.abortedCh
}

// abortedFromOutside reports whether Abort has ended the session.
func (s *Session) abortedFromOutside() bool {
	a := s.aborted.Load()
	return a != nil && a != ending
}

// noteAbort puts what Abort was told into rec, unless rec is a refusal.
func (s *Session) noteAbort(rec *records.Record) {
	a := s.aborted.Load()
	if a == nil || a == ending || rec.Result == "denied" {
		return
	}
	rec.Result = a.result
	if d := a.denied; d != nil {
		rec.Rule, rec.Action, rec.Policy = d.Rule, policy.Deny.String(), d.Policy
	}
	switch why := a.err.Error(); {
	case rec.Error == "":
		rec.Error = why
	case !strings.Contains(rec.Error, why):
		// Not told twice: a request that saw the reclaim's reset first
		// named it already (clientGone).
		rec.Error += "; " + why
	}
}

// reclaimable is a client connection the packet stack may reset to reclaim
// memory (netstack.Conn, and the proxy's wrappers that pass the question
// on): Reclaimed is the error saying so once it has, nil before.
type reclaimable interface{ Reclaimed() error }

// noteReclaimed makes the records of a session whose client the packet
// stack reset to reclaim memory say so (result reset, the reclaim's error),
// unless an Abort came first. Such a session often ends on its own before
// the client watch's Abort: goproxy, waiting for the next request, takes
// the read error for the client leaving, and the record said ok. It runs
// once the session has begun to end (after markEnding), so no Abort
// replaces it; an error that already names the reclaim (a failed handshake
// noted its Abort itself) is not told twice.
func (s *Session) noteReclaimed() {
	r, ok := s.Client.(reclaimable)
	if !ok {
		return
	}
	err := r.Reclaimed()
	if err == nil {
		return
	}
	// A swap from what was loaded: an Abort between the two keeps its
	// reason, as one before does.
	if a := s.aborted.Load(); (a == nil || a == ending) && !strings.Contains(s.Record.Error, err.Error()) {
		s.aborted.CompareAndSwap(a, &abortReason{result: "reset", err: err})
	}
}

// handshakeReset reports whether a client handshake that failed with err
// was ended by its client's reset, without an alert: err is the reset
// itself, or the connection ended under it (the end of the stream: the
// RST discards what the client sent last; the conn closed by the Abort)
// while the session was aborted, a, for a reset. A client that refused
// the handshake (an alert, a message the server could not take) failed
// it otherwise.
func handshakeReset(err error, a *abortReason) bool {
	if errors.Is(err, syscall.ECONNRESET) ||
		// The stack's conn says it in the stack's words, not as an errno.
		strings.HasSuffix(err.Error(), "connection reset by peer") {
		return true
	}
	return a != nil && a != ending && a.result == "reset" &&
		(errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed))
}

// Abort closes c with a RST: a connection with an Abort method (the
// stack's, and wrappers that pass it on) through it, a host socket by
// closing with a zero linger.
func Abort(c net.Conn) {
	switch c := c.(type) {
	case interface{ Abort() }:
		c.Abort()
		return
	case *net.TCPConn:
		_ = c.SetLinger(0)
	}
	c.Close()
}

// TLS alerts sent to clients whose connection is refused.
const (
	AlertHandshakeFailure = 40
	AlertBadCertificate   = 42
	AlertAccessDenied     = 49
	AlertInternalError    = 80
)

// WriteAlert sends a fatal TLS alert record; it is what a client that has
// sent its ClientHello understands as a refusal.
func WriteAlert(c net.Conn, desc byte) {
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = c.Write([]byte{21, 3, 3, 0, 2, 2, desc})
}
