package proxy

import (
	"fmt"
	"slices"
	"strings"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// pathDenial is one of the connections a new path may be, denied under the
// policy in force: by rule, for why.
type pathDenial struct {
	s         udpSubject
	rule, why string
}

// followQUIC decides a new flow of f's client address that did not begin
// with an Initial, while the policy looks at names, as the QUIC connection
// it may be a new path of (quicpaths.go). It reports false when the
// address has no QUIC connection to remember there: the flow is then
// decided as udp, as any other. Otherwise the flow is refused if the
// policy in force denies any of the connections it may be (deny wins: an
// allowed one, a decoy's, must not cover it), or relayed (first, in the
// pooled buf, first) as an allowed one; and buf is given back.
func (f *udpFlow) followQUIC(first []byte, buf *[]byte) bool {
	if !f.pol.NamesMatter() {
		return false // the flow is decided as its connection was: on addresses
	}
	h, ok := f.p.udp.quicPaths.history(f.quicPathKey())
	if !ok {
		return false
	}
	// Decided on the flow's own endpoint: a rule's endpoints match the
	// one it comes through.
	own := func(s udpSubject) udpSubject {
		s.endpoint = f.rec.Endpoint
		return s
	}
	var denials []pathDenial
	var allowed *pathAllowed
	var mayBe []udpSubject
	decide := func(s udpSubject, because string) {
		// redecide may bind its vouch anew (reloadDestCheck): what it
		// leaves in s is what the new flow carries.
		d, why := f.p.redecide(f.pol, &s, nil)
		mayBe = append(mayBe, s)
		switch {
		case why != "":
			denials = append(denials, pathDenial{s: s, rule: d.Rule, why: why})
		case allowed == nil:
			allowed = &pathAllowed{s: s, d: d, because: because}
		}
	}
	for i := range h.live {
		decide(own(h.live[i]), "an allowed QUIC flow of the client's to this destination is open")
	}
	for i := len(h.ended) - 1; i >= 0; i-- { // newest first
		m := &h.ended[i]
		s := own(m.s)
		if m.deniedBy == f.pol && s == m.s { // denied under the policy in force: no reload since
			denials = append(denials, pathDenial{s: s, rule: m.rule, why: m.why})
			continue
		}
		decide(s, "a QUIC flow of the client's to this destination ended lately, and the policy allows its connection")
	}
	if len(denials) > 0 {
		datagramBufPool.Put(buf)
		f.refusePath(denials)
		return true
	}
	f.followed(&allowed.s, allowed.d, allowed.because)
	// A reload decides every connection it may be: recorded as the first
	// allowed, a path that migrated before the reload behind a decoy of
	// another name was decided again on the decoy's name alone, and went
	// on (review r12s26 F2).
	f.mayBe = mayBe
	f.relay([][]byte{first}, buf)
	return true
}

// pathAllowed is the connection a new path is let through as.
type pathAllowed struct {
	s       udpSubject
	d       policy.Decision
	because string
}

// refusePath refuses f, taken for a new path of one of the connections
// denials says are denied (at least one), and remembers the denial of
// each for its next paths. Of one connection, its record is that
// connection's; of several, it names none of them (it may be any, or
// none), its error saying which they are, and the held flow is let go
// when a reload allows any of them.
func (f *udpFlow) refusePath(denials []pathDenial) {
	const taken = "no Initial first: connection migration, RFC 9000 §9"
	first := denials[0]
	var conns []pathDenial
	rule := first.rule
	for _, dn := range denials {
		if !slices.ContainsFunc(conns, func(c pathDenial) bool { return sameConn(c.s, dn.s) }) {
			conns = append(conns, dn)
		}
		if dn.rule != rule {
			rule = ""
		}
	}
	for _, c := range conns {
		f.p.udp.quicPaths.denied(f.quicPathKey(), c.s, f.pol, c.why, c.rule, f.p.deniesNow)
	}
	f.setQUIC(&first.s)
	f.rec.Rule, f.rec.Action, f.rec.Policy = rule, policy.Deny.String(), f.pol.ID()
	if len(conns) == 1 {
		f.refuseNamed(fmt.Sprintf("taken for a new path of the client's QUIC connection to this destination (%s), which is denied: %s", taken, first.why))
		return
	}
	f.rec.SNI, f.rec.ECH, f.rec.DestCheck = "", false, ""
	var each []string
	alts := make([]udpSubject, 0, len(conns))
	for _, c := range conns {
		name := c.s.name
		if c.s.unread {
			name = "a connection whose ClientHello was not read"
		}
		each = append(each, name+": "+c.why)
		alts = append(alts, c.s)
	}
	f.releaseShare() // no host socket: it does not count
	f.p.denyNamed(f.rec, f.start, clientShareKey(f.info), fmt.Sprintf("taken for a new path of one of the client's %d QUIC connections to this destination (%s), all of them denied: %s", len(conns), taken, strings.Join(each, "; ")))
	f.p.holdDenied(f.client, f.ready, f.pol, alts, clientShareKey(f.info))
}

// setQUIC makes f's record, and so what a reload decides it on (subject),
// that of the QUIC connection s: its destination check's vouch too, without
// which a reload that forgets the observed answer the check passed on
// would take the new path's check for one that holds (destVouch's zero
// value), let it go on, and remember it so for the connection's next paths.
func (f *udpFlow) setQUIC(s *udpSubject) {
	f.rec.Kind, f.rec.SNI, f.rec.ECH, f.rec.DestCheck = "quic", s.name, s.ech, s.destCheck
	f.quicUnread, f.vouch = s.unread, s.vouch
}

// followed lets f through as a new path of the QUIC connection s, allowed
// by d under the policy in force.
func (f *udpFlow) followed(s *udpSubject, d policy.Decision, because string) {
	f.setQUIC(s)
	f.rec.Rule, f.rec.Action, f.rec.Policy = d.Rule, d.Action.String(), d.Policy
	f.rec.Error = "relayed as a new path of the client's QUIC connection to this destination (no Initial first: connection migration, RFC 9000 §9): " + because
	f.guardInitials = true // an Initial here starts a connection nobody decided on
}

// deniesNow reports whether the policy in force denies the connection s
// (redecide, with no lookup).
func (p *Proxy) deniesNow(s udpSubject) bool {
	pol := p.cfg.Policy.Load()
	if pol == nil {
		return false
	}
	_, why := p.redecide(pol, &s, nil)
	return why != ""
}

// mayBeDenied returns why pol denies a connection f, followed as a new
// QUIC path, may be, "" if it denies none, with the denying decision.
func (f *udpFlow) mayBeDenied(pol *policy.Policy) (policy.Decision, string) {
	for i := range f.mayBe {
		c := f.mayBe[i]
		if d, why := f.p.redecide(pol, &c, nil); why != "" {
			return d, fmt.Sprintf("a new path that may be the client's QUIC connection to %q, which the policy now denies: %s", c.name, why)
		}
	}
	return policy.Decision{}, ""
}
