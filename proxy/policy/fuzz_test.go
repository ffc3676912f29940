package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// FuzzParse: arbitrary YAML never panics; every error is a *ConfigError
// naming the file; an accepted policy decides without panicking.
func FuzzParse(f *testing.F) {
	f.Add([]byte(testConfig))
	f.Add([]byte("policy: {}"))
	f.Add([]byte("a: &a [1, *a]\npolicy: {rules: *a}"))
	f.Add([]byte("policy:\n  rules:\n    - {name: x, ports: [1, \"2-3\", 0x10], action: bump, allow_unverified_upstream: true}\n"))
	f.Add([]byte("policy:\n  mode: audit\n  rules:\n    - <<: {action: deny}\n      name: y\n"))
	f.Add([]byte(refPolicyYAML(f)))
	flows := []Subject{
		{Protocol: "tls", Domain: "a.evil.example", Dest: ap("10.0.0.1:443"), Client: ip("192.168.1.1"), Endpoint: "vpce-0123456789abcdef0"},
		{Protocol: "udp", Dest: ap("[2001:db8::1]:53")},
		{Protocol: "icmp", Dest: ap("203.0.113.9:0"), Client: ip("10.1.2.3")},
		{},
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse("fuzz.yaml", data)
		if err != nil {
			var ce *ConfigError
			if !errors.As(err, &ce) || ce.File != "fuzz.yaml" || !strings.HasPrefix(err.Error(), "fuzz.yaml") {
				t.Fatalf("error not a ConfigError on the file: %v", err)
			}
			return
		}
		for _, fl := range flows {
			d := p.Decide(fl)
			if d.Rule == "" || (d.AllowUnverifiedUpstream && d.Action != Bump) {
				t.Fatalf("Decide(%+v) = %+v", fl, d)
			}
			if p.Mode() == Audit && d.Action == Bump {
				t.Fatalf("audit mode bumped: %+v", d)
			}
		}
	})
}

// refRule mirrors the YAML schema; refDecide below evaluates it the
// straightforward way, as the spec reads, to check Decide against.
type refRule struct {
	Name       string   `yaml:"name"`
	Domains    []string `yaml:"domains,omitempty"`
	DestCIDRs  []string `yaml:"dest_cidrs,omitempty"`
	Ports      []any    `yaml:"ports,omitempty"`
	Protocols  []string `yaml:"protocols,omitempty"`
	ClientCIDR []string `yaml:"client_cidrs,omitempty"`
	Endpoints  []string `yaml:"endpoints,omitempty"`
	Action     string   `yaml:"action"`
	Unverified bool     `yaml:"allow_unverified_upstream,omitempty"`
}

type refPolicy struct {
	Mode    string    `yaml:"mode"`
	Default string    `yaml:"default"`
	Rules   []refRule `yaml:"rules"`
}

func refRules() refPolicy {
	var many []string
	for i := range 12 { // enough for the map path
		many = append(many, fmt.Sprintf("h%d.example", i), fmt.Sprintf("*.w%d.Example", i))
	}
	return refPolicy{Mode: "enforce", Default: "splice", Rules: []refRule{
		{Name: "small-domains", Domains: []string{"bad.example", "*.evil.example", "Dot.Example."}, Action: "deny"},
		{Name: "many-domains", Domains: many, Protocols: []string{"tls"}, Action: "bump", Unverified: true},
		{Name: "quic-only", Domains: []string{"q.example"}, Protocols: []string{"quic"}, Action: "bump"},
		{Name: "corp", DestCIDRs: []string{"10.0.0.0/8", "2001:db8::/32", "192.0.2.1"}, Ports: []any{443, "8000-8100"}, Action: "bump"},
		{Name: "clients", ClientCIDR: []string{"192.168.0.0/16", "fd00::/8"}, Protocols: []string{"http", "udp"}, Action: "deny"},
		{Name: "ep", Endpoints: []string{"vpce-0123456789abcdef0"}, Ports: []any{"1-1024"}, Action: "allow"},
		{Name: "low-half", DestCIDRs: []string{"0.0.0.0/1"}, Ports: []any{"9000-9100"}, Action: "allow"}, // every RFC 6052 reading must be in it
		{Name: "tcp-high", Protocols: []string{"tcp"}, Ports: []any{"30000-65535"}, Action: "deny"},
		{Name: "no-ping", Protocols: []string{"icmp"}, DestCIDRs: []string{"203.0.113.0/24", "2001:db8:1::/48"}, Action: "deny"},
		{Name: "ping-rest", Protocols: []string{"udp", "icmp"}, ClientCIDR: []string{"10.0.0.0/8"}, Action: "bump"},
	}}
}

