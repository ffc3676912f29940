package proxy

import (
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// reloaded decides the allowed echo flow f again under pol, the policy in
// force since a reload, on its next request (or reply: replyReloaded):
// without that, a ping started
// before an operator tightened the policy would go on for as long as it
// keeps sending. Still allowed, f goes on under pol (its record keeps the
// rule that opened it). Denied, f leaves the table, and closing its socket
// has serve write its record, saying the reload ended it; a denied flow
// takes its place, as if denied from the start, but without a record of
// its own (f's says it), and the request is dropped. It returns the flow
// the request now belongs to: &reloadDeniedNoRoom when there is no room to
// remember the denied flow. r.mu is held.
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
	f.reloadRule, f.reloadPolicy, f.reloadWhy = d.Rule, d.Policy, why
	delete(r.flows, k)
	_ = f.conn.Close() // wakes serve, which records the flow
	rec.Rule, rec.Action, rec.Policy = d.Rule, d.Action.String(), d.Policy
	denied, _ := r.addDenied(k, clientShareKey(req.Flow), rec, why, false, pol, now)
	if denied == &noRoomDenied {
		return &reloadDeniedNoRoom
	}
	return denied
}

// reloadDeniedNoRoom stands for an allowed flow that a reload denied when
// its client's share of remembered denied flows, or the pool, was full.
// Its request is dropped, but not counted as unrecorded as noRoomDenied's
// are: f's record says the reload ended it. The flow is not remembered, so
// its next request is decided afresh: dropped and counted while there is
// no room, and given a deny record of its own once there is. That second
// record for one ping is the lesser evil: remembering the flow beyond the
// share would let a client's reloaded pings outgrow the bound that keeps
// its denied flows from crowding out other clients'. It is never in the
// table, and its fields are never written but last.
var reloadDeniedNoRoom = echoSession{denied: true}

// replyReloaded has serve decide f again, before it relays the
// destination's next reply, when the policy changed since it last looked:
// without that, a destination that keeps answering (or sends replies
// unasked, with the socket's ident) would reach a silent client after a
// reload that denies the ping, for as long as the flow has not idled, as
// would a reply to a request sent just before the reload. It is decided as
// a request would be (reloaded): denied, the flow ends, its record saying
// so, and is remembered as denied. It returns the policy now looked at,
// and whether the reply may go: not once a reload ended the flow, on a
// request or here. r.mu not held.
func (r *echoRelay) replyReloaded(k echoKey, f *echoSession, now time.Time) (*policy.Policy, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	// Loaded under r.mu, as flow loads it: an older policy must never
	// undo what a request decided under a newer one.
	pol := r.p.cfg.Policy.Load()
	if r.flows[k] != f {
		return pol, false // a request after the reload ended it
	}
	if f.pol != pol && r.reloaded(k, f, f.latest.Load(), pol, now) != f {
		return pol, false
	}
	return pol, true
}
