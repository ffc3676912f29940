package proxy

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// A relayed TCP connection, or a spliced TLS one, is decided again when it
// next carries bytes, either way, after a reload: without that, a
// connection opened before an operator tightened the policy (a tunnel, a
// command channel, an exfiltration under way) would go on under the old
// one for as long as either end kept it busy. As for UDP (udpreload.go),
// the check costs one atomic load and a pointer compare per read.

// errReloadDenied ends a relay whose connection a reload denies.
var errReloadDenied = errors.New("denied by a policy reload")

// tcpReload is what a relayed connection keeps to be decided again.
type tcpReload struct {
	s   *tcpSession
	pol atomic.Pointer[policy.Policy] // the policy it was last decided under

	mu sync.Mutex // both directions may find the reload at once
	// why says why a reload denied the connection; set once, under mu,
	// and read by the relay's report, after both directions have ended.
	why string
	// spliced says the connection is TLS relayed whole, named by its
	// ClientHello: a policy that would now bump the name ends it.
	spliced bool
	// nameUnread says the connection looked like TLS or HTTP but its name
	// could not be read, and was relayed as TCP because no rule needed a
	// name (tcpSession.unreadable): a policy whose rules now do ends it.
	nameUnread bool
}

// check is the relay's recheck: nil while the connection may go on.
func (r *tcpReload) check() error {
	pol := r.s.p.cfg.Policy.Load()
	if pol == r.pol.Load() {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.why != "" {
		return errReloadDenied
	}
	if pol == r.pol.Load() { // the other direction decided it meanwhile
		return nil
	}
	if why := r.decide(pol); why != "" {
		r.why = why
		return errReloadDenied
	}
	r.pol.Store(pol)
	return nil
}

// decide decides the connection under pol by what its first decision
// knew: its addresses, and for TLS the ClientHello's name and whether it
// offered ECH. It returns why
// pol ends it, or "" if it goes on; denied, the record takes pol's rule and
// action. Still allowed, the record keeps the rule that opened it. A
// spliced connection the new decision lets through by its name meets the
// new policy's destination check (reloadDestCheck): one whose check failed
// ends once the policy enforces it, and one never checked is checked here,
// in the relay direction that found the reload, for at most the dial
// timeout (the other direction waits on mu meanwhile).
func (r *tcpReload) decide(pol *policy.Policy) string {
	s := r.s
	if r.nameUnread && pol.TCPNamesMatter() {
		s.rec.Rule, s.rec.Action, s.rec.Policy = "", policy.Deny.String(), pol.ID()
		return "its name could not be read, and the policy now looks at names"
	}
	if r.spliced && s.rec.ECH && pol.DenyECH() {
		s.rec.Rule, s.rec.Action, s.rec.Policy = "", policy.Deny.String(), pol.ID()
		return "ClientHello offers ECH; policy ech: deny"
	}
	d := pol.Decide(s.subj)
	switch {
	case d.Action == policy.Deny:
		s.rec.Rule, s.rec.Action, s.rec.Policy = d.Rule, d.Action.String(), d.Policy
		return "denied by policy"
	case r.spliced && d.Action == policy.Bump && s.p.intercept.CanBump():
		// Going on spliced would keep from inspection what the policy now
		// wants inspected; the client's next connection is bumped.
		s.rec.Rule, s.rec.Action, s.rec.Policy = d.Rule, policy.Deny.String(), d.Policy
		return "the policy now bumps this name, and a spliced connection cannot be bumped midway"
	}
	if r.spliced && d.Action == policy.Bump {
		d.Action = policy.Splice // no CA: spliced, as serveTLS does
	}
	why := s.p.reloadDestCheck(pol, d, s.rec, &s.vouch, s.subj.Domain, s.subj.Dest.Addr(), func() bool {
		return s.p.checkDestination(context.Background(), pol, d, s.rec, &s.vouch, s.subj.Domain, s.subj.Dest.Addr())
	})
	if why != "" {
		s.rec.Rule, s.rec.Action, s.rec.Policy = d.Rule, policy.Deny.String(), d.Policy
	}
	return why
}
