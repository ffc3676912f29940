package netstack

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Packets the stack is certain to drop. gVisor refuses some client packets
// that ParsePacket takes: their transport checksum is wrong, an option says
// "discard", TCP's flags make the segment one no state takes. Dropped
// there, they would still have reached the flow table and the capture tap
// before it, and an IDS reading the feed rebuilds a stream from what it is
// shown: a decoy segment the stack threw away, followed by the real bytes
// at the same sequence number, shows it the decoy. So each such packet is
// dropped here, before the flow table and the tap, and counted; the rules
// are gVisor's own (pkg/tcpip/network/ipv4, ipv6, transport/tcp, udp), so
// nothing the stack would take in is lost. What costs a pass over the
// packet's bytes (the checksums, sumsFail) runs only when a tap is on:
// without one the stack drops those packets itself, as cheaply.

// stackRefuses reports why the stack would drop pkt, a client's packet as
// ParsePacket read it into p (pkt cut to p.Len), by its headers alone
// (DropNone: it would not, or it depends on state). It costs a few
// comparisons for a packet with no IP options or extension headers.
func stackRefuses(p *Packet, pkt []byte) DropReason {
	if p.IPv6 {
		if pkt[6] != protoTCP && pkt[6] != protoUDP && ipv6Refuses(pkt) {
			return DropInnerRefused
		}
	} else if ihl := int(pkt[0]&0x0f) * 4; ihl > 20 && ipv4OptionsRefused(pkt[20:ihl]) {
		// Every fragment's too: gVisor verifies each one's options before
		// reassembly (deliverPacketLocally), and drops the fragment alone.
		return DropInnerRefused
	}
	if p.Fragment || p.ICMPError || p.Echo {
		return DropNone // no transport header, or ICMP: p.Proto is the quoted packet's
	}
	t := pkt[p.Payload:]
	switch p.Proto {
	case protoTCP:
		off := int(t[12]>>4) * 4
		// A first fragment holds only part of the segment; its data offset
		// is checked against the whole after reassembly.
		if off < 20 || (!p.MoreFragments && off > len(t)) {
			return DropInnerRefused
		}
		// The stack never opens a connection to a client, so every segment
		// of a client's but its SYN and a RST acknowledges something: in
		// LISTEN, SYN-RECEIVED and later states alike, one without ACK is
		// dropped (RFC 9293 3.10.7).
		if p.TCPFlags&(flagAck|flagSyn|flagRst) == 0 {
			return DropInnerRefused
		}
		// A SYN or RST cut into fragments: no stack sends one, and the
		// stack drops the data either carries (a SYN's, a RST's), which
		// the tap would show in later fragments it cannot cut
		// (synDataCut cuts whole segments only). Its later fragments
		// follow it out: a fragment whose first was not taken in is
		// dropped.
		if p.MoreFragments && p.TCPFlags&(flagSyn|flagRst) != 0 {
			return DropInnerRefused
		}
	case protoUDP:
		if n := int(binary.BigEndian.Uint16(t[4:6])); n < 8 || (!p.MoreFragments && n > len(t)) {
			return DropInnerRefused
		}
	}
	return DropNone
}

// ipv6Refuses reports whether gVisor would drop the IPv6 packet pkt for its
// extension headers, which ParsePacket walked already (so they are in
// bounds, at most maxExtHeaders of them, up to the transport header or a
// later fragment's fragment header): a hop-by-hop header anywhere but
// first (of the datagram, or of a first fragment's fragmentable part), a
// routing header with segments left (gVisor routes nothing), or an option
// a hop-by-hop or destination options header has that the stack does not
// know and whose type's action bits say discard (RFC 8200 4.2).
// Suricata, Zeek and Wireshark heed none of it.
func ipv6Refuses(pkt []byte) bool {
	// first is where a hop-by-hop header may be: right after the fixed
	// header, or after a first fragment's fragment header, as gVisor walks
	// the headers after it afresh on the reassembled datagram.
	next, off, first := pkt[6], 40, 40
	for range maxExtHeaders {
		switch next {
		case ipv6HopByHop, ipv6DestOptions:
			n := (int(pkt[off+1]) + 1) * 8
			if (next == ipv6HopByHop && off != first) || off+n > len(pkt) ||
				ipv6OptionsRefused(pkt[off+2:off+n], next == ipv6HopByHop) {
				return true
			}
			next, off = pkt[off], off+n
		case ipv6Routing:
			if pkt[off+3] != 0 {
				return true
			}
			next, off = pkt[off], off+(int(pkt[off+1])+1)*8
		case ipv6Fragment:
			fo := binary.BigEndian.Uint16(pkt[off+2 : off+4])
			if fo&0xfff8 != 0 {
				return false // the rest is in the first fragment
			}
			next, off = pkt[off], off+8
			if fo&1 != 0 { // a first fragment, not an atomic one (RFC 6946)
				first = off
			}
		default:
			return false
		}
	}
	return false
}

