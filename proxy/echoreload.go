package proxy

import (
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// reloaded decides the allowed echo flow f again under pol, the policy in
// force since a reload, on its next request: without that, a ping started
// before an operator tightened the policy would go on for as long as it
// keeps sending. Still allowed, f goes on under pol (its record keeps the
// rule that opened it). Denied, f leaves the table, and closing its socket
// has serve write its record, saying the reload ended it; a denied flow
// takes its place, as if denied from the start, but without a record of
// its own (f's says it), and the request is dropped. It returns the flow
// the request now belongs to. r.mu is held.
func (r *echoRelay) reloaded(k echoKey, f *echoSession, req *netstack.EchoRequest, pol *policy.Policy, now time.Time) *echoSession {
	rec := newRecord("icmp", req.Flow)
	d := pol.Decide(policy.Subject{
		Protocol: policy.ProtoICMP, Dest: req.Flow.Dest, Client: req.Flow.Client.Addr(), Endpoint: rec.Endpoint,
	})
	if d.Action != policy.Deny {
		f.pol = pol
		return f
	}
	const why = "denied by policy"
	f.reloadRule, f.reloadWhy = d.Rule, why
	delete(r.flows, k)
	_ = f.conn.Close() // wakes serve, which records the flow
	rec.Rule, rec.Action = d.Rule, d.Action.String()
	denied, _ := r.addDenied(k, clientShareKey(req.Flow), rec, why, false, pol, now)
	return denied
}
