package proxy

import (
	"context"
	"net/netip"
	"strings"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// Values of records.Record.DestCheck.
const (
	destCheckOK       = "ok"
	destCheckMismatch = "mismatch"
)

// destNotChecked is the note an audit-mode reload leaves on a flow it
// would have destination-checked but could not (reloadDestCheck).
const destNotChecked = "destination not checked after a policy reload (no lookup can wait on the packet path)"

// destVouch is what a flow's passed destination check rested on: an
// answer observed at a generation of the observed answers
// (Config.DNSGeneration), or what a reload leaves in place (the
// appliance's own lookup, the name being the address). A reload that
// forgets the observed answers (the generation moved on) withdraws the
// first, and the flow is checked again (reloadDestCheck): an "ok" that
// rests on it no longer holds. The zero value is a pass that holds, as
// every pass did before the appliance could tell them apart.
type destVouch struct {
	observed bool
	gen      uint64
}

// checkDestination ties a decision made on a name the client chose to the
// address the flow goes to (policy destination_check: dns). A rule with
// domains that lets a flow through (splice, allow) says only that the
// client named an allowed server; without the check, any address could be
// reached by naming an allowed one. It asks Config.DestinationCheck whether
// dest is an address name resolves to, from the flow's GWLB endpoint, for
// at most the dial timeout, and records the outcome in rec.DestCheck, and
// what a pass rested on in v.
//
// It returns true when the flow must be denied: a mismatch, or a check that
// failed, in enforce mode; rec.Error then says why, and the caller refuses
// the flow with it. In audit mode a mismatch is recorded (DestCheck and
// Error) and the flow goes on. It checks nothing, and returns false, when
// the decision was not made on a name, does not let the flow through, is
// a bump (the interceptor checks it itself, before its handshake, unless
// the destination verified a certificate for the name lately:
// intercept/bumpcheck.go), or when the policy or the appliance turns the
// check off.
//
// The TCP path calls it for spliced TLS; the QUIC path can call it the same
// way for its decision on the Initial's SNI.
func (p *Proxy) checkDestination(ctx context.Context, pol *policy.Policy, d policy.Decision, rec *records.Record, v *destVouch, name string, dest netip.Addr) (deny bool) {
	if !p.destCheckApplies(pol, d, name) {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, p.cfg.DialTimeout)
	defer cancel()
	// Read before the check: a forget that lands during it then counts
	// as after it, and the flow is checked again at worst once too often.
	gen := p.observedGen()
	if err := p.cfg.DestinationCheck(ctx, rec.Endpoint, name, dest.Unmap()); err != nil {
		rec.DestCheck = destCheckMismatch
		rec.Error = joinError(rec.Error, err.Error())
		return pol.Mode() != policy.Audit
	}
	rec.DestCheck = destCheckOK
	*v = p.vouchOf(gen, name, dest)
	return false
}

// observedGen returns the observed answers' generation, or 0 when the
// proxy cannot read it (no DNSGeneration): then no pass is ever withdrawn.
func (p *Proxy) observedGen() uint64 {
	if p.cfg.DNSGeneration == nil {
		return 0
	}
	return p.cfg.DNSGeneration()
}

// vouchOf says what a check of dest for name that passed, after the
// observed answers' generation read gen, rested on.
func (p *Proxy) vouchOf(gen uint64, name string, dest netip.Addr) destVouch {
	if p.cfg.DNSGeneration == nil || p.cfg.DestinationLookedUp != nil && p.cfg.DestinationLookedUp(name, dest.Unmap()) {
		return destVouch{}
	}
	return destVouch{observed: true, gen: gen}
}

// withdrawn reports whether a reload forgot the observed answer v rested on.
func (p *Proxy) withdrawn(v *destVouch) bool {
	return v.observed && p.observedGen() != v.gen
}

// destCheckApplies reports whether pol's decision d, made on name, lets
// the flow through only if its destination passes the check.
func (p *Proxy) destCheckApplies(pol *policy.Policy, d policy.Decision, name string) bool {
	return d.ByName && (d.Action == policy.Splice || d.Action == policy.Allow) && name != "" &&
		pol.DestinationCheck() == policy.CheckDNS && p.cfg.DestinationCheck != nil
}

// reloadDestCheck says why a flow already relayed to dest, which pol
// (loaded by a reload) still lets through by decision d on name, must now
// end for the destination check: "" if it may go on
// (policy.DestCheckAfterReload, by rec's earlier check; check is nil where
// no lookup may wait, and returns true when the flow must be denied). A
// pass that rested on an observed answer the reload forgot (v) no longer
// holds (policy.DestCheckWithdrawn): where no lookup may wait, the flow
// goes on only if the appliance's own lookup already vouches for dest. An
// audit that goes on without the check it is meant to report on says so
// in rec, once.
func (p *Proxy) reloadDestCheck(pol *policy.Policy, d policy.Decision, rec *records.Record, v *destVouch, name string, dest netip.Addr, check func() bool) string {
	if !p.destCheckApplies(pol, d, name) {
		return ""
	}
	var why string
	var unchecked bool
	switch {
	case rec.DestCheck != destCheckOK || !p.withdrawn(v):
		why, unchecked = pol.DestCheckAfterReload(rec.DestCheck, check)
	case check == nil && p.cfg.DestinationLookedUp != nil && p.cfg.DestinationLookedUp(name, dest.Unmap()):
		*v = destVouch{} // bound by the appliance's own lookup now
	default:
		why, unchecked = pol.DestCheckWithdrawn(check)
	}
	if unchecked && !strings.Contains(rec.Error, destNotChecked) {
		rec.Error = joinError(rec.Error, destNotChecked)
	}
	return why
}

// joinError appends msg to a record's error, keeping what was there.
func joinError(prev, msg string) string {
	if prev == "" {
		return msg
	}
	return prev + "; " + msg
}
