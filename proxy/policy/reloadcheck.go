package policy

// DestCheckAfterReload says why a flow already under way, which p (loaded
// by a reload) still lets through by a decision that rests on the
// destination check, must now end for it: "" if it may go on. prior is the
// flow's earlier check: "ok" holds (the flow is still bound to the address
// its name resolved to) and "mismatch" fails still, under an enforcing p,
// with no lookup for either. A flow never checked ("": the old policy had
// the check off, or let it through by a rule without domains) is checked
// by check, which reports a mismatch; check is nil where no lookup may
// wait (the packet path), and such a flow then ends under an enforcing p,
// and goes on unchecked under an auditing one (unchecked reports that, for
// the record to say so). Shared by every flow a reload decides again
// (relayed and spliced TCP, QUIC, WebSocket tunnels), so that they apply
// the one rule.
func (p *Policy) DestCheckAfterReload(prior string, check func() (mismatch bool)) (why string, unchecked bool) {
	audit := p.Mode() == Audit
	switch {
	case prior == "ok":
		return "", false
	case prior == "mismatch":
		if audit {
			return "", false
		}
		return "its destination failed the destination check, which the policy now enforces", false
	case check == nil:
		if audit {
			return "", true
		}
		return "its destination never met the destination check, which the policy now makes, and no lookup can wait here", false
	case check() && !audit:
		return "its destination fails the destination check, which the policy now makes", false
	}
	return "", false
}

// DestCheckWithdrawn is DestCheckAfterReload for a flow whose check passed
// on evidence the reload withdrew: a DNS answer observed under the old
// policy, which a reload of a changed file forgets so that it stops
// vouching at once (the answer may have come from a resolver the client
// ran itself, which the new policy no longer lets it ask). Its "ok" no
// longer holds, and it is checked again as one never checked is: by check,
// or, where no lookup may wait (check nil), not at all, which ends it under
// an enforcing p and lets it go on unchecked under an auditing one.
func (p *Policy) DestCheckWithdrawn(check func() (mismatch bool)) (why string, unchecked bool) {
	audit := p.Mode() == Audit
	switch {
	case check == nil:
		if audit {
			return "", true
		}
		return "the DNS answer its destination check passed on was forgotten by the reload, and no lookup can wait here", false
	case check() && !audit:
		return "its destination fails the destination check, which passed on a DNS answer the reload forgot", false
	}
	return "", false
}