func refPolicyYAML(tb testing.TB) string {
	out, err := yaml.Marshal(map[string]refPolicy{"policy": refRules()})
	if err != nil {
		tb.Fatal(err)
	}
	return string(out)
}

func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

func refMatch(r refRule, f Subject) bool {
	if r.Domains != nil {
		d := strings.TrimSuffix(asciiLower(f.Domain), ".")
		ok := false
		for _, pat := range r.Domains {
			pat = strings.TrimSuffix(asciiLower(pat), ".")
			if w, wild := strings.CutPrefix(pat, "*."); wild {
				ok = ok || (len(d) > len(w)+1 && strings.HasSuffix(d, "."+w))
			} else {
				ok = ok || (d != "" && d == pat)
			}
		}
		if !ok {
			return false
		}
	}
	inAny := func(cidrs []string, a netip.Addr) bool {
		for _, c := range cidrs {
			if !strings.Contains(c, "/") {
				c += "/32"
			}
			if netip.MustParsePrefix(c).Contains(a.Unmap().WithZone("")) {
				return true
			}
		}
		return false
	}
	// A destination matches through the IPv4 addresses a translator
	// would unwrap from it as well, a deny through any of them, other
	// rules through all of them; a client does not.
	inDest := func(cidrs []string, a netip.Addr) bool {
		if inAny(cidrs, a) {
			return true
		}
		v4s, n := EmbeddedIPv4(a.Unmap())
		in := 0
		for _, v4 := range v4s[:n] {
			if inAny(cidrs, v4) {
				in++
			}
		}
		if r.Action == "deny" {
			return in > 0
		}
		return n > 0 && in == n
	}
	if r.DestCIDRs != nil && !inDest(r.DestCIDRs, f.Dest.Addr()) {
		return false
	}
	if r.ClientCIDR != nil && !inAny(r.ClientCIDR, f.Client) {
		return false
	}
	if r.Ports != nil {
		ok := false
		for _, p := range r.Ports {
			lo, hi := 0, 0
			switch v := p.(type) {
			case int:
				lo, hi = v, v
			case string:
				fmt.Sscanf(v, "%d-%d", &lo, &hi)
			}
			ok = ok || (int(f.Dest.Port()) >= lo && int(f.Dest.Port()) <= hi)
		}
		if !ok {
			return false
		}
	}
	if r.Protocols != nil && !slices.Contains(r.Protocols, f.Protocol) &&
		!(f.Protocol == "quic" && slices.Contains(r.Protocols, "udp")) { // QUIC is UDP too
		return false
	}
	if r.Endpoints != nil && !slices.Contains(r.Endpoints, asciiLower(f.Endpoint)) {
		return false
	}
	return true
}

func refDecide(p refPolicy, f Subject) Decision {
	// A name with a byte no host name has is decided by no rule: denied;
	// an address (IPv4 or IPv6, no zone) is no name at all.
	d := strings.TrimSuffix(f.Domain, ".")
	if a, err := netip.ParseAddr(d); err == nil && a.Zone() == "" {
		f.Domain = ""
	} else if strings.IndexFunc(d, func(c rune) bool {
		return !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.')
	}) >= 0 {
		return Decision{Action: Deny}
	}
	name, action, unverified, byName := DefaultRule, p.Default, false, false
	for _, r := range p.Rules {
		if refMatch(r, f) {
			name, action, unverified, byName = r.Name, r.Action, r.Unverified, r.Domains != nil
			break
		}
	}
	if p.Mode == "audit" && action == "bump" {
		action = "splice"
	}
	named := f.Protocol == "tls" || f.Protocol == "quic"
	if named && action == "allow" {
		action = "splice"
	}
	if !named && (action == "bump" || action == "splice") {
		action = "allow"
	}
	a, _ := parseAction(action)
	return Decision{Action: a, Rule: name, AllowUnverifiedUpstream: unverified && a == Bump && f.Protocol == "tls", ByName: byName}
}

