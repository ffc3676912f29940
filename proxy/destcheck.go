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

// checkDestination ties a decision made on a name the client chose to the
// address the flow goes to (policy destination_check: dns). A rule with
// domains that lets a flow through (splice, allow) says only that the
// client named an allowed server; without the check, any address could be
// reached by naming an allowed one. It asks Config.DestinationCheck whether
// dest is an address name resolves to, from the flow's GWLB endpoint, for
// at most the dial timeout, and records the outcome in rec.DestCheck.
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
func (p *Proxy) checkDestination(ctx context.Context, pol *policy.Policy, d policy.Decision, rec *records.Record, name string, dest netip.Addr) (deny bool) {
	if !p.destCheckApplies(pol, d, name) {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, p.cfg.DialTimeout)
	defer cancel()
	if err := p.cfg.DestinationCheck(ctx, rec.Endpoint, name, dest.Unmap()); err != nil {
		rec.DestCheck = destCheckMismatch
		rec.Error = joinError(rec.Error, err.Error())
		return pol.Mode() != policy.Audit
	}
	rec.DestCheck = destCheckOK
	return false
}

// destCheckApplies reports whether pol's decision d, made on name, lets
// the flow through only if its destination passes the check.
func (p *Proxy) destCheckApplies(pol *policy.Policy, d policy.Decision, name string) bool {
	return d.ByName && (d.Action == policy.Splice || d.Action == policy.Allow) && name != "" &&
		pol.DestinationCheck() == policy.CheckDNS && p.cfg.DestinationCheck != nil
}

// reloadDestCheck says why a flow already relayed, which pol (loaded by a
// reload) still lets through by decision d on name, must now end for the
// destination check: "" if it may go on (policy.DestCheckAfterReload, by
// rec's earlier check; check is nil where no lookup may wait, and returns
// true when the flow must be denied). An audit that goes on without the
// check it is meant to report on says so in rec, once.
func (p *Proxy) reloadDestCheck(pol *policy.Policy, d policy.Decision, rec *records.Record, name string, check func() bool) string {
	if !p.destCheckApplies(pol, d, name) {
		return ""
	}
	why, unchecked := pol.DestCheckAfterReload(rec.DestCheck, check)
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
