package policy

import (
	"net/netip"
	"slices"
	"testing"
)

func TestEmbeddedIPv4(t *testing.T) {
	tests := []struct {
		addr string
		want []string // among the addresses read; nil for none
	}{
		{"64:ff9b::a00:5", []string{"10.0.0.5"}},              // RFC 6052 well-known /96
		{"64:ff9b::10.0.0.5", []string{"10.0.0.5"}},           // the same, dotted
		{"64:ff9b:1::a00:5", []string{"10.0.0.5"}},            // a /96 carved from 64:ff9b:1::/48
		{"64:ff9b:1:a00:0:500::", []string{"10.0.0.5"}},       // /48 layout: bytes 6, 7, 9, 10
		{"64:ff9b:1:a:0:5::", []string{"10.0.0.5"}},           // /56 layout: bytes 7, 9, 10, 11
		{"64:ff9b:1:0:a:0:500:0", []string{"10.0.0.5"}},       // /64 layout: bytes 9-12
		{"64:ff9b:1:ab00:ff0a:0:500:0", []string{"10.0.0.5"}}, // /64 with byte 8 set: never read
		{"2002:a00:5::1", []string{"10.0.0.5"}},               // 6to4
		{"::a00:5", []string{"10.0.0.5"}},                     // IPv4-compatible
		{"::ffff:0:a00:5", []string{"10.0.0.5"}},              // SIIT IPv4-translated
		{"64:ff9b::a00:5%eth0", []string{"10.0.0.5"}},         // a zone changes nothing
		{"::ffff:10.0.0.5", nil},                              // IPv4-mapped: callers unmap
		{"10.0.0.5", nil},                                     // IPv4 itself
		{"64:ff9b:0:0:1::a00:5", nil},                         // outside 64:ff9b::/96
		{"2001:db8::a00:5", nil},                              // documentation, carries nothing
		{"fd00:ec2::254", nil},                                // not a translator's prefix
		{"64:ff9b:1:c633:64:700::", []string{"198.51.100.7"}}, // /48 layout
	}
	for _, tc := range tests {
		v4s, n := EmbeddedIPv4(netip.MustParseAddr(tc.addr))
		got := v4s[:n]
		if tc.want == nil && n != 0 {
			t.Errorf("EmbeddedIPv4(%s) = %v, want none", tc.addr, got)
		}
		for _, w := range tc.want {
			if !slices.Contains(got, netip.MustParseAddr(w)) {
				t.Errorf("EmbeddedIPv4(%s) = %v, want %s among them", tc.addr, got, w)
			}
		}
	}
	// In 64:ff9b:1::/48 the layouts of /48, /56, /64 and /96 are read,
	// and only they: RFC 8215's prefixes are /48 or longer, and the /32
	// and /40 layouts would read every address there as 0.1.x.x and
	// 1.x.x.x.
	for addr, want := range map[string][]string{
		"64:ff9b:1::c633:6407":    {"0.0.0.0", "0.0.0.0", "0.0.0.198", "198.51.100.7"},
		"64:ff9b:1:c633:64:700::": {"198.51.100.7", "51.100.7.0", "100.7.0.0", "0.0.0.0"},
	} {
		v4s, n := EmbeddedIPv4(netip.MustParseAddr(addr))
		var got []string
		for _, v4 := range v4s[:n] {
			got = append(got, v4.String())
		}
		if !slices.Equal(got, want) {
			t.Errorf("EmbeddedIPv4(%s) = %v, want %v", addr, got, want)
		}
	}
}

