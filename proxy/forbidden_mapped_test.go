package proxy

// Cases a mutation review found no test held: each fails with its check
// broken (a stack drop shown to the tap, a parse check, a forbidden spelling).

import (
	"net"
	"net/netip"
	"testing"
)

// IPv4-mapped spellings of the broadcast and
// of the host's own IPv4 address are refused as the bare ones are.
func TestForbiddenMappedSpellings(t *testing.T) {
	p := New(Config{})
	defer p.Close()
	if p.forbidden(netip.MustParseAddr("::ffff:255.255.255.255")) == "" {
		t.Error("::ffff:255.255.255.255 allowed")
	}
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if pf, err := netip.ParsePrefix(a.String()); err == nil && pf.Addr().Is4() && !pf.Addr().IsLoopback() && !pf.Addr().IsLinkLocalUnicast() {
			m := netip.AddrFrom16(pf.Addr().As16())
			if p.forbidden(m) == "" {
				t.Errorf("the host's own address %s allowed", m)
			}
		}
	}
}

// an IPv4-mapped spelling of a GENEVE sender's
// address is judged as the bare one: its GENEVE port is refused.
func TestSenderPortMappedSpelling(t *testing.T) {
	p := New(Config{SenderPrefixes: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}, GenevePorts: []uint16{6081}, AdminPort: 9000})
	defer p.Close()
	for _, tc := range []struct {
		udp bool
		ap  string
	}{{true, "[::ffff:10.0.0.5]:6081"}, {false, "[::ffff:10.0.0.5]:9000"}} {
		if p.forbiddenSenderPort(tc.udp, netip.MustParseAddrPort(tc.ap)) == "" {
			t.Errorf("%s (udp %v) allowed", tc.ap, tc.udp)
		}
	}
}