// IPv6 options the stack knows (RFC 8200 4.2, RFC 2711).
const (
	ipv6OptPad1        = 0
	ipv6OptPadN        = 1
	ipv6OptRouterAlert = 5
)

// ipv6OptionsRefused reports whether gVisor would drop a packet for the
// options opts of a hop-by-hop (hbh) or destination options header: one
// running past the header, a Router Alert not 2 bytes long or, in
// hop-by-hop, twice, or an unknown option whose action bits are not 00.
func ipv6OptionsRefused(opts []byte, hbh bool) bool {
	alert := false
	for i := 0; i < len(opts); {
		typ := opts[i]
		if typ == ipv6OptPad1 {
			i++
			continue
		}
		if i+2 > len(opts) || i+2+int(opts[i+1]) > len(opts) {
			return true
		}
		n := int(opts[i+1])
		switch {
		case typ == ipv6OptPadN:
		case typ == ipv6OptRouterAlert:
			if n != 2 || (hbh && alert) {
				return true
			}
			alert = true
		case typ>>6 != 0:
			return true
		}
		i += 2 + n
	}
	return false
}

// IPv4 options the stack reads (RFC 791, RFC 2113).
const (
	ipv4OptEnd         = 0
	ipv4OptNOP         = 1
	ipv4OptRecordRoute = 7
	ipv4OptExperiment  = 30
	ipv4OptTimestamp   = 68
	ipv4OptRouterAlert = 148
)

// ipv4OptionsRefused reports whether gVisor would drop a packet for its
// IPv4 options opts: an option with no room for its length, or a length
// below 2 or past the options; any option but NOP twice; a Router Alert or
// the experiment option not 4 bytes long, or a Router Alert whose value is
// not 0; a record route shorter than one address or a timestamp shorter
// than its header, or either one's pointer before its first slot, or a
// timestamp's flags unknown; a record route or timestamp with room left
// but not for a whole entry at its pointer, or a full timestamp whose
// overflow counter cannot count one more (handleRecordRoute,
// handleTimestamp: the bytes alone decide). Options after End of List are
// not read.
func ipv4OptionsRefused(opts []byte) bool {
	var seen [256]bool
	for i := 0; i < len(opts); {
		typ := opts[i]
		switch typ {
		case ipv4OptEnd:
			return false
		case ipv4OptNOP:
			i++
			continue
		}
		if seen[typ] || i+2 > len(opts) {
			return true
		}
		seen[typ] = true
		n := int(opts[i+1])
		if n < 2 || i+n > len(opts) {
			return true
		}
		o := opts[i : i+n]
		switch typ {
		case ipv4OptRouterAlert:
			if n != 4 || o[2] != 0 || o[3] != 0 {
				return true
			}
		case ipv4OptExperiment:
			if n != 4 {
				return true
			}
		case ipv4OptRecordRoute:
			// handleRecordRoute: a full one (pointer past the end) is
			// taken; one with room, but not for a whole address at the
			// pointer, is not.
			if n < 7 {
				return true
			}
			if ptr := int(o[2]); ptr < 4 || (ptr <= n && ptr+4 > n+1) {
				return true
			}
		case ipv4OptTimestamp:
			if ipv4TimestampRefused(o) {
				return true
			}
		}
		i += n
	}
	return false
}

// ipv4TimestampRefused reports whether gVisor's handleTimestamp refuses
// the timestamp option o (its length in bounds, at least 2): shorter than
// its header, its pointer before the first slot, its flags unknown, no
// room for a whole entry at the pointer, or full (pointer past the end)
// with its overflow counter at 15, which one more would wrap, and flags
// other than 3 (prespecified addresses, which overflow nothing).
func ipv4TimestampRefused(o []byte) bool {
	n := len(o)
	if n < 4 || o[2] < 5 {
		return true
	}
	entry := 8 // flags 1 and 3: an address and a timestamp
	switch flags := o[3] & 0x0f; flags {
	case 0:
		entry = 4
	case 1:
	case 3:
		if int(o[2]) > n {
			return false
		}
	default:
		return true
	}
	ptr := int(o[2])
	if ptr > n {
		return o[3]>>4 == 15
	}
	return ptr-5+entry > n-4
}