// FuzzEmbeddedIPv4: any address yields at most MaxEmbeddedIPv4 IPv4
// addresses, none unless it is IPv6 in a translator's prefix, and an IPv4
// address wrapped in each prefix (at its /96 place, or 6to4's) comes back.
func FuzzEmbeddedIPv4(f *testing.F) {
	f.Add([]byte{0, 0x64, 0xff, 0x9b, 0, 1, 0xa, 0, 0, 0, 5, 0, 0, 0, 0, 0})
	f.Add([]byte{0x20, 0x02, 10, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1})
	f.Add([]byte{10, 0, 0, 5})
	f.Add([]byte{})
	wrappers := []netip.Prefix{nat64WellKnown, v4Compatible, v4Translated, netip.MustParsePrefix("64:ff9b:1::/96")}
	f.Fuzz(func(t *testing.T, b []byte) {
		a, _ := netip.AddrFromSlice(b)
		v4s, n := EmbeddedIPv4(a)
		if n < 0 || n > MaxEmbeddedIPv4 {
			t.Fatalf("EmbeddedIPv4(%v): n = %d", a, n)
		}
		for _, v4 := range v4s[:n] {
			if !v4.Is4() {
				t.Fatalf("EmbeddedIPv4(%v) read %v", a, v4)
			}
		}
		in := a.Is6() && (nat64WellKnown.Contains(a) || nat64Local.Contains(a) || sixToFour.Contains(a) ||
			v4Compatible.Contains(a) || v4Translated.Contains(a))
		if in != (n > 0) || (a.Is6() && nat64Local.Contains(a) && n != 4) {
			t.Fatalf("EmbeddedIPv4(%v): n = %d", a, n)
		}
		if len(b) < 4 {
			return
		}
		v4 := netip.AddrFrom4([4]byte(b[:4]))
		for _, w := range wrappers {
			x := w.Addr().As16()
			copy(x[12:], b[:4])
			if got, n := EmbeddedIPv4(netip.AddrFrom16(x)); !slices.Contains(got[:n], v4) {
				t.Fatalf("%v in %v: read %v", v4, w, got[:n])
			}
		}
		x := sixToFour.Addr().As16()
		copy(x[2:6], b[:4])
		if got, n := EmbeddedIPv4(netip.AddrFrom16(x)); n != 1 || got[0] != v4 {
			t.Fatalf("%v in 6to4: read %v", v4, got[:n])
		}
	})
}

// TestDestCIDRsReadEmbeddedIPv4 plays a client that writes a denied IPv4
// destination in an IPv6 form a NAT64 gateway, 6to4 relay or SIIT
// translator unwraps, to slip past the deny that keeps clients out of the
// appliance's VPC. Every form is denied, early and in full, for TCP, TLS,
// UDP and ICMP. An allow rule for the prefix lets the forms with one
// reading through, as the translator delivers them there, but not those of
// 64:ff9b:1::/48, whose other RFC 6052 layouts read other addresses.
func TestDestCIDRsReadEmbeddedIPv4(t *testing.T) {
	deny := mustParse(t, `
policy:
  default: allow
  rules:
    - name: not-the-appliance-vpc
      dest_cidrs: ["10.0.0.0/16"]
      action: deny
`)
	allow := mustParse(t, `
policy:
  default: deny
  rules:
    - name: corp
      dest_cidrs: ["10.0.0.0/16"]
      action: allow
    - name: quarantine
      client_cidrs: ["10.0.0.0/16"]
      action: allow
`)
	forms := []struct {
		addr      string
		ambiguous bool // several readings: an allow rule does not match
	}{
		{"10.0.0.5", false},
		{"::ffff:10.0.0.5", false},
		{"64:ff9b::a00:5", false},       // RFC 6052 well-known prefix
		{"2002:a00:5::1", false},        // 6to4
		{"::a00:5", false},              // IPv4-compatible
		{"::ffff:0:a00:5", false},       // SIIT IPv4-translated
		{"64:ff9b:1::a00:5", true},      // a /96 of RFC 8215's local-use prefix
		{"64:ff9b:1:a00:0:500::", true}, // its /48 layout
		{"64:ff9b:1:a:0:5::", true},     // /56
		{"64:ff9b:1:0:a:0:500:0", true}, // /64
	}
	for _, fm := range forms {
		d := fm.addr
		for _, proto := range []string{ProtoTCP, ProtoTLS, ProtoUDP, ProtoICMP} {
			port := uint16(22)
			if proto == ProtoICMP {
				port = 0
			}
			s := Subject{Protocol: proto, Dest: netip.AddrPortFrom(ip(d), port), Client: ip("192.168.1.1")}
			if got := deny.Decide(s); got.Action != Deny || got.Rule != "not-the-appliance-vpc" {
				t.Errorf("deny rule, %s %s: Decide = %+v", proto, d, got)
			}
			want := Decision{Action: Allow, Rule: "corp"}
			if proto == ProtoTLS {
				want.Action = Splice
			}
			if fm.ambiguous {
				want = Decision{Action: Deny, Rule: DefaultRule}
			}
			if got := withoutID(allow.Decide(s)); got != want {
				t.Errorf("allow rule, %s %s: Decide = %+v, want %+v", proto, d, got, want)
			}
		}
		s := Subject{Dest: netip.AddrPortFrom(ip(d), 22), Client: ip("192.168.1.1")}
		if got, ok := deny.DecideEarly(s); !ok || got.Action != Deny || got.Rule != "not-the-appliance-vpc" {
			t.Errorf("deny rule, %s: DecideEarly = %+v, %v", d, got, ok)
		}
		if got, ok := allow.DecideEarly(s); ok != fm.ambiguous {
			t.Errorf("allow rule, %s: DecideEarly = %+v, %v", d, got, ok)
		}
	}
	// Addresses that carry another IPv4 address, or none, fall through.
	for _, d := range []string{"64:ff9b::a01:5", "64:ff9b::c633:6407", "2002:a01:5::1", "2001:db8::a00:5", "64:ff9b:0:0:1::a00:5"} {
		s := Subject{Protocol: ProtoTCP, Dest: netip.AddrPortFrom(ip(d), 22), Client: ip("192.168.1.1")}
		if got := deny.Decide(s); got.Rule != DefaultRule {
			t.Errorf("deny rule, %s: Decide = %+v, want the default", d, got)
		}
		if got, ok := deny.DecideEarly(s); ok {
			t.Errorf("deny rule, %s: DecideEarly = %+v, want no early answer", d, got)
		}
	}
	// A client is its own address: client_cidrs do not unwrap.
	s := Subject{Protocol: ProtoTCP, Dest: ap("192.0.2.1:22"), Client: ip("64:ff9b::a00:5")}
	if got := allow.Decide(s); got.Rule != DefaultRule {
		t.Errorf("client 64:ff9b::a00:5 matched client_cidrs 10.0.0.0/16: %+v", got)
	}
}

