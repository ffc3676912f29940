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
	var ipLen int
	var proto uint8
	var addrs []byte // source and destination, as the pseudo-header has them
	switch pkt[0] >> 4 {
	case 4:
		ipLen = int(pkt[0]&0xf) * 4
		if ipLen < 20 || len(pkt) < ipLen || int(binary.BigEndian.Uint16(pkt[2:])) != len(pkt) {
			return 0, false
		}
		if binary.BigEndian.Uint16(pkt[6:])&0x3fff != 0 { // more fragments, or an offset
			return 0, false
		}
		proto, addrs = pkt[9], pkt[12:20]
	case 6:
		ipLen = 40
		if len(pkt) < ipLen || int(binary.BigEndian.Uint16(pkt[4:]))+ipLen != len(pkt) {
			return 0, false
		}
		proto, addrs = pkt[6], pkt[8:40] // an extension header is another protocol here
	default:
		return 0, false
	}
	seg := pkt[ipLen:]
	switch {
	case proto == protoTCP && len(seg) >= 20:
	case proto == protoUDP && len(seg) >= 8 && binary.BigEndian.Uint16(seg[6:]) != 0 &&
		int(binary.BigEndian.Uint16(seg[4:])) == len(seg): // its checksum covers its own length

	default:
		return 0, false
	}
	// The pseudo-header's protocol and length sum alike for both
	// families; the lengths checked above keep len(seg) within 16 bits.
	var tail [4]byte
	binary.BigEndian.PutUint32(tail[:], uint32(proto)<<16|uint32(len(seg)))
	pseudo := checksum.Checksum(tail[:], checksum.Checksum(addrs, 0))
	// seg + pseudo sums to 0xffff (negative zero), so seg sums to -pseudo.
	return checksum.Combine(checksum.Checksum(pkt[:ipLen], 0), ^pseudo), true
}