// ipAddrs reads the source and destination addresses of pkt, a packet as
// ParsePacket read it into p, for a transport checksum's pseudo-header; ok
// is false when pkt is IPv4 and its header checksum does not hold.
func ipAddrs(p *Packet, pkt []byte) (src, dst tcpip.Address, ok bool) {
	if p.IPv6 {
		ip := header.IPv6(pkt)
		return ip.SourceAddress(), ip.DestinationAddress(), true
	}
	ip := header.IPv4(pkt)
	if !ip.IsChecksumValid() {
		return src, dst, false
	}
	return ip.SourceAddress(), ip.DestinationAddress(), true
}

// sumsFail reports whether the checksums of pkt, a client's packet as
// ParsePacket read it into p (pkt cut to p.Len), do not hold where the
// stack checks them: the IPv4 header's, and TCP's or UDP's (an IPv4 UDP
// datagram may have none, RFC 768; an IPv6 one must). A fragment's
// transport checksum is the reassembled datagram's, which the stack checks
// after reassembly. It reads every byte of the packet.
func sumsFail(p *Packet, pkt []byte) bool {
	src, dst, ok := ipAddrs(p, pkt)
	if !ok {
		return true
	}
	if p.Fragment || p.MoreFragments || p.ICMPError || p.Echo {
		return false
	}
	t := pkt[p.Payload:]
	switch p.Proto {
	case protoTCP:
		sum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(t)))
		return checksum.Checksum(t, sum) != 0xffff
	case protoUDP:
		u := header.UDP(t)
		if !p.IPv6 && u.Checksum() == 0 {
			return false
		}
		t = t[:u.Length()] // stackRefuses checked it is within t
		sum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, src, dst, uint16(len(t)))
		return checksum.Checksum(t, sum) != 0xffff
	}
	return false
}

// echoSumFails reports whether pkt, a client's echo request as ParsePacket
// read it into p, has an IPv4 header checksum that does not hold. The echo
// relay takes echo requests instead of the stack, and checks this always,
// tap or not: it costs the header's few words, and sumsFail, which runs
// with a tap, checks no more of an echo request than this.
func echoSumFails(p *Packet, pkt []byte) bool {
	return p.Echo && !p.IPv6 && !header.IPv4(pkt).IsChecksumValid()
}

// synDataCut returns, for a client's TCP segment with SYN or RST set that
// carries data, a copy cut to its headers, with its lengths and checksums
// mended, and p's length the copy's; otherwise pkt itself. gVisor does not
// do TCP Fast Open: it acknowledges the SYN alone and throws its data away,
// and the client sends its bytes again after the handshake, maybe other
// ones. An IDS shown the SYN's data takes it for the stream's first bytes
// and the real ones for a retransmission. Nor does gVisor ever deliver a
// RST's data, whether the RST ends the connection or gets a challenge ACK
// (RFC 5961), and an IDS may add it to the stream all the same. The stack
// still gets the segment whole: dropping a SYN would cost a Fast Open
// client a SYN timeout for nothing, and a RST must still end its
// connection. This allocates, on a path only such a segment takes, and
// only with a tap.
func synDataCut(p *Packet, pkt []byte) []byte {
	if p.Proto != protoTCP || p.TCPFlags&(flagSyn|flagRst) == 0 || p.Fragment || p.MoreFragments || p.ICMPError {
		return pkt
	}
	end := p.Payload + int(pkt[p.Payload+12]>>4)*4
	if end >= p.Len {
		return pkt
	}
	cut := append([]byte(nil), pkt[:end]...)
	var src, dst tcpip.Address
	if p.IPv6 {
		ip := header.IPv6(cut)
		ip.SetPayloadLength(uint16(end - header.IPv6MinimumSize))
		src, dst = ip.SourceAddress(), ip.DestinationAddress()
	} else {
		ip := header.IPv4(cut)
		ip.SetTotalLength(uint16(end))
		ip.SetChecksum(0)
		ip.SetChecksum(^ip.CalculateChecksum())
		src, dst = ip.SourceAddress(), ip.DestinationAddress()
	}
	tcp := header.TCP(cut[p.Payload:])
	tcp.SetChecksum(0)
	sum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(tcp)))
	tcp.SetChecksum(^checksum.Checksum(tcp, sum))
	p.Len = end
	return cut
}
