package policy

import "net/netip"

// IPv6 prefixes that carry an IPv4 address a NAT64 gateway or 6to4 relay
// turns back into IPv4: a destination in them reaches that IPv4 address,
// so 64:ff9b::a00:5 is 10.0.0.5 behind a NAT gateway's DNS64/NAT64.
var (
	nat64WellKnown = netip.MustParsePrefix("64:ff9b::/96")   // RFC 6052
	nat64Local     = netip.MustParsePrefix("64:ff9b:1::/48") // RFC 8215
	sixToFour      = netip.MustParsePrefix("2002::/16")      // RFC 3056
)

// IPv6 prefixes whose last 32 bits are an IPv4 address by definition:
// IPv4-compatible addresses (RFC 4291, deprecated) and SIIT's
// IPv4-translated ones (RFC 2765). A host or translator on the way may
// read the IPv4 address out of them.
var (
	v4Compatible = netip.MustParsePrefix("::/96")
	v4Translated = netip.MustParsePrefix("::ffff:0:0:0/96")
)

// localUseLayouts are where RFC 6052 (section 2.2) puts the IPv4 address
// in an IPv6 address for the prefix lengths a translator may use inside
// 64:ff9b:1::/48: the indexes of its four bytes. RFC 8215 carves prefixes
// of /48 or longer out of it, so 48, 56, 64 and 96: the /32 and /40
// layouts cannot occur there, and would read every such address as
// 0.1.x.x and 1.x.x.x (its own prefix), which a deny rule for 0.0.0.0/8 or
// 1.0.0.0/8 would take for all local-use NAT64, and which would keep every
// allow, bump or splice rule by IPv4 prefix from ever matching it. Byte 8
// (bits 64-71) is never used.
var localUseLayouts = [...][4]uint8{
	{6, 7, 9, 10},    // /48
	{7, 9, 10, 11},   // /56
	{9, 10, 11, 12},  // /64
	{12, 13, 14, 15}, // /96
}

// MaxEmbeddedIPv4 is the most IPv4 addresses EmbeddedIPv4 returns.
const MaxEmbeddedIPv4 = len(localUseLayouts)

// EmbeddedIPv4 returns the IPv4 addresses an IPv6 address may carry for a
// translator or relay to unwrap: the last 32 bits of a 64:ff9b::/96
// (well-known NAT64), IPv4-compatible (::/96) or IPv4-translated
// (::ffff:0:0:0/96) address; bits 16-47 of a 6to4 (2002::/16) address; and,
// for 64:ff9b:1::/48, every place RFC 6052 lets a prefix length of /48 or
// longer put the address, since an operator carves NAT64 prefixes of any
// of those lengths out of it and nothing in the address says which. IPv4-mapped addresses
// (::ffff:a.b.c.d) are not read here: callers unmap them. It returns n = 0
// for any other address, IPv4 included, and does not allocate.
//
// The appliance's refused destinations and the policy's dest_cidrs both
// judge a destination by these addresses as well as by itself.
func EmbeddedIPv4(a netip.Addr) (v4s [MaxEmbeddedIPv4]netip.Addr, n int) {
	if !a.Is6() {
		return v4s, 0
	}
	a = a.WithZone("")
	b := a.As16()
	switch {
	case nat64WellKnown.Contains(a), v4Compatible.Contains(a), v4Translated.Contains(a):
		v4s[0], n = netip.AddrFrom4([4]byte(b[12:16])), 1
	case nat64Local.Contains(a):
		for i, l := range localUseLayouts {
			v4s[i] = netip.AddrFrom4([4]byte{b[l[0]], b[l[1]], b[l[2]], b[l[3]]})
		}
		n = len(localUseLayouts)
	case sixToFour.Contains(a):
		v4s[0], n = netip.AddrFrom4([4]byte(b[2:6])), 1
	}
	return v4s, n
}
