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
