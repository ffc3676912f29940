// Package clientkey names the client that every per-client bound counts: the
// flow table's shares, fragment ownership and memory reclaim (netstack), the
// proxy's UDP, echo, waiting-TCP and DNS shares, the record buckets and the
// CloudWatch fairness (records.SourceOf), and the verification slots
// (intercept). They all call Of or Of16, so that they cannot disagree about
// who a client is.
//
// An IPv4 client is its address. An IPv6 client is its address's prefix of
// --ipv6-client-prefix bits, 80 by default: AWS prefix delegation gives an
// instance a whole /80, whose addresses would otherwise each be a client of
// its own, with a share each. The price is that hosts given addresses one by
// one share a /80 with any neighbour that picks an address in it
// (AssignIpv6Addresses takes the exact address asked for): such a neighbour
// can take their shares. An operator who does not delegate prefixes sets 128.
// docs/design.md ("Per-client shares") weighs the two.
package clientkey

import (
	"fmt"
	"net/netip"
	"sync/atomic"
)

// DefaultIPv6Bits is the default prefix an IPv6 client is counted by: the
// /80 AWS prefix delegation gives an instance.
const DefaultIPv6Bits = 80

// MinIPv6Bits and MaxIPv6Bits bound --ipv6-client-prefix: shorter than a
// /48 would lump whole sites together; 128 counts every address apart.
const (
	MinIPv6Bits = 48
	MaxIPv6Bits = 128
)

// setting is what SetIPv6Bits sets, read in one load.
type setting struct {
	bits   int
	holder string // who holds an IPv6 client's share, for the records
}

var current atomic.Pointer[setting]

func init() { current.Store(newSetting(DefaultIPv6Bits)) }

func newSetting(bits int) *setting {
	s := &setting{bits: bits, holder: "the client"}
	if bits < MaxIPv6Bits {
		s.holder = fmt.Sprintf("the client's /%d", bits)
	}
	return s
}

// CheckIPv6Bits reports whether bits is a prefix length
// --ipv6-client-prefix allows.
func CheckIPv6Bits(bits int) error {
	if bits < MinIPv6Bits || bits > MaxIPv6Bits {
		return fmt.Errorf("--ipv6-client-prefix %d: must be between %d and %d (128: every IPv6 address a client of its own)",
			bits, MinIPv6Bits, MaxIPv6Bits)
	}
	return nil
}

// SetIPv6Bits makes the clients IPv6 addresses are counted by their
// prefixes of bits bits, from the next key on. Set it before the appliance
// starts: keys taken before and after would not match.
func SetIPv6Bits(bits int) error {
	if err := CheckIPv6Bits(bits); err != nil {
		return err
	}
	current.Store(newSetting(bits))
	return nil
}

// IPv6Bits is the prefix length IPv6 clients are counted by.
func IPv6Bits() int { return current.Load().bits }

var v4InV6 = [12]byte{10: 0xff, 11: 0xff}

// Of16 is the client key of addr, in its 16-byte form (IPv4 mapped): an
// IPv4 address unchanged, an IPv6 one with the bits past the prefix
// cleared. It does not allocate: the flow table calls it per new flow.
func Of16(addr [16]byte) [16]byte {
	if [12]byte(addr[:12]) == v4InV6 {
		return addr
	}
	bits := current.Load().bits
	i := bits / 8
	if i >= len(addr) {
		return addr
	}
	if r := bits % 8; r != 0 {
		addr[i] &^= 0xff >> r
		i++
	}
	clear(addr[i:])
	return addr
}

// Of is the client key of addr: Of16 of it, IPv4 unmapped, without a zone.
// The zero Addr stays the zero Addr.
func Of(addr netip.Addr) netip.Addr {
	if !addr.IsValid() {
		return addr
	}
	return netip.AddrFrom16(Of16(addr.As16())).Unmap()
}

// Holder names who holds the share of the client at addr, for the records
// and logs that report a share refused: "the client" when the key is the
// address itself (IPv4, or IPv6 counted by /128), else "the client's /80"
// (the prefix length set), which the address may share with neighbours.
func Holder(addr netip.Addr) string {
	if addr.Unmap().Is4() {
		return "the client"
	}
	return current.Load().holder
}

// Prefix is the client key of addr as a prefix, for logs: an IPv4 address
// as a /32, an IPv6 one as its prefix of IPv6Bits bits.
func Prefix(addr netip.Addr) netip.Prefix {
	k := Of(addr)
	if k.Is4() {
		return netip.PrefixFrom(k, 32)
	}
	return netip.PrefixFrom(k, IPv6Bits())
}
