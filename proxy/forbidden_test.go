package proxy

import (
	"net/netip"
	"strings"
	"testing"
)

// TestForbiddenDestinations plays a client that looks for another spelling
// of an address the appliance refuses: its own AWS services over IPv6, and
// IPv4 addresses wrapped in NAT64 or 6to4 addresses, which a NAT gateway or
// relay would unwrap.
func TestForbiddenDestinations(t *testing.T) {
	p := New(Config{})
	defer p.Close()
	tests := []struct {
		addr string
		want string // a substring of the reason; "" for allowed
	}{
		{"169.254.169.254", "link-local"},
		{"::ffff:169.254.169.254", "link-local"},
		{"fd00:ec2::254", "AWS services"},
		{"fd00:ec2::253", "AWS services"},
		{"fd00:ec2::123", "AWS services"},
		{"64:ff9b::a9fe:a9fe", "embedded in 64:ff9b::a9fe:a9fe"},
		{"64:ff9b::7f00:1", "loopback"},
		{"64:ff9b:1::a9fe:a9fe", "link-local"},    // a /96 carved from the /48
		{"64:ff9b:1:a9fe:0:a9fe::", "link-local"}, // RFC 6052's /48 layout
		// RFC 6052's other layouts for prefixes carved from 64:ff9b:1::/48.
		{"64:ff9b:1:a9:fe:a9fe::", "link-local"},        // /56
		{"64:ff9b:1:0:a9:fea9:fe00:0", "link-local"},    // /64
		{"64:ff9b:1:ab00:a9:fea9:fe00:0", "link-local"}, // /64 with a /56's subnet bits
		{"64:ff9b:1:ab00:7f:1:100:0", "loopback"},       // /64: 127.0.1.1
		// IPv4-compatible (::/96) and SIIT IPv4-translated (::ffff:0:0:0/96).
		{"::a9fe:a9fe", "IPv4-compatible or IPv4-translated"},
		{"::127.0.0.1", "IPv4-compatible or IPv4-translated"},
		{"::c633:6407", "IPv4-compatible or IPv4-translated"},
		{"::ffff:0:a9fe:a9fe", "IPv4-compatible or IPv4-translated"},
		{"::ffff:0:c633:6407", "IPv4-compatible or IPv4-translated"},
		{"64:ff9b:1::c633:6407", ""},        // a /96 of 198.51.100.7: the other layouts read 0.x
		{"2002:a9fe:a9fe::1", "link-local"}, // 6to4
		{"2002:7f00:1::1", "loopback"},      // 6to4
		// The one reading of a well-known NAT64 or a 6to4 address: 0.0.0.0 is
		// no destination, wrapped or not (only the local-use /48's layouts
		// read it out of ordinary addresses, and are spared it).
		{"64:ff9b::", "not a unicast address"},
		{"2002::1", "not a unicast address"},
		{"64:ff9b::c633:6407", ""}, // NAT64 of 198.51.100.7: fine
		{"2001:db8::1", ""},
		{"198.51.100.7", ""},
	}
	for _, tc := range tests {
		got := p.forbidden(netip.MustParseAddr(tc.addr))
		if tc.want == "" && got != "" || tc.want != "" && !strings.Contains(got, tc.want) {
			t.Errorf("forbidden(%s) = %q, want %q", tc.addr, got, tc.want)
		}
	}
}
