package proxy

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
	"github.com/gwlbproxy/gwlbproxy/proxy/sniff"
)

// nameWait bounds how long a connection that only a name could let
// through (policy.OnlyNameAllows) waits for its client's first byte (the
// rest of its head then has sniff.CompleteTimeout, as on any path). No
// destination is dialled meanwhile, so none can end the wait by speaking
// first, and a client that sends nothing could otherwise hold its share of
// waiting connections for ever. A client with a request to send sends it
// at once; what waits is a browser's preconnected socket, which browsers
// give up on themselves after about 10 s unused (Chromium's unused idle
// socket timeout): 30 s never resets one the browser still means to use.
// A waiting connection holds nothing at the destination, so the wait is
// cheap; the per-client share bounds how many. A variable for tests.
var nameWait = 30 * time.Second

// serveNamed serves a TCP connection whose destination only a name could
// let through: without one, the policy denies it whatever it is. Dialled
// first, as other connections are, every destination the policy denies
// would be reached from the appliance's own address before a byte of the
// client's is read: a client would learn from a RST or a completed
// handshake which of them are open, and could hold connections to them
// open for as long as it sent nothing. So the client's handshake is
// completed with nothing dialled, its first bytes are read (for nameWait
// at most), and the destination is dialled only once the policy has
// allowed what they name (dialAllowed): a refused or unreachable
// destination then resets the client, since its handshake is long done.
// There is no destination to speak first: a server-first protocol the
// addresses alone do not allow is denied, as it would be once classified.
// A client silent until a reload that lets something other than a name
// through is served as a connection dialled first (redial). The
// connection keeps its slot in the client's waiting share until it is
// refused or its destination dialled (or, dialled first, its first bytes
// come).
func (p *Proxy) serveNamed(req tcpAcceptor, s *tcpSession) {
	accepted, err := req.Accept()
	if err != nil {
		s.releaseWaiting()
		s.rec.Result, s.rec.Error = "error", err.Error()
		p.endTCP(s.rec, s.start)
		return
	}
	br := sniffReaders.Get().(*bufio.Reader)
	br.Reset(accepted)
	if s.awaitName(accepted, br, "so it was not dialled") && s.redial(accepted) {
		s.serve(accepted)
	}
}

// awaitName waits, nameWait at most, for the first bytes of a connection
// that only a name could let through, with nothing dialled and its slot in
// its client's waiting share held, and serves it as they, or its silence,
// say. undialled ends the record's error for a silent client: why nothing
// at the destination was reached, or is still. It reports whether the
// connection is to be served dialled first (redial, then serve): a silent
// client whose wait ended under a policy that no longer needs a name.
func (s *tcpSession) awaitName(accepted net.Conn, br *bufio.Reader, undialled string) (dialFirst bool) {
	waitStart := time.Now()
	res, err := sniff.SniffWithin(br, accepted, nameWait)
	s.client = &peekedConn{Conn: accepted, r: br}
	if err != nil { // the client reset or broke the connection while we waited
		s.releaseWaiting()
		s.client.Close()
		s.rec.Result, s.rec.Error = "reset", s.p.endedError(err).Error() // the drain's words first when it did
		s.p.endTCP(s.rec, s.start)
		return false
	}
	if res.Peeked == 0 {
		// Nothing to decide on but the addresses, under the policy in
		// force now: a reload during the wait may have denied them by a
		// rule of its own, and the record must name the policy that
		// decided.
		if !s.policyAtFirstBytes() {
			return false
		}
		if !s.pol.OnlyNameAllows(s.subj) {
			// The reload lets something other than a name through: the
			// connection is now what it would be if it came now, dialled
			// first. Decided here as tcp and relayed, a ClientHello or a
			// request it sent later would pass unread, past every rule
			// about names (a bump too), and be recorded as a tcp allow.
			s.client = nil // serve sniffs through a reader of its own
			br.Reset(nil)  // and this one holds nothing
			sniffReaders.Put(br)
			return true
		}
		s.decide(policy.ProtoTCP, "") // a deny, whose record names its rule
		why := fmt.Sprintf("the client sent nothing within %s", nameWait)
		if time.Since(waitStart) < nameWait {
			why = "the client closed without sending anything"
		}
		s.refuse(why + "; only a name could allow this destination, " + undialled)
		return false
	}
	s.classified(&res, br)
	return false
}

// redial dials the destination of a silent connection whose nameWait
// ended under a policy that no longer needs a name for it, to be served as
// a connection dialled first (tcpSession.serve): whichever side speaks
// first decides, with no time limit, so a ClientHello or request the client
// sends later is classified and decided by its name. The connection keeps
// its slot in its client's waiting share through the dial and until its
// first bytes come, as one dialled first does, and serve gives it back.
// A failed dial resets the client, whose handshake is long done, and
// reports false.
func (s *tcpSession) redial(accepted net.Conn) bool {
	s.holding = false // serve's to give back, not releaseWaiting's
	up, err := s.p.dialTCP(context.Background(), s.subj.Dest.String())
	if err != nil {
		s.p.tcp.waiting.release(s.waiting)
		intercept.Abort(accepted)
		s.p.stats.tcpDialErrors.Add(1)
		s.rec.Result, s.rec.Error = records.DialResult(err), err.Error()
		s.p.endTCP(s.rec, s.start)
		return false
	}
	s.up = up
	return true
}

// dialAllowed dials the destination of a connection the policy has just
// allowed, unless it was dialled before classification; it reports
// whether there is one. A failed dial resets the client and ends the
// connection, its record saying how the dial ended: recorded whatever the
// client's bucket of failed dials holds, as redial's is, since its client
// completed a handshake and sent its first bytes (or waited out nameWait)
// for it, not one packet (denylimit.go).
func (s *tcpSession) dialAllowed() bool {
	if s.up != nil {
		return true
	}
	up, err := s.p.dialTCP(context.Background(), s.subj.Dest.String())
	s.releaseWaiting()
	if err != nil {
		intercept.Abort(s.client)
		s.p.stats.tcpDialErrors.Add(1)
		s.rec.Result, s.rec.Error = records.DialResult(err), err.Error()
		s.p.endTCP(s.rec, s.start)
		return false
	}
	s.up = up
	return true
}

// releaseWaiting gives back the connection's slot in tcpState.waiting if
// it still holds it. A flow only a name could let through holds it past
// classification, through its destination check and dial, as a flow
// dialled first holds it through its dial: a client that makes the
// appliance wait on destinations cannot make it wait on more than its
// share at once. A bump's check and dial are the interceptor's, and so is
// the slot from then on (tcpSession.intercept, Session.ReleaseWaiting).
func (s *tcpSession) releaseWaiting() {
	if s.holding {
		s.holding = false
		s.p.tcp.waiting.release(s.waiting)
	}
}
