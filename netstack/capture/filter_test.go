package capture

import (
	"net/netip"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// addr16 is an address as a netstack.Packet holds it.
func addr16(s string) [16]byte { return netip.MustParseAddr(s).As16() }

// TestFilterMappedAddressesMatchIPv4: an IPv4 address or CIDR written in
// its IPv4-mapped IPv6 form selects the IPv4 packets it names, as the
// plain form does: IPv4 packets are matched in their 4-byte form, and an
// IPv6 packet with a mapped address never reaches the stack, so a mapped
// prefix kept as IPv6 would silently select nothing.
func TestFilterMappedAddressesMatchIPv4(t *testing.T) {
	pin := netstack.Packet{Proto: 6, Src: addr16("10.1.2.3"), Dst: addr16("192.0.2.7"), SrcPort: 40000, DstPort: 443}
	pout := netstack.Packet{Proto: 6, Src: addr16("192.0.2.7"), Dst: addr16("10.1.2.3"), SrcPort: 443, DstPort: 40000}
	for _, tc := range []struct {
		filter string
		want   bool
	}{
		{"client_cidrs=::ffff:10.1.2.3", true},
		{"client_cidrs=::ffff:10.1.0.0/112", true},
		{"client_cidrs=::ffff:10.1.2.3/128", true},
		{"client_cidrs=::ffff:0.0.0.0/96", true},
		{"client_cidrs=::ffff:10.2.0.0/112", false},
		{"dest_cidrs=::ffff:192.0.2.0/120", true},
		{"dest_cidrs=::ffff:198.51.100.0/120", false},
	} {
		f, err := ParseFilter(tc.filter)
		if err != nil {
			t.Errorf("ParseFilter(%q): %v", tc.filter, err)
			continue
		}
		if got := f.match(epA, false, &pin); got != tc.want {
			t.Errorf("%q on 10.1.2.3's packet to 192.0.2.7: %v, want %v", tc.filter, got, tc.want)
		}
		if got := f.match(epA, true, &pout); got != tc.want {
			t.Errorf("%q on the reply: %v, want %v", tc.filter, got, tc.want)
		}
	}
}

// TestFilterFragmentsEchoAndICMPv6: docs/ids.md's table of --pcap-filter
// keys. A later IP fragment carries no ports and always matches a ports
// condition: otherwise a client that fragments its datagrams on purpose
// keeps the later fragments out of a ports-filtered capture, and the IDS
// cannot reassemble them. ICMP echo has an identifier, not ports, and
// matches no ports condition; protocols=icmp covers ICMPv6 (echo tunnels
// over IPv6 included).
func TestFilterFragmentsEchoAndICMPv6(t *testing.T) {
	ports, err := ParseFilter("client_cidrs=10.1.0.0/16;ports=443")
	if err != nil {
		t.Fatal(err)
	}
	frag := netstack.Packet{Proto: 6, Fragment: true, Src: addr16("10.1.2.3"), Dst: addr16("192.0.2.7")}
	if !ports.match(epA, false, &frag) {
		t.Error("a later fragment of the client's does not match ports=443: the files lose it")
	}
	fragOut := netstack.Packet{Proto: 6, Fragment: true, Src: addr16("192.0.2.7"), Dst: addr16("10.1.2.3")}
	if !ports.match(epA, true, &fragOut) {
		t.Error("a later fragment of a reply does not match ports=443")
	}
	echo := netstack.Packet{Proto: 1, Echo: true, Src: addr16("10.1.2.3"), Dst: addr16("192.0.2.7"), SrcPort: 443, DstPort: 443}
	if ports.match(epA, false, &echo) {
		t.Error("an echo request whose identifier is 443 matches ports=443")
	}
	icmp, err := ParseFilter("protocols=icmp")
	if err != nil {
		t.Fatal(err)
	}
	echo6 := netstack.Packet{IPv6: true, Proto: 58, Echo: true, Src: addr16("2001:db8::5"), Dst: addr16("2001:db8:1::7")}
	if !icmp.match(epA, false, &echo6) {
		t.Error("protocols=icmp does not match ICMPv6")
	}
}
