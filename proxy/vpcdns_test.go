package proxy

import (
	"net/netip"
	"strings"
	"testing"
)

// TestForbiddenVPCResolver: with the appliance's VPC known, base + 2 of
// each of its IPv4 CIDR blocks (the Amazon DNS server at the primary's,
// reserved by AWS in the others) is refused, for every protocol and in
// every spelling forbidden unwraps, as its twins fd00:ec2::253 and
// 169.254.169.253 are; the addresses around it are not.
func TestForbiddenVPCResolver(t *testing.T) {
	p := New(Config{VPCCIDRs: []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/16"),   // primary
		netip.MustParsePrefix("100.64.0.0/20"), // secondary
		netip.MustParsePrefix("::ffff:172.16.0.0/124"),
		netip.MustParsePrefix("2600:1f18:abc:de00::/56"),
	}})
	defer p.Close()
	const why = "Amazon DNS server of the appliance's VPC"
	for _, tc := range []struct{ addr, want string }{
		{"10.0.0.2", why},
		{"::ffff:10.0.0.2", why},
		{"100.64.0.2", why},
		{"172.16.0.2", why},     // its block was IPv4-mapped
		{"64:ff9b::a00:2", why}, // NAT64
		{"64:ff9b::a00:2", "embedded in 64:ff9b::a00:2"},
		{"2002:a00:2::1", why}, // 6to4
		{"fd00:ec2::253", "AWS services"},
		{"169.254.169.253", "link-local"},
		{"10.0.0.1", ""},
		{"10.0.0.3", ""},
		{"10.0.1.2", ""}, // a subnet's base + 2, not the VPC block's
		{"100.64.16.2", ""},
		{"2600:1f18:abc:de00::2", ""},
	} {
		got := p.forbidden(netip.MustParseAddr(tc.addr))
		if tc.want == "" && got != "" || tc.want != "" && !strings.Contains(got, tc.want) {
			t.Errorf("forbidden(%s) = %q, want %q", tc.addr, got, tc.want)
		}
	}

	// Unknown VPC: nothing more is refused.
	q := New(Config{})
	defer q.Close()
	if got := q.forbidden(netip.MustParseAddr("10.0.0.2")); got != "" {
		t.Errorf("forbidden(10.0.0.2) with no VPC known = %q", got)
	}
}
