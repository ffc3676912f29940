package policy

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

const testConfig = `
listen: ":6081"          # the appliance's own keys are ignored
logging: {format: json}
policy:
  mode: enforce
  default: allow
  rules:
    - name: block-bad
      domains: ["bad.example", "*.evil.example", "Trailing.Example."]
      action: deny
    - name: inspect-corp
      dest_cidrs: ["10.0.0.0/8", "2001:db8::/32"]
      ports: [443, "8000-8100"]
      protocols: [tls, http]
      action: bump
      allow_unverified_upstream: true
    - name: client-only
      client_cidrs: ["192.168.1.0/24", "fd00::/8"]
      action: splice
    - name: endpoint-udp
      endpoints: ["vpce-0123456789abcdef0"]
      protocols: [udp]
      action: deny
    - name: ssh
      protocols: [tcp]
      ports: [22]
      action: deny
    - name: single-host
      dest_cidrs: ["198.51.100.7", "::ffff:203.0.113.0/120"]
      action: deny
`

func mustParse(t testing.TB, cfg string) *Policy {
	t.Helper()
	p, err := Parse("policy.yaml", []byte(cfg))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return p
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
func ip(s string) netip.Addr     { return netip.MustParseAddr(s) }

func TestDecide(t *testing.T) {
	p := mustParse(t, testConfig)
	if p.Len() != 6 || p.Mode() != Enforce || p.DefaultAction() != Allow || !p.NeedsCA() {
		t.Fatalf("policy: %d rules, mode %v, default %v, needs CA %v", p.Len(), p.Mode(), p.DefaultAction(), p.NeedsCA())
	}
	web := ap("192.0.2.10:443")
	tests := []struct {
		name       string
		f          Subject
		action     Action
		rule       string
		unverified bool
	}{
		// Domains.
		{"exact", Subject{Protocol: "tls", Domain: "bad.example", Dest: web}, Deny, "block-bad", false},
		{"exact, case and trailing dot", Subject{Protocol: "http", Domain: "BAD.Example.", Dest: web}, Deny, "block-bad", false},
		{"wildcard one level", Subject{Protocol: "tls", Domain: "x.evil.example", Dest: web}, Deny, "block-bad", false},
		{"wildcard deep, upper case", Subject{Protocol: "tls", Domain: "A.B.EVIL.example", Dest: web}, Deny, "block-bad", false},
		{"wildcard skips the apex", Subject{Protocol: "tls", Domain: "evil.example", Dest: web}, Splice, DefaultRule, false},
		{"wildcard needs a dot boundary", Subject{Protocol: "tls", Domain: "notevil.example", Dest: web}, Splice, DefaultRule, false},
		{"exact is not a suffix match", Subject{Protocol: "tls", Domain: "www.bad.example", Dest: web}, Splice, DefaultRule, false},
		{"pattern with trailing dot", Subject{Protocol: "tls", Domain: "trailing.example", Dest: web}, Deny, "block-bad", false},
		{"no domain never matches domains", Subject{Protocol: "tcp", Dest: web}, Allow, DefaultRule, false},
		// CIDRs, ports, protocols; bump adapted per protocol.
		{"v4 cidr + port + tls", Subject{Protocol: "tls", Dest: ap("10.1.2.3:443")}, Bump, "inspect-corp", true},
		{"v4 cidr + port range low", Subject{Protocol: "tls", Dest: ap("10.1.2.3:8000")}, Bump, "inspect-corp", true},
		{"port range high + http: bump means allow", Subject{Protocol: "http", Dest: ap("10.1.2.3:8100")}, Allow, "inspect-corp", false},
		{"port outside range", Subject{Protocol: "tls", Dest: ap("10.1.2.3:8101")}, Splice, DefaultRule, false},
		{"v6 cidr", Subject{Protocol: "tls", Dest: ap("[2001:db8:1::5]:443")}, Bump, "inspect-corp", true},
		{"v6 outside", Subject{Protocol: "tls", Dest: ap("[2001:db9::5]:443")}, Splice, DefaultRule, false},
		{"v4-mapped dest", Subject{Protocol: "tls", Dest: ap("[::ffff:10.9.9.9]:443")}, Bump, "inspect-corp", true},
		{"protocol mismatch", Subject{Protocol: "tcp", Dest: ap("10.1.2.3:443")}, Allow, DefaultRule, false},
		{"first match wins", Subject{Protocol: "tls", Domain: "bad.example", Dest: ap("10.1.2.3:443")}, Deny, "block-bad", false},
		// Client CIDRs.
		{"client v4", Subject{Protocol: "tls", Dest: web, Client: ip("192.168.1.77")}, Splice, "client-only", false},
		{"client v4, http: splice means allow", Subject{Protocol: "http", Dest: web, Client: ip("192.168.1.77")}, Allow, "client-only", false},
		{"client v6", Subject{Protocol: "udp", Dest: web, Client: ip("fd12::1")}, Allow, "client-only", false},
		{"client outside", Subject{Protocol: "tls", Dest: web, Client: ip("192.168.2.1")}, Splice, DefaultRule, false},
		// Endpoints.
		{"endpoint, case-insensitive", Subject{Protocol: "udp", Dest: web, Endpoint: "VPCE-0123456789ABCDEF0"}, Deny, "endpoint-udp", false},
		{"other endpoint", Subject{Protocol: "udp", Dest: web, Endpoint: "vpce-0123456789abcdef1"}, Allow, DefaultRule, false},
		{"endpoint, wrong protocol", Subject{Protocol: "tcp", Dest: web, Endpoint: "vpce-0123456789abcdef0"}, Allow, DefaultRule, false},
		// Protocol tcp means other TCP only.
		{"tcp port", Subject{Protocol: "tcp", Dest: ap("192.0.2.1:22")}, Deny, "ssh", false},
		{"tls on the same port", Subject{Protocol: "tls", Dest: ap("192.0.2.1:22")}, Splice, DefaultRule, false},
		{"unknown protocol", Subject{Protocol: "sctp", Dest: ap("192.0.2.1:22")}, Allow, DefaultRule, false},
		// Single addresses and mapped prefixes.
		{"bare address", Subject{Protocol: "tcp", Dest: ap("198.51.100.7:1")}, Deny, "single-host", false},
		{"bare address, neighbour", Subject{Protocol: "tcp", Dest: ap("198.51.100.8:1")}, Allow, DefaultRule, false},
		{"mapped prefix in config", Subject{Protocol: "tcp", Dest: ap("203.0.113.9:1")}, Deny, "single-host", false},
		{"zero flow", Subject{}, Allow, DefaultRule, false},
	}
	for _, tc := range tests {
		got := withoutID(p.Decide(tc.f))
		want := Decision{Action: tc.action, Rule: tc.rule, AllowUnverifiedUpstream: tc.unverified}
		got.ByName = false // TestDecideByName
		if got != want {
			t.Errorf("%s: Decide(%+v) = %+v, want %+v", tc.name, tc.f, got, want)
		}
	}
}

func TestDecideDefaultsAndModes(t *testing.T) {
	tls := Subject{Protocol: "tls", Domain: "x.example", Dest: ap("192.0.2.1:443")}
	tcp := Subject{Protocol: "tcp", Dest: ap("192.0.2.1:25")}
	corp := Subject{Protocol: "tls", Dest: ap("10.0.0.1:443")}
	cfg := func(mode, def string) string {
		return fmt.Sprintf("policy:\n  mode: %s\n  default: %s\n  rules:\n    - {name: corp, dest_cidrs: [10.0.0.0/8], action: bump, allow_unverified_upstream: true}\n", mode, def)
	}
	tests := []struct {
		mode, def          string
		tls, tcp, corp     Action
		corpUnverified, ca bool
	}{
		{"enforce", "deny", Deny, Deny, Bump, true, true},
		{"enforce", "bump", Bump, Allow, Bump, true, true},
		{"enforce", "splice", Splice, Allow, Bump, true, true},
		{"enforce", "allow", Splice, Allow, Bump, true, true},
		{"audit", "bump", Splice, Allow, Splice, false, false},
		{"audit", "deny", Deny, Deny, Splice, false, false},
		{"Audit", "ALLOW", Splice, Allow, Splice, false, false},
	}
	for _, tc := range tests {
		p := mustParse(t, cfg(tc.mode, tc.def))
		d1, d2, d3 := p.Decide(tls), p.Decide(tcp), p.Decide(corp)
		if d1.Action != tc.tls || d1.Rule != DefaultRule || d2.Action != tc.tcp || d3.Action != tc.corp || d3.Rule != "corp" ||
			d3.AllowUnverifiedUpstream != tc.corpUnverified || p.NeedsCA() != tc.ca {
			t.Errorf("mode %s default %s: tls %+v, tcp %+v, corp %+v, needs CA %v", tc.mode, tc.def, d1, d2, d3, p.NeedsCA())
		}
	}
	// Defaults when the section says nothing: enforce, allow.
	p := mustParse(t, "policy: {}")
	if p.Mode() != Enforce || withoutID(p.Decide(tcp)) != (Decision{Action: Allow, Rule: DefaultRule}) {
		t.Errorf("empty policy: %v %+v", p.Mode(), p.Decide(tcp))
	}
	p = mustParse(t, "policy:\n")
	if withoutID(p.Decide(tls)) != (Decision{Action: Splice, Rule: DefaultRule}) {
		t.Errorf("null policy: %+v", p.Decide(tls))
	}
	var nilPolicy *Policy
	if d := nilPolicy.Decide(tls); d.Action != Deny {
		t.Errorf("nil policy: %+v", d)
	}
}

// Lists from 8 entries use maps; both paths must agree on exact, wildcard,
// apex and case.
func TestDecideLargeDomainSets(t *testing.T) {
	var exact, wild []string
	for i := range 20 {
		exact = append(exact, fmt.Sprintf("\"host%d.example\"", i))
		wild = append(wild, fmt.Sprintf("\"*.zone%d.Example.\"", i))
	}
	p := mustParse(t, fmt.Sprintf("policy:\n  default: allow\n  rules:\n    - {name: big, action: deny, domains: [%s, %s]}\n",
		strings.Join(exact, ", "), strings.Join(wild, ", ")))
	if p.rules[0].domains.exactM == nil || p.rules[0].domains.wildM == nil {
		t.Fatal("map path not taken")
	}
	for dom, want := range map[string]Action{
		"host7.example": Deny, "HOST19.EXAMPLE.": Deny, "x.host7.example": Allow,
		"a.zone3.example": Deny, "a.b.zone19.example": Deny, "zone3.example": Allow, "azone3.example": Allow,
		".zone3.example": Allow, "zone3.example.": Allow, "host20.example": Allow, "": Allow,
	} {
		if d := p.Decide(Subject{Protocol: "http", Domain: dom}); d.Action != want {
			t.Errorf("%q: %+v, want %v", dom, d, want)
		}
	}
}

// A name longer than the stack buffer must still be matched (else a long
// Host would slip past a deny rule).
func TestDecideLongDomain(t *testing.T) {
	p := mustParse(t, "policy:\n  rules:\n    - {name: evil, domains: [\"*.evil.example\"], action: deny}\n")
	long := strings.Repeat("A", 300) + ".EVIL.example"
	if d := p.Decide(Subject{Protocol: "http", Domain: long}); d.Action != Deny {
		t.Fatalf("long domain: %+v", d)
	}
}

func TestDecideDoesNotAllocate(t *testing.T) {
	p := mustParse(t, testConfig)
	flows := []Subject{
		{Protocol: "tls", Domain: "Www.Unmatched.Example.", Dest: ap("192.0.2.1:443"), Client: ip("192.0.2.2"), Endpoint: "vpce-1"},
		{Protocol: "tls", Domain: "x.evil.example", Dest: ap("192.0.2.1:443")},
		{Protocol: "http", Dest: ap("[2001:db8::1]:8080")},
		{Protocol: "tcp", Dest: ap("[64:ff9b:1:c633:64:700::]:22")}, // every RFC 6052 layout read
	}
	for _, f := range flows {
		if n := testing.AllocsPerRun(100, func() { p.Decide(f) }); n != 0 {
			t.Errorf("Decide(%+v): %v allocations", f, n)
		}
	}
}

// benchPolicy builds n rules of three shapes, none of which the benchmark
// flow matches, so Decide walks them all to the default.
func benchPolicy(tb testing.TB, n int) *Policy {
	var b strings.Builder
	b.WriteString("policy:\n  default: splice\n  rules:\n")
	for i := range n {
		switch i % 3 {
		case 0:
			fmt.Fprintf(&b, "    - {name: r%d, domains: [host%d.example, \"*.zone%d.example\"], action: deny}\n", i, i, i)
		case 1:
			fmt.Fprintf(&b, "    - {name: r%d, dest_cidrs: [10.%d.0.0/16, \"2001:db8:%x::/48\"], ports: [443, \"8000-8100\"], protocols: [tls], action: bump}\n", i, i, i)
		case 2:
			fmt.Fprintf(&b, "    - {name: r%d, client_cidrs: [172.16.%d.0/24], protocols: [tls, http], domains: [\"*.corp%d.example\"], action: splice}\n", i, i, i)
		}
	}
	return mustParse(tb, b.String())
}

func BenchmarkDecide(b *testing.B) {
	p := benchPolicy(b, 100)
	miss := Subject{Protocol: "tls", Domain: "www.unmatched.example", Dest: ap("192.0.2.1:443"), Client: ip("192.0.2.2"), Endpoint: "vpce-0123456789abcdef0"}
	if d := p.Decide(miss); d.Rule != DefaultRule {
		b.Fatalf("benchmark flow matched %q", d.Rule)
	}
	b.Run("100rules-miss", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			p.Decide(miss)
		}
	})
	hit := miss
	hit.Domain = "host0.example"
	b.Run("100rules-hit-first", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			p.Decide(hit)
		}
	})
}

