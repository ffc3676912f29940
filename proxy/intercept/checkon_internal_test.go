package intercept

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
	"github.com/gwlbproxy/gwlbproxy/proxy/sniff"
)

// checkOnPolicies returns a policy allowing only domains (a YAML flow
// list's items), with the destination check off, and the same policy with
// it on: a reload from the one to the other turns the check on.
func checkOnPolicies(t testing.TB, domains string) (before, after *policy.Policy) {
	t.Helper()
	parse := func(doc string) *policy.Policy {
		p, err := policy.Parse("policy.yaml", []byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	rules := "  default: deny\n  rules:\n    - {name: named, domains: [" + domains + "], action: allow}\n"
	return parse("policy:\n  destination_check: off\n" + rules), parse("policy:\n" + rules)
}

// checkingInterceptor is an Interceptor checking destinations with check,
// its policy the holder's, which holds before: a test reloads through it.
func checkingInterceptor(before *policy.Policy, check func(ctx context.Context, endpoint, name string, addr netip.Addr) error) (*Interceptor, *policy.Holder) {
	holder := &policy.Holder{}
	holder.Store(before)
	return New(Config{Policy: holder, DestinationCheck: check}), holder
}

// pipeSession is a session of kind to dest whose client, which no abort
// ends, is client.
func pipeSession(ic *Interceptor, client net.Conn, kind string, dest netip.AddrPort) *session {
	s := &session{Session: &Session{Client: &abortingClient{Conn: client, onAbort: func() {}}, Record: &records.Record{Kind: kind}, Start: time.Now()}, ic: ic}
	s.Subject.Dest = dest
	return s
}

// namedTo makes s a connection whose name (its SNI) is name, decided under p.
func namedTo(s *session, name string, p *policy.Policy) {
	s.Subject.Domain = name
	s.Hello = &sniff.ClientHello{ServerName: name}
	s.Policy = p
	s.Decision = p.Decide(s.Subject)
}
