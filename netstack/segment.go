package netstack

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// The link asks the stacks for host GSO: TCP hands over segments of up to
// gsoMaxSize bytes, with the checksum left to the link, and the link cuts
// them at the MSS here, into packets it sends in one batch. gVisor's own
// GSO would cut them too, but hand them over one WritePacket call each,
// so there would be nothing to batch.
//
// gsoMaxSize leaves room for the largest IPv6 and TCP headers in front of
// the payload gVisor allows (up to the size less the largest TCP header),
// so that a segment's length still fits in 16 bits.
const gsoMaxSize = 1<<16 - 1 - 40 - 1

// flatCursor reads a packet buffer's bytes, headers and payload, in order,
// without copying them into one slice first.
type flatCursor struct {
	v   *buffer.View
	off int // into v's slice
}

func newFlatCursor(pb *stack.PacketBuffer) flatCursor {
	vl, off := pb.AsViewList()
	v := vl.Front()
	for v != nil && off >= v.Size() {
		off -= v.Size()
		v = v.Next()
	}
	return flatCursor{v: v, off: off}
}

// read copies the next len(dst) bytes into dst and returns how many there
// were.
func (c *flatCursor) read(dst []byte) int {
	n := 0
	for n < len(dst) && c.v != nil {
		m := copy(dst[n:], c.v.AsSlice()[c.off:])
		n += m
		c.off += m
		if c.off >= c.v.Size() {
			c.v, c.off = c.v.Next(), 0
		}
	}
	return n
}

// batchSegments adds the TCP packet pb, which the stack handed over for
// host GSO (pb.GSOOptions set), to b as packets of at most the MSS of
// payload each, every one with its own IP and TCP header and real
// checksums, as the wire would carry them: sequence numbers advanced, IPv4
// IDs counted up, FIN and PSH on the last segment only, CWR on the first.
// A segment is the unit of everything after: the flow lookup, the tap, the
// fragment table (TCP sets DF: there are no fragments).
func (s *Server) batchSegments(b *replyBatch, endpoint uint64, pb *stack.PacketBuffer, now int64, frags *fragTable) {
	const innerOff = outerHeadroom + MaxGeneveHeader
	size := pb.Size()
	netLen, tcpLen := len(pb.NetworkHeader().Slice()), len(pb.TransportHeader().Slice())
	hdrLen := netLen + tcpLen
	if tcpLen < 20 || netLen < 20 || size < hdrLen {
		s.stats.drop(DropInnerMalformed)
		return
	}
	payload := size - hdrLen
	mss := int(pb.GSOOptions.MSS)
	if mss <= 0 || payload <= mss {
		mss = max(payload, 1)
	}
	if hdrLen+mss > maxDatagram-innerOff {
		s.stats.drop(DropTooBig)
		return
	}
	cur := newFlatCursor(pb)
	var hdr [120]byte // the largest IPv6 header gVisor writes (40) and TCP header (60), with room
	if hdrLen > len(hdr) || cur.read(hdr[:hdrLen]) != hdrLen {
		s.stats.drop(DropInnerMalformed)
		return
	}
	ipv6 := hdr[0]>>4 == 6
	if ipv6 && netLen < 40 {
		s.stats.drop(DropInnerMalformed)
		return
	}
	tcp := hdr[netLen:hdrLen]
	seq := binary.BigEndian.Uint32(tcp[4:])
	flags := tcp[13]
	var id uint16
	if !ipv6 {
		id = binary.BigEndian.Uint16(hdr[4:])
	}
	for off, first := 0, true; first || off < payload; first = false {
		if b.full() {
			s.sendReplies(b)
		}
		n := min(mss, payload-off)
		last := off+n >= payload
		buf := b.buf()
		pkt := buf[innerOff : innerOff+hdrLen+n]
		copy(pkt, hdr[:hdrLen])
		if cur.read(pkt[hdrLen:]) != n {
			s.stats.drop(DropInnerMalformed)
			return
		}
		t := pkt[netLen:]
		binary.BigEndian.PutUint32(t[4:], seq+uint32(off))
		f := flags
		if !last {
			f &^= tcpFIN | tcpPSH
		}
		if !first {
			f &^= tcpCWR
		}
		t[13] = f
		if ipv6 {
			binary.BigEndian.PutUint16(pkt[4:], uint16(netLen-40+tcpLen+n)) // extension headers count
		} else {
			binary.BigEndian.PutUint16(pkt[2:], uint16(hdrLen+n))
			binary.BigEndian.PutUint16(pkt[4:], id)
			id++
			pkt[10], pkt[11] = 0, 0
			binary.BigEndian.PutUint16(pkt[10:], ^checksum.Checksum(pkt[:netLen], 0))
		}
		t[16], t[17] = 0, 0
		sum := checksum.Checksum(t, tcpPseudoSum(pkt, ipv6, tcpLen+n))
		binary.BigEndian.PutUint16(t[16:], ^sum)
		if dgram, gwlb, ok := s.wrapReply(endpoint, buf, innerOff, len(pkt), now, frags, true); ok {
			b.add(dgram, gwlb)
		}
		off += n
	}
}

// TCP flags the reply path reads (delayack.go) and batchSegments adjusts.
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpPSH = 0x08
	tcpACK = 0x10
	tcpCWR = 0x80
)

// tcpPseudoSum is the checksum of the TCP pseudo-header of the IP packet
// pkt, whose TCP segment is tcpLen bytes long.
func tcpPseudoSum(pkt []byte, ipv6 bool, tcpLen int) uint16 {
	var sum uint16
	if ipv6 {
		sum = checksum.Checksum(pkt[8:40], 0)
	} else {
		sum = checksum.Checksum(pkt[12:20], 0)
	}
	if ipv6 {
		// Upper-layer length (32 bits), then three zero bytes and the
		// next header.
		var t6 [8]byte
		binary.BigEndian.PutUint32(t6[:4], uint32(tcpLen))
		t6[7] = protoTCP
		return checksum.Checksum(t6[:], sum)
	}
	var tail [4]byte
	tail[1] = protoTCP
	binary.BigEndian.PutUint16(tail[2:], uint16(tcpLen))
	return checksum.Checksum(tail[:], sum)
}
