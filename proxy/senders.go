package proxy

import (
	"net/netip"
	"slices"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// forbiddenSenderPort says why a flow to dst must not be relayed because
// it would reach the GENEVE or admin port of a host GENEVE is accepted
// from (Config.SenderPrefixes), or "". The appliances behind one GWLB take
// GENEVE from those prefixes, and the GWLB's nodes from its registered
// targets: UDP to the GENEVE port from this appliance's address would let
// a client forge any endpoint, client and flow at a sibling appliance or
// the GWLB, and take over live flows' replies. The admin port is a
// sibling's /stats, /metrics and health check. A destination in those
// prefixes is otherwise a destination like any other (deploy.md item 9).
func (p *Proxy) forbiddenSenderPort(udp bool, dst netip.AddrPort) string {
	if len(p.cfg.SenderPrefixes) == 0 {
		return ""
	}
	var what string
	switch port := dst.Port(); {
	case udp && slices.Contains(p.cfg.GenevePorts, port):
		what = "the GENEVE port"
	case !udp && port != 0 && port == p.cfg.AdminPort:
		what = "the admin port"
	default:
		return ""
	}
	a := dst.Addr().Unmap().WithZone("")
	if p.inSenders(a) {
		return "destination is " + what + " of a host GENEVE is accepted from (--gwlb-cidrs): a sibling appliance or the GWLB"
	}
	// The IPv4 address a NAT64 gateway or 6to4 relay would deliver to, as
	// forbidden reads it.
	v4s, n := policy.EmbeddedIPv4(a)
	for _, v4 := range v4s[:n] {
		if !v4.IsUnspecified() && p.inSenders(v4) {
			return "destination is " + what + " of a host GENEVE is accepted from (--gwlb-cidrs), embedded in " + a.String()
		}
	}
	return ""
}

func (p *Proxy) inSenders(a netip.Addr) bool {
	for _, pfx := range p.cfg.SenderPrefixes {
		if pfx.Contains(a) {
			return true
		}
	}
	return false
}