func TestDecideICMP(t *testing.T) {
	p := mustParse(t, `
policy:
  default: deny
  rules:
    - name: web-only
      ports: [80, 443]
      action: allow
    - name: named
      domains: ["*.example.com"]
      action: allow
    - name: tcp-udp
      protocols: [tcp, udp]
      dest_cidrs: [192.0.2.0/24]
      action: allow
    - name: no-ping-corp
      protocols: [icmp]
      dest_cidrs: [10.0.0.0/8, "2001:db8::/32"]
      action: deny
    - name: ping-bump
      protocols: [icmp]
      client_cidrs: [192.168.0.0/16]
      action: bump
    - name: ping-rest
      protocols: [icmp, tls]
      action: splice
`)
	icmp := func(dst, client string) Subject {
		return Subject{Protocol: ProtoICMP, Dest: netip.AddrPortFrom(ip(dst), 0), Client: ip(client), Endpoint: "vpce-0123456789abcdef0"}
	}
	tests := []struct {
		name   string
		f      Subject
		action Action
		rule   string
	}{
		{"ports never match icmp, domains neither, other protocols neither", icmp("192.0.2.1", "192.168.1.1"), Allow, "ping-bump"},
		{"icmp deny by CIDR", icmp("10.1.2.3", "192.168.1.1"), Deny, "no-ping-corp"},
		{"icmp deny by CIDR, v6", icmp("2001:db8::7", "fd00::1"), Deny, "no-ping-corp"},
		{"icmp deny by CIDR, v4-mapped", icmp("::ffff:10.1.2.3", "192.168.1.1"), Deny, "no-ping-corp"},
		{"bump means allow for icmp", icmp("192.0.2.1", "192.168.7.7"), Allow, "ping-bump"},
		{"splice means allow for icmp", icmp("198.51.100.1", "172.16.0.1"), Allow, "ping-rest"},
		{"tls matches a rule shared with icmp", Subject{Protocol: ProtoTLS, Dest: ap("198.51.100.1:8443")}, Splice, "ping-rest"},
	}
	for _, tc := range tests {
		if got, want := withoutID(p.Decide(tc.f)), (Decision{Action: tc.action, Rule: tc.rule}); got != want {
			t.Errorf("%s: Decide(%+v) = %+v, want %+v", tc.name, tc.f, got, want)
		}
	}
	// Without an icmp rule, echo follows the default like any flow.
	deny := mustParse(t, "policy:\n  default: deny\n  rules:\n    - {name: web, protocols: [tls, http], action: allow}\n")
	if d := withoutID(deny.Decide(icmp("192.0.2.1", "10.0.0.1"))); d != (Decision{Action: Deny, Rule: DefaultRule}) {
		t.Errorf("default deny: %+v", d)
	}
	// An icmp-only rule never makes DecideEarly (TCP) sure of anything.
	only := mustParse(t, "policy:\n  rules:\n    - {name: no-ping, protocols: [icmp], action: deny}\n")
	if d, ok := only.DecideEarly(Subject{Dest: ap("192.0.2.1:443")}); ok {
		t.Errorf("DecideEarly decided a TCP flow on an icmp-only rule: %+v", d)
	}
}

