package policy

import (
	"net/netip"
	"strings"
	"testing"
)

func TestPolicySettings(t *testing.T) {
	tests := []struct {
		doc       string
		check     DestinationCheck
		denyECH   bool
		wantError string
	}{
		{doc: "policy: {default: allow}", check: CheckDNS},
		{doc: "policy: {destination_check: off}", check: CheckOff},
		{doc: "policy: {destination_check: DNS, ech: deny}", check: CheckDNS, denyECH: true},
		{doc: "policy: {ech: allow}", check: CheckDNS},
		{doc: "policy: {destination_check: sni}", wantError: `destination_check: unknown check "sni" (want dns or off)`},
		{doc: "policy: {ech: maybe}", wantError: `ech: unknown setting "maybe" (want allow or deny)`},
	}
	for _, tc := range tests {
		p, err := Parse("p.yaml", []byte(tc.doc))
		if tc.wantError != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantError) {
				t.Errorf("%s: error %v, want %q", tc.doc, err, tc.wantError)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", tc.doc, err)
		}
		if p.DestinationCheck() != tc.check || p.DenyECH() != tc.denyECH {
			t.Errorf("%s: check %v, deny ECH %v; want %v, %v", tc.doc, p.DestinationCheck(), p.DenyECH(), tc.check, tc.denyECH)
		}
	}
}

func TestDecideByNameAndQUIC(t *testing.T) {
	p, err := Parse("p.yaml", []byte(`policy:
  default: deny
  rules:
    - {name: named, domains: [ok.example], action: allow}
    - {name: quic-bump, domains: [b.example], protocols: [quic, tls], action: bump}
    - {name: no-udp, protocols: [udp], action: deny}
    - {name: by-port, ports: [443], action: allow}
`))
	if err != nil {
		t.Fatal(err)
	}
	dest := netip.MustParseAddrPort("192.0.2.1:443")
	tests := []struct {
		subj   Subject
		action Action
		rule   string
		byName bool
	}{
		{Subject{Protocol: ProtoTLS, Domain: "ok.example", Dest: dest}, Splice, "named", true},
		{Subject{Protocol: ProtoHTTP, Domain: "OK.example.", Dest: dest}, Allow, "named", true},
		{Subject{Protocol: ProtoQUIC, Domain: "ok.example", Dest: dest}, Splice, "named", true},
		// QUIC keeps bump, so the caller can block it; TLS is bumped.
		{Subject{Protocol: ProtoQUIC, Domain: "b.example", Dest: dest}, Bump, "quic-bump", true},
		{Subject{Protocol: ProtoTLS, Domain: "b.example", Dest: dest}, Bump, "quic-bump", true},
		// A rule for all UDP still covers QUIC.
		{Subject{Protocol: ProtoQUIC, Domain: "other.example", Dest: dest}, Deny, "no-udp", false},
		{Subject{Protocol: ProtoTLS, Domain: "other.example", Dest: dest}, Splice, "by-port", false},
	}
	for _, tc := range tests {
		d := p.Decide(tc.subj)
		if d.Action != tc.action || d.Rule != tc.rule || d.ByName != tc.byName {
			t.Errorf("Decide(%+v) = %+v, want %v by %q, by name %v", tc.subj, d, tc.action, tc.rule, tc.byName)
		}
	}
}

func TestNamesMatter(t *testing.T) {
	tests := []struct {
		doc  string
		want bool
	}{
		{"policy: {default: allow}", false},
		{"policy: {default: deny, rules: [{name: a, dest_cidrs: [10.0.0.0/8], ports: [443], action: allow}]}", false},
		{"policy: {default: allow, rules: [{name: a, protocols: [udp, icmp], action: deny}]}", false},
		{"policy: {default: deny, rules: [{name: a, domains: [x.example], action: allow}]}", true},
		{"policy: {default: allow, rules: [{name: a, protocols: [tls], action: deny}]}", true},
		{"policy: {default: allow, rules: [{name: a, protocols: [quic], action: deny}]}", true},
		{"policy: {default: splice}", true},
		{"policy: {default: bump}", true},
		{"policy: {mode: audit, default: bump}", true},
		{"policy: {default: allow, ech: deny}", true},
	}
	for _, tc := range tests {
		p, err := Parse("p.yaml", []byte(tc.doc))
		if err != nil {
			t.Fatalf("%s: %v", tc.doc, err)
		}
		if got := p.NamesMatter(); got != tc.want {
			t.Errorf("%s: NamesMatter() = %v, want %v", tc.doc, got, tc.want)
		}
	}
}

// TCPNamesMatter counts a rule for tcp as well: it tells TCP that is
// neither TLS nor HTTP from them, so an unreadable ClientHello relayed as
// tcp would match it. Rules for UDP or ICMP alone do not count.
func TestTCPNamesMatter(t *testing.T) {
	tests := []struct {
		doc       string
		want, udp bool // TCPNamesMatter, NamesMatter
	}{
		{"policy: {default: allow}", false, false},
		{"policy: {default: deny, rules: [{name: a, dest_cidrs: [10.0.0.0/8], ports: [443], action: allow}]}", false, false},
		{"policy: {default: allow, rules: [{name: a, protocols: [udp, icmp], action: deny}]}", false, false},
		{"policy: {default: deny, rules: [{name: a, dest_cidrs: [10.0.0.0/8], protocols: [tcp], action: allow}]}", true, false},
		{"policy: {default: deny, rules: [{name: a, dest_cidrs: [10.0.0.0/8], protocols: [tcp], action: splice}]}", true, true},
		// A rule that denies tcp lets nothing unreadable through as tcp:
		// it counts for nothing (review r5s28 F1).
		{"policy: {default: allow, rules: [{name: a, protocols: [tcp, udp], action: deny}]}", false, false},
		{"policy: {default: allow, rules: [{name: a, dest_cidrs: [203.0.113.0/24], ports: [25], protocols: [tcp], action: deny}]}", false, false},
		{"policy: {default: allow, rules: [{name: a, protocols: [tcp, tls, http], action: deny}]}", true, true},
		{"policy: {default: deny, rules: [{name: a, domains: [x.example], action: allow}]}", true, true},
		{"policy: {default: allow, rules: [{name: a, protocols: [quic], action: deny}]}", true, true},
		{"policy: {default: allow, ech: deny}", true, true},
	}
	for _, tc := range tests {
		p, err := Parse("p.yaml", []byte(tc.doc))
		if err != nil {
			t.Fatalf("%s: %v", tc.doc, err)
		}
		if got := p.TCPNamesMatter(); got != tc.want {
			t.Errorf("%s: TCPNamesMatter() = %v, want %v", tc.doc, got, tc.want)
		}
		if got := p.NamesMatter(); got != tc.udp {
			t.Errorf("%s: NamesMatter() = %v, want %v", tc.doc, got, tc.udp)
		}
	}
}