// TestDestCIDRsEveryReading: 64:ff9b:1::c633:6407 is 198.51.100.7 to a /96
// translator, but its /48 layout reads 0.0.0.0 and its /64 one 0.0.0.198.
// An allow rule for 0.0.0.0/8 must not let it through on those readings;
// a deny for 0.0.0.0/8 catches it (failing closed); a rule whose prefixes
// hold every reading lets it through. The /32 and /40 layouts, which a
// local-use prefix (/48 or longer) cannot have, are not read: a deny for
// 1.0.0.0/8 or 0.1.0.0/16 does not catch every local-use NAT64 address,
// and a rule need not name 1.0.0.0/8 to match one.
func TestDestCIDRsEveryReading(t *testing.T) {
	s := Subject{Protocol: ProtoTCP, Dest: ap("[64:ff9b:1::c633:6407]:443")}
	for _, tc := range []struct{ cidrs, action, want string }{
		{`["0.0.0.0/8"]`, "allow", DefaultRule},
		{`["0.0.0.0/8"]`, "bump", DefaultRule},
		{`["198.51.100.0/24"]`, "allow", DefaultRule},
		{`["0.0.0.0/8"]`, "deny", "r"},
		{`["198.51.100.0/24"]`, "deny", "r"},
		{`["1.0.0.0/8"]`, "deny", DefaultRule},
		{`["0.1.0.0/16"]`, "deny", DefaultRule},
		{`["0.0.0.0/0"]`, "allow", "r"},
		{`["0.0.0.0/8", "198.51.100.7"]`, "splice", "r"},
		{`["0.0.0.0/8", "198.51.100.7"]`, "bump", "r"},
		{`["64:ff9b:1::/96"]`, "allow", "r"},
		{`["64:ff9b:1::/48"]`, "bump", "r"},
	} {
		p := mustParse(t, "policy:\n  default: "+map[bool]string{true: "allow", false: "deny"}[tc.action == "deny"]+
			"\n  rules:\n    - {name: r, dest_cidrs: "+tc.cidrs+", action: "+tc.action+"}\n")
		if got := p.Decide(s); got.Rule != tc.want {
			t.Errorf("%s %s: Decide = %+v, want rule %s", tc.action, tc.cidrs, got, tc.want)
		}
	}
}

// TestDestCIDRsLocalUseBumped: a bump rule whose prefixes hold every
// reading a local-use NAT64 address can have is the one that decides it,
// not a later splice for everything: with the /32 layout read (0.1.x.x
// for every such address) the bump never matched, and the flow went
// through uninspected.
func TestDestCIDRsLocalUseBumped(t *testing.T) {
	p := mustParse(t, `
policy:
  default: deny
  rules:
    - name: inspect
      dest_cidrs: ["0.0.0.0/8", "198.51.100.0/24"]
      action: bump
    - name: rest
      dest_cidrs: ["0.0.0.0/0"]
      action: splice
`)
	s := Subject{Protocol: ProtoTLS, Dest: ap("[64:ff9b:1::c633:6407]:443")}
	if got := p.Decide(s); got.Rule != "inspect" || got.Action != Bump {
		t.Errorf("Decide = %+v, want bumped by rule inspect", got)
	}
}
