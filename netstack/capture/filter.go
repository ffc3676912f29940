package capture

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// Filter selects packets by the conditions of the egress policy's rules
// that a packet shows: client_cidrs, dest_cidrs, ports, protocols and
// endpoints. Like a rule, all its stated conditions must hold and each list
// matches when any entry does. Names (domains) are not in packets and
// cannot be filtered on.
//
// The client is the inner source of a packet from the GWLB and the inner
// destination of one sent back; ports are the destination's (the client's
// destination port). A later IP fragment carries no ports: it matches a
// ports condition whatever the ports. An ICMP error takes the addresses,
// protocol and ports of the packet it quotes, so it goes with its flow
// whoever sent it.
type Filter struct {
	text      string
	clients   []netip.Prefix
	dests     []netip.Prefix
	ports     [][2]uint16
	protos    []uint8
	endpoints []uint64
}

// String returns the filter as it was written.
func (f Filter) String() string { return f.text }

// ParseFilter parses one filter: conditions separated by ";", each
// key=value[,value...]. For example:
//
//	client_cidrs=10.1.0.0/16;ports=80,443,8000-8100;protocols=tcp
//	endpoints=vpce-0123456789abcdef0;dest_cidrs=192.0.2.7
func ParseFilter(s string) (Filter, error) {
	f := Filter{text: s}
	seen := map[string]bool{}
	for cond := range strings.SplitSeq(s, ";") {
		cond = strings.TrimSpace(cond)
		if cond == "" {
			continue
		}
		key, val, ok := strings.Cut(cond, "=")
		key = strings.TrimSpace(key)
		if !ok || strings.TrimSpace(val) == "" {
			return f, fmt.Errorf("%q: want key=value[,value...]", cond)
		}
		if seen[key] {
			return f, fmt.Errorf("%q: %s given twice", s, key)
		}
		seen[key] = true
		for v := range strings.SplitSeq(val, ",") {
			v = strings.TrimSpace(v)
			if err := f.add(key, v); err != nil {
				return f, fmt.Errorf("%s %q: %w", key, v, err)
			}
		}
	}
	if len(seen) == 0 {
		return f, fmt.Errorf("%q: no condition", s)
	}
	return f, nil
}

func (f *Filter) add(key, v string) error {
	switch key {
	case "client_cidrs", "dest_cidrs":
		p, err := parsePrefix(v)
		if err != nil {
			return err
		}
		if key == "client_cidrs" {
			f.clients = append(f.clients, p)
		} else {
			f.dests = append(f.dests, p)
		}
	case "ports":
		lo, hi, isRange := strings.Cut(v, "-")
		a, err1 := strconv.ParseUint(lo, 10, 16)
		b := a
		var err2 error
		if isRange {
			b, err2 = strconv.ParseUint(hi, 10, 16)
		}
		if err1 != nil || err2 != nil || a == 0 || b < a {
			return fmt.Errorf("want a port 1-65535 or a range lo-hi")
		}
		f.ports = append(f.ports, [2]uint16{uint16(a), uint16(b)})
	case "protocols":
		switch v {
		case "tcp":
			f.protos = append(f.protos, 6)
		case "udp":
			f.protos = append(f.protos, 17)
		case "icmp":
			f.protos = append(f.protos, 1, 58)
		default:
			return fmt.Errorf("want tcp, udp or icmp (tls, http and quic are not told apart in packets)")
		}
	case "endpoints":
		hex, ok := strings.CutPrefix(v, "vpce-")
		id, err := strconv.ParseUint(hex, 16, 64)
		if !ok || err != nil || len(hex) != 17 {
			return fmt.Errorf("want vpce- and 17 hex digits")
		}
		f.endpoints = append(f.endpoints, id)
	default:
		return fmt.Errorf("unknown condition (want client_cidrs, dest_cidrs, ports, protocols or endpoints)")
	}
	return nil
}

// parsePrefix takes a CIDR without host bits set, or a single address.
// Either in the IPv4-mapped IPv6 form is taken as the IPv4 one: packets
// are matched in their IPv4 form, and an IPv6 packet with a mapped
// address never reaches the stack, so kept as IPv6 it would match nothing.
func parsePrefix(v string) (netip.Prefix, error) {
	if a, err := netip.ParseAddr(v); err == nil {
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(v)
	if err != nil {
		return p, fmt.Errorf("want a CIDR or an address")
	}
	if p.Masked() != p {
		return p, fmt.Errorf("host bits set (did you mean %s?)", p.Masked())
	}
	if p.Addr().Is4In6() {
		// Masked and mapped: the ::ffff: bits are network bits, so
		// Bits is 96 or more.
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p, nil
}

func matchAny(fs []Filter, endpoint uint64, out bool, p *netstack.Packet) bool {
	for i := range fs {
		if fs[i].match(endpoint, out, p) {
			return true
		}
	}
	return false
}

// match reports whether every condition of f holds for p. It allocates
// nothing: it runs on the packet path.
func (f *Filter) match(endpoint uint64, out bool, p *netstack.Packet) bool {
	if f.endpoints != nil && !containsEndpoint(f.endpoints, endpoint) {
		return false
	}
	src, dst := p.Src, p.Dst
	if p.ICMPError {
		// The error's flow is the quoted packet's, which went the other
		// way, whoever sent the error (a router on the way, say): its
		// addresses, turned round as netstack turns its ports.
		qsrc, qdst := p.QuotedAddrs()
		src, dst = qdst, qsrc
	}
	client, dest, dport := src, dst, p.DstPort
	if out {
		client, dest, dport = dst, src, p.SrcPort
	}
	if f.clients != nil && !matchAddr(f.clients, client, p.IPv6) {
		return false
	}
	if f.dests != nil && !matchAddr(f.dests, dest, p.IPv6) {
		return false
	}
	if f.protos != nil && !containsProto(f.protos, p.Proto) {
		return false
	}
	if f.ports != nil && !p.Fragment {
		if p.Proto != 6 && p.Proto != 17 { // echo has an identifier, not ports
			return false
		}
		ok := false
		for _, r := range f.ports {
			if dport >= r[0] && dport <= r[1] {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

func containsEndpoint(list []uint64, e uint64) bool {
	for _, x := range list {
		if x == e {
			return true
		}
	}
	return false
}

func containsProto(list []uint8, p uint8) bool {
	for _, x := range list {
		if x == p {
			return true
		}
	}
	return false
}

func matchAddr(ps []netip.Prefix, a [16]byte, v6 bool) bool {
	addr := netip.AddrFrom16(a)
	if !v6 {
		addr = addr.Unmap()
	}
	for _, p := range ps {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}
