package netstack

import (
	"encoding/binary"
	"net/netip"
)

// IP protocol numbers the appliance looks into.
const (
	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58
)

// Packet is what the appliance needs to know about an inner IP packet: its
// flow's addresses and ports, and whether it is an ICMP echo request. Like
// Header it holds no references into the packet.
type Packet struct {
	IPv6     bool
	Proto    uint8    // transport protocol; for ICMP errors, that of the quoted packet
	Src, Dst [16]byte // IPv4 addresses in IPv4-mapped form
	SrcPort  uint16   // for ICMP echo: the echo identifier, in both ports
	DstPort  uint16
	// Fragment is set for every fragment but the first: such a packet has
	// no transport header, so its ports are zero.
	Fragment bool
	// MoreFragments and FragmentID identify the first fragment of a
	// datagram, whose later fragments share its flow.
	MoreFragments bool
	FragmentID    uint32
	Echo          bool // an ICMP or ICMPv6 echo request
	ICMPError     bool // an ICMP error quoting a packet of the flow
	ICMPOther     bool // ICMP neither an echo request nor an error (see UnsupportedFromClient)
	TCPFlags      uint8
	Payload       int // offset of the transport header (ICMP: of the ICMP header)
	// Len is the packet's length by its IP header; bytes after it in the
	// datagram are none of the packet's.
	Len int
	// quotedSrc and quotedDst are the addresses of the packet an ICMP
	// error quotes: the error's flow is that packet's, whoever sent the
	// error (the client, or a router on the way to it).
	quotedSrc, quotedDst [16]byte
	// seq and ack are a TCP segment's sequence and acknowledgment numbers
	// (tcpseq.go). For an ICMP error, seq is the quoted segment's, and
	// hasSeq says whether the error quotes enough of it to hold one.
	seq, ack uint32
	hasSeq   bool
}

// QuotedAddrs returns, for an ICMP error, the source and destination of the
// packet it quotes (in IPv4-mapped form for IPv4), which name its flow.
func (p *Packet) QuotedAddrs() (src, dst [16]byte) { return p.quotedSrc, p.quotedDst }

// SrcAddr returns the source address.
func (p *Packet) SrcAddr() netip.Addr { return addrFrom(p.Src, p.IPv6) }

// DstAddr returns the destination address.
func (p *Packet) DstAddr() netip.Addr { return addrFrom(p.Dst, p.IPv6) }

func addrFrom(a [16]byte, v6 bool) netip.Addr {
	ip := netip.AddrFrom16(a)
	if !v6 {
		return ip.Unmap()
	}
	return ip
}

// ParsePacket parses the inner IPv4 or IPv6 packet b. etherType is the
// GENEVE protocol type, which must agree with the IP version.
func ParsePacket(b []byte, etherType uint16) (Packet, DropReason) {
	var p Packet
	if len(b) < 1 {
		return p, DropInnerMalformed
	}
	switch b[0] >> 4 {
	case 4:
		if etherType != EtherTypeIPv4 {
			return p, DropInnerMismatch
		}
		return p, parseIPv4(&p, b, false)
	case 6:
		if etherType != EtherTypeIPv6 {
			return p, DropInnerMismatch
		}
		p.IPv6 = true
		return p, parseIPv6(&p, b, false)
	}
	return p, DropInnerMalformed
}

