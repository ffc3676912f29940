package netstack

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
)

// datagramSum is the ones'-complement sum of d, a UDP datagram whose
// checksum field is zero and whose payload is a GENEVE header and the inner
// packet. The raw return path needs it for the outer UDP checksum, which
// the kernel does not fill in for a raw socket.
//
// Summing every byte would read each reply's payload a second time: the
// inner TCP or UDP checksum was just computed over it (by the stack, or by
// batchSegments). A segment whose checksum holds sums to the complement of
// its pseudo-header, so for such an inner packet only the headers are
// summed. Every part starts at an even offset (the UDP header is 8 bytes,
// GENEVE's length a multiple of 4, an IP header's too), so the parts' sums
// combine. Anything else is summed whole: a fragment, another protocol, a
// UDP datagram without a checksum, lengths that do not agree. An inner
// checksum that does not hold gives an outer one that does not either, and
// the datagram is dropped on the way, as the inner packet would have been.
func datagramSum(d []byte) uint16 {
	const udpLen = 8
	if len(d) < udpLen+genevePrefix {
		return checksum.Checksum(d, 0)
	}
	hdrLen := udpLen + genevePrefix + int(d[udpLen]&0x3f)*4
	if len(d) < hdrLen {
		return checksum.Checksum(d, 0)
	}
	inner, ok := innerSum(d[hdrLen:])
	if !ok {
		return checksum.Checksum(d, 0)
	}
	return checksum.Combine(checksum.Checksum(d[:hdrLen], 0), inner)
}

// genevePrefix is the fixed part of a GENEVE header, before its options.
const genevePrefix = 8

// innerSum is the ones'-complement sum of pkt, an IPv4 or IPv6 packet
// carrying TCP or UDP whose transport checksum is taken to hold; ok is
// false if pkt is not such a packet (see datagramSum).
func innerSum(pkt []byte) (sum uint16, ok bool) {
	if len(pkt) < 1 {
		return 0, false
	}
	ether := uint16(EtherTypeIPv4)
	if pkt[0]>>4 == 6 {
		ether = EtherTypeIPv6
	}
	p, reason := ParsePacket(pkt, ether)
	// An IPv6 extension header puts the transport header further on: it
	// counts as another protocol here.
	if reason != DropNone || p.Len != len(pkt) || p.Fragment || p.MoreFragments || p.ICMPError ||
		(p.IPv6 && p.Payload != 40) {
		return 0, false
	}
	seg, addrs := pkt[p.Payload:], pkt[12:20] // source and destination, as the pseudo-header has them
	if p.IPv6 {
		addrs = pkt[8:40]
	}
	switch {
	case p.Proto == protoTCP:
	case p.Proto == protoUDP && binary.BigEndian.Uint16(seg[6:]) != 0 &&
		int(binary.BigEndian.Uint16(seg[4:])) == len(seg): // its checksum covers its own length
	default:
		return 0, false
	}
	// The pseudo-header's protocol and length sum alike for both
	// families; the IP length keeps len(seg) within 16 bits.
	var tail [4]byte
	binary.BigEndian.PutUint32(tail[:], uint32(p.Proto)<<16|uint32(len(seg)))
	pseudo := checksum.Checksum(tail[:], checksum.Checksum(addrs, 0))
	// seg + pseudo sums to 0xffff (negative zero), so seg sums to -pseudo.
	return checksum.Combine(checksum.Checksum(pkt[:p.Payload], 0), ^pseudo), true
}
