package policy

// Address prefix lists indexed for lookup: a rule's client_cidrs and
// dest_cidrs are asked about on every decision, and an IP blocklist holds
// 10^5 of them, so a scan of the list would cost each new flow a
// millisecond, and a client chooses how many flows it opens.

import (
	"encoding/binary"
	"net/netip"
	"slices"
)

// prefixSet is the union of a list of prefixes. It holds an address when
// Prefix.Contains of one of them would: an IPv4 prefix holds only IPv4
// addresses and an IPv6 one only IPv6 ones (IPv4-mapped ones included:
// the parser turns mapped prefixes of /96 or longer into IPv4 ones, and
// Decide unmaps addresses), and none holds an address with a zone.
//
// It keeps the ranges the prefixes cover, sorted, disjoint and none
// adjacent to the next, so that one binary search finds the only range
// that can hold an address. For one or two prefixes that costs a few ns
// more than Prefix.Contains on each, and less from four on
// (BenchmarkPrefixSetSmall): too little to keep a scan for short lists.
type prefixSet struct {
	v4, v6 []addrRange
}

// u128 is an address as a number, an IPv4 one in lo's low 32 bits.
type u128 struct{ hi, lo uint64 }

func (a u128) less(b u128) bool { return a.hi < b.hi || a.hi == b.hi && a.lo < b.lo }

// addrRange is the addresses from first to last, both included.
type addrRange struct{ first, last u128 }

func addrKey(a netip.Addr) u128 {
	if a.Is4() {
		b := a.As4()
		return u128{lo: uint64(binary.BigEndian.Uint32(b[:]))}
	}
	b := a.As16()
	return u128{hi: binary.BigEndian.Uint64(b[:8]), lo: binary.BigEndian.Uint64(b[8:])}
}

// prefixRange is the addresses of the valid prefix p, host bits ignored
// as Prefix.Contains ignores them.
func prefixRange(p netip.Prefix) addrRange {
	first := addrKey(p.Masked().Addr())
	var host u128 // the host bits all set
	switch n := p.Addr().BitLen() - p.Bits(); {
	case n >= 64:
		// A shift by 64 gives 0 in Go: n = 128 (::/0) sets all of hi.
		host = u128{hi: 1<<(n-64) - 1, lo: ^uint64(0)}
	default:
		host.lo = 1<<n - 1
	}
	return addrRange{first, u128{first.hi | host.hi, first.lo | host.lo}}
}

// newPrefixSet indexes list, which it leaves as it is.
func newPrefixSet(list []netip.Prefix) *prefixSet {
	n4 := 0
	for _, p := range list {
		if p.Addr().Is4() {
			n4++
		}
	}
	s := &prefixSet{v4: make([]addrRange, 0, n4), v6: make([]addrRange, 0, len(list)-n4)}
	for _, p := range list {
		switch {
		case !p.IsValid(): // holds no address
		case p.Addr().Is4():
			s.v4 = append(s.v4, prefixRange(p))
		default:
			s.v6 = append(s.v6, prefixRange(p))
		}
	}
	s.v4, s.v6 = mergeRanges(s.v4), mergeRanges(s.v6)
	return s
}

// mergeRanges sorts rs and joins overlapping and adjacent ranges, in
// place.
func mergeRanges(rs []addrRange) []addrRange {
	slices.SortFunc(rs, func(a, b addrRange) int {
		switch {
		case a.first.less(b.first):
			return -1
		case b.first.less(a.first):
			return 1
		}
		return 0
	})
	out := rs[:0]
	for _, r := range rs {
		if n := len(out); n > 0 {
			last := &out[n-1].last
			// Starts within the last range or right after it. When the
			// last range ends at the top address, next wraps to 0, but
			// then every later range starts within it.
			if !last.less(r.first) || r.first == last.next() {
				if last.less(r.last) {
					*last = r.last
				}
				continue
			}
		}
		out = append(out, r)
	}
	return out
}

func (a u128) next() u128 {
	a.lo++
	if a.lo == 0 {
		a.hi++
	}
	return a
}

// contains reports whether a is in one of the set's prefixes. Decide asks
// about addresses unmapped and without a zone. Its cost grows with the
// logarithm of the number of ranges.
func (s *prefixSet) contains(a netip.Addr) bool {
	var rs []addrRange
	switch {
	case a.Is4():
		rs = s.v4
	case a.Is6() && a.Zone() == "": // as Prefix.Contains: none holds a zone
		rs = s.v6
	default: // the invalid Addr
		return false
	}
	// i ends at the first range that starts after k: only the one before
	// it can hold k.
	k := addrKey(a)
	i, j := 0, len(rs)
	for i < j {
		m := int(uint(i+j) >> 1)
		if k.less(rs[m].first) {
			j = m
		} else {
			i = m + 1
		}
	}
	return i > 0 && !rs[i-1].last.less(k)
}

// destSet is a rule's dest_cidrs indexed: destPrefixes's meaning, which
// its contains keeps.
type destSet struct {
	set  *prefixSet
	deny bool
}

// contains reports whether the destination a (unmapped, without a zone)
// is in the set, itself or through the IPv4 addresses it carries
// (destPrefixes): for a deny rule any one of them, for any other rule
// every one.
func (d *destSet) contains(a netip.Addr) bool {
	if d.set.contains(a) {
		return true
	}
	v4s, n := EmbeddedIPv4(a)
	for _, v4 := range v4s[:n] {
		if d.set.contains(v4) == d.deny {
			return d.deny
		}
	}
	return n > 0 && !d.deny
}

// ruleAddrs are a rule's client_cidrs and dest_cidrs indexed; nil for a
// condition the rule does not have.
type ruleAddrs struct {
	clients *prefixSet
	dests   *destSet
}

// indexAddrs indexes the address conditions of rules, one ruleAddrs per
// rule in order. The parser calls it (parse), the only maker of a Policy,
// so that no decision waits for it.
func indexAddrs(rules []rule) []ruleAddrs {
	index := make([]ruleAddrs, len(rules))
	for i := range rules {
		r, a := &rules[i], &index[i]
		if r.clients != nil {
			a.clients = newPrefixSet(r.clients)
		}
		if r.dests != nil {
			a.dests = &destSet{set: newPrefixSet(r.dests.prefixes), deny: r.dests.deny}
		}
	}
	return index
}