// withoutID is d without the ID of the policy that made it, for tests of
// what was decided (TestPolicyID checks the ID).
func withoutID(d Decision) Decision {
	d.Policy = ""
	return d
}

// A domain with a byte no host name has is decided by no rule: denied
// outright, whatever a wildcard's suffix or the default says. An address
// literal with a zone once matched "*.allowed.example" by its zone; one
// without is a Host a client may send, and falls to the rules that do
// not look at names.
func TestDecideDomainNoHostHas(t *testing.T) {
	p := mustParse(t, `policy:
  default: allow
  rules:
    - {name: allowed, domains: ["*.allowed.example"], action: allow}
    - {name: evil, domains: ["*.evil.example"], action: deny}
    - {name: num, domains: ["*.3.4"], action: allow}
    - {name: v6, dest_cidrs: ["2001:db8::/32"], action: allow}
`)
	for _, tc := range []struct {
		domain string
		action Action
		rule   string
	}{
		{"::ffff:192.0.2.1%25.allowed.example", Deny, ""},
		{"::ffff:192.0.2.1%.allowed.example", Deny, ""},
		{"fe80::1%eth0", Deny, ""},
		{"x%y.evil.example", Deny, ""},
		{"a b.allowed.example", Deny, ""},
		{"www.ALLOWED.example.", Allow, "allowed"},
		{"x_y.evil.example", Deny, "evil"},
		{"2001:db8::1", Allow, "v6"},
		{"192.0.2.1", Allow, "v6"},
		// An IPv4 literal is no name, as an IPv6 one is not: a wildcard
		// of numeric labels does not take it.
		{"1.2.3.4", Allow, "v6"},
		{"1.2.3.4.", Allow, "v6"},
		{"01.2.3.4", Allow, "num"},
		{"9.3.4", Allow, "num"},
		// An octet over 255 makes no address: the name is matched as one
		// (netip agrees), not taken for a literal.
		{"256.2.3.4", Allow, "num"},
		// An empty first label is no subdomain: ".allowed.example" is not
		// under "*.allowed.example" on the short-list path (fewer than
		// domainMapThreshold wildcards) any more than on the map path.
		{".allowed.example", Allow, "v6"},
	} {
		d := p.Decide(Subject{Protocol: ProtoHTTP, Domain: tc.domain, Dest: netip.MustParseAddrPort("[2001:db8::1]:80")})
		if d.Action != tc.action || d.Rule != tc.rule || d.Policy != p.ID() {
			t.Errorf("%q: %v by %q (policy %q), want %v by %q", tc.domain, d.Action, d.Rule, d.Policy, tc.action, tc.rule)
		}
	}
}

// TestDecideMappedClient: a client address that comes IPv4-mapped (from a
// dual-stack socket, or a sender writing it so) meets client_cidrs written
// in IPv4: a client in a denied network cannot dodge the rule by the form
// of its address.
func TestDecideMappedClient(t *testing.T) {
	p := mustParse(t, `
policy:
  default: allow
  rules:
    - name: no-lab
      client_cidrs: ["10.9.0.0/16"]
      action: deny
`)
	for _, client := range []string{"10.9.1.2", "::ffff:10.9.1.2"} {
		for _, proto := range []string{ProtoTCP, ProtoTLS, ProtoUDP} {
			d := p.Decide(Subject{Protocol: proto, Client: ip(client), Dest: ap("192.0.2.1:22")})
			if d.Action != Deny || d.Rule != "no-lab" {
				t.Errorf("client %s over %s: %v by %q, want deny by no-lab", client, proto, d.Action, d.Rule)
			}
		}
		if d, ok := p.DecideEarly(Subject{Client: ip(client), Dest: ap("192.0.2.1:22")}); !ok || d.Rule != "no-lab" {
			t.Errorf("client %s, early: %+v %v, want deny by no-lab", client, d, ok)
		}
	}
}