func addrFrom(b []byte) netip.Addr {
	a, _ := netip.AddrFromSlice(b) // invalid unless 4 or 16 bytes
	return a
}

// FuzzDecide compares Decide with the reference evaluation above on
// arbitrary flows, in both modes.
func FuzzDecide(f *testing.F) {
	rp := refRules()
	enforce := mustParse(f, refPolicyYAML(f))
	rp.Mode = "audit"
	out, err := yaml.Marshal(map[string]refPolicy{"policy": rp})
	if err != nil {
		f.Fatal(err)
	}
	audit := mustParse(f, string(out))
	protos := []string{"tls", "http", "tcp", "udp", "quic", "icmp", "", "TLS", "ICMP", "sctp"}

	f.Add(uint8(0), "x.evil.example", []byte{10, 1, 2, 3}, uint16(443), []byte{192, 168, 1, 1}, "vpce-0123456789abcdef0")
	f.Add(uint8(0), "A.W7.example.", []byte{192, 0, 2, 1}, uint16(8080), []byte{}, "")
	f.Add(uint8(1), "H3.EXAMPLE", netip.MustParseAddr("2001:db8::1").AsSlice(), uint16(8100), netip.MustParseAddr("fd00::2").AsSlice(), "")
	f.Add(uint8(2), "evil.example", netip.MustParseAddr("::ffff:10.0.0.1").AsSlice(), uint16(40000), []byte{1, 2, 3, 4}, "VPCE-0123456789ABCDEF0")
	f.Add(uint8(3), "dot.example", []byte{192, 0, 2, 2}, uint16(53), netip.MustParseAddr("::ffff:192.168.3.4").AsSlice(), "vpce-0123456789abcdef0")
	f.Add(uint8(0), " ", []byte("0"), uint16(40016), []byte("0"), "0")
	f.Add(uint8(0), "::ffff:192.0.2.1%x.evil.example", []byte{10, 1, 2, 3}, uint16(443), []byte{}, "")
	f.Add(uint8(1), "1.2.3.4", []byte{10, 1, 2, 3}, uint16(80), []byte{}, "")
	f.Add(uint8(1), "01.2.3.4", []byte{10, 1, 2, 3}, uint16(80), []byte{}, "")
	f.Add(uint8(4), "", []byte{203, 0, 113, 9}, uint16(0), []byte{10, 1, 2, 3}, "")
	f.Add(uint8(4), "", []byte{192, 0, 2, 9}, uint16(0), []byte{10, 1, 2, 3}, "")
	f.Add(uint8(7), "", netip.MustParseAddr("2001:db8:1::1").AsSlice(), uint16(0), []byte{}, "")
	f.Add(uint8(2), "", netip.MustParseAddr("64:ff9b::a00:5").AsSlice(), uint16(443), []byte{}, "")
	f.Add(uint8(4), "", netip.MustParseAddr("64:ff9b:1:cb00:71:900::").AsSlice(), uint16(0), []byte{}, "")
	f.Add(uint8(2), "", netip.MustParseAddr("64:ff9b:1:7f00:0:100::").AsSlice(), uint16(9000), []byte{}, "")
	f.Add(uint8(2), "", netip.MustParseAddr("64:ff9b:1:ff00:0:100::").AsSlice(), uint16(9000), []byte{}, "")
	f.Add(uint8(3), "", netip.MustParseAddr("2002:a00:5::1").AsSlice(), uint16(8080), netip.MustParseAddr("64:ff9b::c0a8:101").AsSlice(), "")
	f.Fuzz(func(t *testing.T, proto uint8, domain string, dest []byte, port uint16, client []byte, endpoint string) {
		fl := Subject{
			Protocol: protos[int(proto)%len(protos)],
			Domain:   domain,
			Dest:     netip.AddrPortFrom(addrFrom(dest), port),
			Client:   addrFrom(client),
			Endpoint: endpoint,
		}
		for _, c := range []struct {
			p    *Policy
			mode string
		}{{enforce, "enforce"}, {audit, "audit"}} {
			rp.Mode = c.mode
			if got, want := withoutID(c.p.Decide(fl)), refDecide(rp, fl); got != want {
				t.Fatalf("%s: Decide(%+v) = %+v, reference %+v", c.mode, fl, got, want)
			}
		}
	})
}