// parseIPv4 fills p from an IPv4 packet. quoted is set for the packet an
// ICMP error carries: it may be cut short after 8 bytes of transport header,
// and it may not itself be an ICMP error.
func parseIPv4(p *Packet, b []byte, quoted bool) DropReason {
	if len(b) < 20 || b[0]>>4 != 4 {
		return DropInnerMalformed
	}
	ihl := int(b[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(b[2:4]))
	if ihl < 20 || len(b) < ihl || total < ihl {
		return DropInnerMalformed
	}
	if !quoted {
		if total > len(b) {
			return DropInnerMalformed
		}
		b, p.Len = b[:total], total
	}
	p.Proto = b[9]
	p.Src = [16]byte{10: 0xff, 11: 0xff}
	p.Dst = p.Src
	copy(p.Src[12:], b[12:16])
	copy(p.Dst[12:], b[16:20])
	frag := binary.BigEndian.Uint16(b[6:8])
	p.FragmentID = uint32(binary.BigEndian.Uint16(b[4:6]))
	p.MoreFragments = frag&0x2000 != 0
	if frag&0x1fff != 0 {
		p.Fragment = true
		return DropNone
	}
	p.Payload = ihl
	return parseTransport(p, b[ihl:], quoted)
}

// IPv6 extension headers that may precede the transport header; any other
// next header ends the chain, and is its transport (or the packet is
// dropped: parseTransport).
const (
	ipv6HopByHop    = 0
	ipv6Routing     = 43
	ipv6Fragment    = 44
	ipv6DestOptions = 60
	maxExtHeaders   = 8
)

func parseIPv6(p *Packet, b []byte, quoted bool) DropReason {
	if len(b) < 40 || b[0]>>4 != 6 {
		return DropInnerMalformed
	}
	if !quoted {
		total := 40 + int(binary.BigEndian.Uint16(b[4:6]))
		if total > len(b) {
			return DropInnerMalformed
		}
		b, p.Len = b[:total], total
	}
	copy(p.Src[:], b[8:24])
	copy(p.Dst[:], b[24:40])
	// No IPv6 packet on the wire has an IPv4-mapped address: gVisor and
	// Linux drop them. Echo bypasses the stack, and the flow table, the
	// shares and the policy read ::ffff:10.1.2.3 as the IPv4 client or
	// destination 10.1.2.3 (Unmap), so one is dropped before any of them
	// sees it. A quoted packet is no flow's yet: its lookup fails anyway.
	if !quoted && (isV4Mapped(&p.Src) || isV4Mapped(&p.Dst)) {
		return DropInnerBadAddress
	}
	next, off := b[6], 40
	for range maxExtHeaders {
		switch next {
		case ipv6HopByHop, ipv6Routing, ipv6DestOptions:
			if len(b) < off+8 {
				return DropInnerMalformed
			}
			next, off = b[off], off+(int(b[off+1])+1)*8
			continue
		case ipv6Fragment:
			if len(b) < off+8 {
				return DropInnerMalformed
			}
			frag := binary.BigEndian.Uint16(b[off+2 : off+4])
			p.FragmentID = binary.BigEndian.Uint32(b[off+4 : off+8])
			p.MoreFragments = frag&1 != 0
			next, off = b[off], off+8
			if frag&0xfff8 != 0 {
				p.Proto, p.Fragment = next, true
				return DropNone
			}
			continue
		}
		if off > len(b) {
			return DropInnerMalformed
		}
		p.Proto, p.Payload = next, off
		return parseTransport(p, b[off:], quoted)
	}
	return DropInnerMalformed
}

// parseTransport reads ports (or the echo identifier) from the transport
// header t. An ICMP error takes the flow of the packet it quotes, so that an
// error about a flow travels under that flow's GENEVE header.
//
// Any other protocol is dropped (DropInnerUnsupported): the appliance
// relays nothing else, and a header it does not know may be one gVisor
// reads past. An IPv6 header chain that stopped at, say, an experiment
// header (253), which gVisor skips, reached the stack's TCP, UDP or ICMPv6
// behind it with no flow of its own (past --max-flows, without the GWLB's
// IDs, and echo answered by the stack for any address).
func parseTransport(p *Packet, t []byte, quoted bool) DropReason {
	switch p.Proto {
	default:
		return DropInnerUnsupported
	case protoTCP, protoUDP:
		// A quoted packet carries at least 8 bytes of its transport header:
		// the ports, but not TCP's flags.
		if len(t) < 4 || (!quoted && (len(t) < 8 || (p.Proto == protoTCP && len(t) < 20))) {
			return DropInnerMalformed
		}
		p.SrcPort = binary.BigEndian.Uint16(t[0:2])
		p.DstPort = binary.BigEndian.Uint16(t[2:4])
		if p.Proto == protoTCP && len(t) >= 8 {
			p.seq, p.hasSeq = binary.BigEndian.Uint32(t[4:8]), true
		}
		if p.Proto == protoTCP && len(t) >= 14 {
			p.ack = binary.BigEndian.Uint32(t[8:12])
			p.TCPFlags = t[13]
		}
	case protoICMP, protoICMPv6:
		if (p.Proto == protoICMP) == p.IPv6 || len(t) < 8 {
			return DropInnerMalformed
		}
		typ := t[0]
		switch {
		case isEcho(typ, p.IPv6):
			p.Echo = typ == echoRequestType(p.IPv6)
			p.ICMPOther = !quoted && !p.Echo // an echo reply: a client's answers nothing
			id := binary.BigEndian.Uint16(t[4:6])
			p.SrcPort, p.DstPort = id, id
		case !quoted && isICMPError(typ, p.IPv6):
			quote := *p
			var r DropReason
			if p.IPv6 {
				r = parseIPv6(&quote, t[8:], true)
			} else {
				r = parseIPv4(&quote, t[8:], true)
			}
			if r != DropNone {
				return r
			}
			// The quoted packet went the other way: the error's ports
			// are its reversed, as Key and ReplyKey take them.
			p.Proto, p.SrcPort, p.DstPort = quote.Proto, quote.DstPort, quote.SrcPort
			p.quotedSrc, p.quotedDst = quote.Src, quote.Dst
			p.seq, p.hasSeq = quote.seq, quote.hasSeq
			p.ICMPError = true
		case !quoted:
			p.ICMPOther = true
		}
	}
	return DropNone
}

// UnsupportedFromClient reports whether p, from a client, is ICMP the
// appliance takes in from no one: neither an echo request nor an error.
// Neighbour discovery, router solicitations, multicast listener reports
// and the like serve nothing over GENEVE, and the stack, which owns every
// address, would answer a neighbour solicitation for any of them (the
// metadata service's included); an echo reply answers nothing the
// appliance passed in. The same types leave the appliance (the echo
// relay's replies), so the reply path parses them.
func (p *Packet) UnsupportedFromClient() bool { return p.ICMPOther }

// v4MappedPrefix is the first 12 bytes of an IPv4-mapped IPv6 address.
var v4MappedPrefix = [12]byte{10: 0xff, 11: 0xff}

func isV4Mapped(a *[16]byte) bool { return [12]byte(a[:12]) == v4MappedPrefix }

// BadClientSource reports whether p, from a client, has a source no
// client has: for IPv6 multicast, unspecified (::) or loopback (::1); for
// IPv4 multicast (224.0.0.0/4), the limited broadcast 255.255.255.255,
// "this network" (0.0.0.0/8) or loopback (127.0.0.0/8). gVisor and Linux
// drop such packets from the wire; echo bypasses gVisor, and the flow
// table would keep a flow for each (TCP and UDP ones before gVisor dropped
// them), charged to a phantom client that a client_cidrs covering 127/8
// would even let through. Only a client's packets are so judged: the
// stack's replies to a flow the client sent to a loopback address (tests
// allow loopback destinations) come from it.
func (p *Packet) BadClientSource() bool {
	if p.IPv6 {
		return p.Src[0] == 0xff || p.Src == [16]byte{} || p.Src == ipv6Loopback
	}
	// parseIPv4 stores the source IPv4-mapped. 240.0.0.0/4 short of the
	// broadcast is left alone, as Linux leaves it.
	a := p.Src[12]
	return a&0xf0 == 0xe0 || a == 0 || a == 127 || [4]byte(p.Src[12:]) == [4]byte{255, 255, 255, 255}
}

var ipv6Loopback = [16]byte{15: 1}

func echoRequestType(v6 bool) uint8 {
	if v6 {
		return 128
	}
	return 8
}

func isEcho(typ uint8, v6 bool) bool {
	if v6 {
		return typ == 128 || typ == 129
	}
	return typ == 8 || typ == 0
}

func isICMPError(typ uint8, v6 bool) bool {
	if v6 {
		return typ >= 1 && typ <= 4
	}
	return typ == 3 || typ == 4 || typ == 5 || typ == 11 || typ == 12
}

// FlowKey identifies a flow, with a direction: the GWLB endpoint, the IP
// version, the protocol, and the flow's client (the inner source of the
// packets that make it, a host behind the endpoint) and server (the
// destination the stack stands in for), each with its port. A packet from
// a client is keyed (source, destination) (Key), a packet the stack sends
// is keyed the other way round (ReplyKey), as a reply always goes to its
// flow's client. So a packet D:dp -> V:vp is not of V's flow V:vp -> D:dp
// but a flow of its own, whose client is D: the stack keeps the two
// connections apart too (their local and remote ends differ), and neither
// host can reach the other's flow, its state or its GENEVE header. The
// version is part of the key because IPv4 addresses are kept in their
// IPv4-mapped form: an IPv6 packet between the mapped forms of an IPv4
// flow's addresses is another flow, and must not take that flow's GENEVE
// header (whose protocol type says IPv4).
type FlowKey struct {
	Endpoint   uint64
	Proto      uint8
	IPv6       bool
	ClientAddr [16]byte
	ServerAddr [16]byte
	ClientPort uint16 // for ICMP echo: the echo identifier, as ServerPort
	ServerPort uint16
}

// reverse is the key of the flow the other way: its server as the client.
func (k *FlowKey) reverse() FlowKey {
	r := *k
	r.ClientAddr, r.ServerAddr = k.ServerAddr, k.ClientAddr
	r.ClientPort, r.ServerPort = k.ServerPort, k.ClientPort
	return r
}

// Key returns the flow key of p, a packet from a client, under the given
// GWLB endpoint: its source is the flow's client. An ICMP error is about
// a packet the stack sent the client (its quoted source is the server, its
// quoted destination the client), and takes that packet's flow, whoever
// sent the error (the client, or a router on the way to it).
func (p *Packet) Key(endpoint uint64) FlowKey {
	k := FlowKey{Endpoint: endpoint, Proto: p.Proto, IPv6: p.IPv6, ClientPort: p.SrcPort, ServerPort: p.DstPort}
	k.ClientAddr, k.ServerAddr = p.Src, p.Dst
	if p.ICMPError {
		k.ClientAddr, k.ServerAddr = p.quotedDst, p.quotedSrc // the ports are swapped already
	}
	return k
}

// ReplyKey returns the flow key of p, a packet the appliance sends to a
// client (the stack's, or the echo relay's), under the given GWLB
// endpoint: its destination is the flow's client. An ICMP error the stack
// sends is about a packet from the client, and takes that packet's flow.
// It is Key with the two ends exchanged.
func (p *Packet) ReplyKey(endpoint uint64) FlowKey {
	k := p.Key(endpoint)
	k.ClientAddr, k.ServerAddr = k.ServerAddr, k.ClientAddr
	k.ClientPort, k.ServerPort = k.ServerPort, k.ClientPort
	return k
}

// TupleKey is a flow as the GWLB sees it: the endpoint, the IP version and
// the inner 5-tuple, its two ends in a canonical order, so that a packet
// and its reply have the same key (the GWLB's flow stickiness is
// symmetric). The simulator (gwlbsim) keys its flows by it. The version
// is part of it because IPv4 addresses are kept in their IPv4-mapped form.
type TupleKey struct {
	Endpoint uint64
	Proto    uint8
	IPv6     bool
	LoAddr   [16]byte
	HiAddr   [16]byte
	LoPort   uint16
	HiPort   uint16
}

// Tuple returns the packet's TupleKey under the given GWLB endpoint; an
// ICMP error's is the key of the packet it quotes.
func (p *Packet) Tuple(endpoint uint64) TupleKey {
	k := TupleKey{Endpoint: endpoint, Proto: p.Proto, IPv6: p.IPv6}
	src, dst := p.Src, p.Dst
	if p.ICMPError {
		src, dst = p.quotedDst, p.quotedSrc // the ports are swapped already
	}
	if less(dst, p.DstPort, src, p.SrcPort) {
		k.LoAddr, k.LoPort, k.HiAddr, k.HiPort = dst, p.DstPort, src, p.SrcPort
	} else {
		k.LoAddr, k.LoPort, k.HiAddr, k.HiPort = src, p.SrcPort, dst, p.DstPort
	}
	return k
}

func less(a [16]byte, ap uint16, b [16]byte, bp uint16) bool {
	ah, bh := binary.BigEndian.Uint64(a[:8]), binary.BigEndian.Uint64(b[:8])
	if ah != bh {
		return ah < bh
	}
	al, bl := binary.BigEndian.Uint64(a[8:]), binary.BigEndian.Uint64(b[8:])
	if al != bl {
		return al < bl
	}
	return ap < bp
}
