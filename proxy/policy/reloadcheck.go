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
