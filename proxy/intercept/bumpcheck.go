package intercept

import (
	"context"
	"net/netip"
	"strings"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// The destination check of a bump.
//
// A bump decided on the SNI (a rule with domains) sends that name to the
// destination in the appliance's own ClientHello, before any certificate
// is seen: a client that chose both the name (any label under an allowed
// domain) and the address (one it controls) would otherwise get bytes of
// its choosing to an address nothing checked, on every connection, even
// though the verification that follows fails. So, with
// destination_check: dns, the destination is checked before the upstream
// handshake, as a spliced connection's is before its first byte.
//
// A flow only a name could let through comes with nothing dialled
// (proxy/tcpname.go): its destination is dialled only once the check has
// passed (dialBumped). Dialled first, a destination the check denies would
// still be reached from the appliance's address, and a client would learn
// from the answer (an alert for an open port, a RST for a closed one)
// which of the addresses the policy denies are open.
//
// A destination that verified a certificate for the name a short while ago
// holds a key for it, which proves more than DNS could: it is not checked
// again (provenOrigin), so a busy origin costs no lookup per connection.

// provenOriginsSize bounds the (destination, name) pairs remembered.
const provenOriginsSize = 4096

// provenOrigin is a destination and a name it verified a certificate for.
type provenOrigin struct {
	dest netip.AddrPort
	name string // lower case
}

func newProvenOrigin(dest netip.AddrPort, name string) provenOrigin {
	return provenOrigin{dest: dest, name: strings.ToLower(name)}
}

// checkBumpDestination runs the destination check a bump decided on the
// SNI needs, before the upstream handshake. It returns false when the
// connection was refused: a mismatch, or a check that failed; the record
// then says why, as a spliced connection's does. (Audit mode, where a
// mismatch would only be recorded, never bumps: its bumps are splices.)
func (s *session) checkBumpDestination() bool {
	sni := s.Hello.ServerName
	if !s.needsDestinationCheck(s.Policy, s.Decision, sni) || s.ic.proven.has(newProvenOrigin(s.Subject.Dest, sni)) {
		return true
	}
	v, err := s.checkDestination(context.Background(), sni)
	if err != nil {
		s.Record.DestCheck = "mismatch"
		s.closeUpstream() // not a byte sent, if dialled at all
		WriteAlert(s.client, AlertAccessDenied)
		s.refuse(err.Error())
		return false
	}
	// Before any request: a reload's recheck of the connection's name
	// (decideName) reads it under its lock.
	s.Record.DestCheck, s.nameCheck.vouch = "ok", v
	return true
}

// dialBumped dials the destination of a bump handed over with none, once
// its destination check has passed; it reports whether there is one. A
// failed dial resets the client (its handshake is long done) and ends the
// session, its record keeping the bump's rule and saying how the dial
// ended, as for a flow dialled first. The connection is the session's
// Upstream from then on, closed on every path that ends it, and watched as
// the further connections are (Session.WatchUpstream): until the session
// ends, since it lasts as long as the session. The client's slot among its
// waiting connections (Session.ReleaseWaiting) is held through the check
// and the dial, and given back once the dial has ended: a client cannot
// have more checks and dials under way at once than its share. A session
// Abort ended during the check or the dial dials nothing, or resets what it
// dialled, and ends.
func (s *session) dialBumped() bool {
	if s.Upstream != nil {
		s.releaseWaiting()
		return true
	}
	if s.abortedFromOutside() {
		// The client went while the check ran (Abort, from the watch on
		// its connection): nothing to dial for, and the record says what
		// Abort was told.
		s.releaseWaiting()
		s.finish()
		return false
	}
	c, err := s.ic.cfg.Dial(context.Background(), s.Subject.Dest.String())
	s.releaseWaiting()
	if err != nil {
		if s.ic.cfg.DialFailed != nil {
			s.ic.cfg.DialFailed()
		}
		Abort(s.client)
		s.Record.Result, s.Record.Error = records.DialResult(err), err.Error()
		s.finish()
		return false
	}
	s.upMu.Lock()
	aborted := s.abortedFromOutside()
	if !aborted {
		s.Upstream = c // an Abort from now on resets it
	}
	s.upMu.Unlock()
	if aborted {
		// Abort came during the dial and found no Upstream: the gone
		// client's SNI must not go out in a handshake nobody waits for.
		Abort(c)
		s.finish()
		return false
	}
	if s.WatchUpstream != nil {
		s.WatchUpstream(c) // its unwatch is the session's end
	}
	return true
}

// releaseWaiting calls ReleaseWaiting, once.
func (s *Session) releaseWaiting() {
	if s.ReleaseWaiting != nil && s.waitingReleased.CompareAndSwap(false, true) {
		s.ReleaseWaiting()
	}
}
