package proxy

import (
	"net/netip"
	"slices"
)

// vpcResolverAddrs returns base + 2 of each IPv4 block in cidrs (the
// appliance VPC's CIDR blocks, Config.VPCCIDRs): at the primary block's
// the Amazon DNS server answers the appliance, and AWS reserves the same
// address in every other block. Blocks too small to hold it (AWS allows
// none) and IPv6 blocks give none.
func vpcResolverAddrs(cidrs []netip.Prefix) []netip.Addr {
	var addrs []netip.Addr
	for _, c := range cidrs {
		if c.Addr().Is4In6() { // ::ffff:10.0.0.0/112 is 10.0.0.0/16
			c = netip.PrefixFrom(c.Addr().Unmap(), c.Bits()-96)
		}
		c = c.Masked()
		if !c.Addr().Is4() || c.Bits() > 30 {
			continue
		}
		if a := c.Addr().Next().Next(); !slices.Contains(addrs, a) {
			addrs = append(addrs, a)
		}
	}
	return addrs
}

// isVPCResolver reports whether a (unmapped) is base + 2 of one of the
// VPC's IPv4 blocks. A VPC has a few blocks (5 by default, 50 at most):
// a scan is as quick as a map.
func (p *Proxy) isVPCResolver(a netip.Addr) bool {
	return slices.Contains(p.vpcResolvers, a)
}
