package netstack

import (
	"bytes"
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// merger6 is the coalescer's GRO for IPv6: it merges a flow's in-order TCP
// segments of one batch as gVisor's GRO does, but it sees only what the
// coalescer hands it (TCP right after the fixed header, no extension
// header), so it needs none of gVisor's extension-header walk. That walk
// (GRO.dispatch6) cloned every segment's buffer into an iterator and boxed
// the header it found: two allocations per IPv6 segment, 64 per batch of
// 32 (docs/benchmarks.md, "IPv6 GRO without allocations").
//
// A segment joins the one held for its flow only when the stack would have
// taken the pair as one: the same addresses, ports, traffic class, flow
// label and hop limit; no flag but ACK and PSH; the same ACK number, TCP
// header length and options (timestamps included); its sequence number
// right after the held one's end; a TCP checksum that holds; and the merged
// packet under 64 KiB. Anything else of the flow goes in after what is
// held, alone and unchanged, so the stack sees every byte once, in order,
// and checks what was not checked here.
type merger6 struct {
	held [mergeFlows]held6
	n    int // held[:n] are in use, oldest first
	// out takes what leaves; nil drops it (a stack gone meanwhile).
	out stack.NetworkDispatcher
}

// mergeFlows is how many flows a merger holds a segment of at once; a
// segment of a further flow goes to the stack alone (until the batch's
// end lets the held ones go). gVisor's GRO holds up to 64 in 8 buckets.
const mergeFlows = 16

// maxMerged is the largest merged packet: an IPv6 payload length must
// fit in 16 bits, and gVisor's GRO stops at the same size.
const maxMerged = 1 << 16

type held6 struct {
	pb      *stack.PacketBuffer
	hdr     []byte // the IPv6 and TCP headers, in pb's first view
	first   int    // the first segment's TCP payload length
	nextSeq uint32 // the sequence number right after what pb holds
}

// seg6 is what merger6 reads of a segment before it decides.
type seg6 struct {
	tcp     header.TCP
	payload int
	seq     uint32
}

// parse6 reads pkt, an IPv6 packet as the coalescer hands it, as a TCP
// segment: checked says whether it is whole and its checksum holds (the
// stack then need not sum it again), merges whether it may also start or
// join a merge. The checksum is summed last: a packet that fails the cheap
// tests is the stack's to judge.
func parse6(pkt []byte) (s seg6, checked, merges bool) {
	if len(pkt) < header.IPv6MinimumSize+header.TCPMinimumSize || pkt[0]>>4 != 6 || pkt[6] != protoTCP ||
		int(binary.BigEndian.Uint16(pkt[4:]))+header.IPv6MinimumSize != len(pkt) {
		return seg6{}, false, false
	}
	tcp := header.TCP(pkt[header.IPv6MinimumSize:])
	off := int(tcp.DataOffset())
	if off < header.TCPMinimumSize || off > len(tcp) {
		return seg6{}, false, false
	}
	ip := header.IPv6(pkt)
	sum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(tcp)))
	if checksum.Checksum(tcp, sum) != 0xffff {
		return seg6{}, false, false
	}
	f := tcp.Flags()
	merges = len(tcp) > off && (f == header.TCPFlagAck || f == header.TCPFlagAck|header.TCPFlagPsh)
	return seg6{tcp: tcp, payload: len(tcp) - off, seq: tcp.SequenceNumber()}, true, merges
}

// sameFlow6 reports whether the IPv6 TCP packets a and b (as parse6 took
// them, or at least 44 bytes of fixed header and ports) are of one flow.
func sameFlow6(a, b []byte) bool {
	return bytes.Equal(a[8:header.IPv6MinimumSize+4], b[8:header.IPv6MinimumSize+4])
}

// find returns the index of the segment held for pkt's flow, or -1.
// pkt has at least a fixed header and ports.
func (m *merger6) find(pkt []byte) int {
	for i := range m.n {
		if sameFlow6(m.held[i].hdr, pkt) {
			return i
		}
	}
	return -1
}

// enqueue takes the IPv6 packet pkt (TCP after the fixed header, cut to
// its length); pkt is copied.
func (m *merger6) enqueue(pkt []byte) {
	if len(pkt) < header.IPv6MinimumSize+4 {
		m.deliver(pkt, false) // not even ports: no flow to keep in order
		return
	}
	i := m.find(pkt)
	s, checked, merges := parse6(pkt)
	if !merges {
		if i >= 0 {
			m.release(i)
		}
		m.deliver(pkt, checked)
		return
	}
	if i >= 0 && !m.join(&m.held[i], pkt, &s) {
		m.release(i)
		i = -1
	}
	if i < 0 {
		if s.tcp.Flags()&header.TCPFlagPsh != 0 {
			m.deliver(pkt, true) // it would leave at once: nothing to hold
			return
		}
		if m.n == len(m.held) {
			// Full: this flow's segment goes alone. Evicting the oldest
			// flow instead let 17 interleaved flows each lose its slot
			// before its next segment came, and nothing merged at all
			// (review r3s28 F2).
			m.deliver(pkt, true)
			return
		}
		i = m.n
		m.n++
		h := &m.held[i]
		h.pb = stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(pkt)})
		h.pb.NetworkProtocolNumber = header.IPv6ProtocolNumber
		h.pb.RXChecksumValidated = true
		h.hdr, _ = h.pb.Data().PullUp(len(pkt) - s.payload)
		h.first = s.payload
		h.nextSeq = s.seq + uint32(s.payload)
		return
	}
	h := &m.held[i]
	// gVisor's GRO lets a merge go once a segment differs in size from the
	// first (most often the last of a write) or asks for a push.
	if s.payload != h.first || s.tcp.Flags()&header.TCPFlagPsh != 0 {
		m.release(i)
	}
}

// join appends the payload of the segment pkt, read into s, to h and
// reports true, if the stack would take them as one (see merger6);
// otherwise it reports false and changes nothing.
func (m *merger6) join(h *held6, pkt []byte, s *seg6) bool {
	hdrLen := len(pkt) - s.payload
	if len(h.hdr) != hdrLen || s.seq != h.nextSeq || h.pb.Data().Size()+s.payload >= maxMerged ||
		!bytes.Equal(h.hdr[:4], pkt[:4]) || h.hdr[7] != pkt[7] { // version, traffic class, flow label; hop limit
		return false
	}
	ht := header.TCP(h.hdr[header.IPv6MinimumSize:])
	if ht.AckNumber() != s.tcp.AckNumber() || !bytes.Equal(ht[header.TCPMinimumSize:], s.tcp[header.TCPMinimumSize:hdrLen-header.IPv6MinimumSize]) {
		return false
	}
	h.pb.Data().AppendView(buffer.NewViewWithData(pkt[hdrLen:]))
	ip := header.IPv6(h.hdr)
	ip.SetPayloadLength(ip.PayloadLength() + uint16(s.payload))
	// The latest window stands, as it would have had the segments come
	// one by one; the checksum is left as it was: the packet is marked
	// checked (checkedDelivery).
	ht.SetWindowSize(s.tcp.WindowSize())
	ht.SetFlags(uint8(ht.Flags() | s.tcp.Flags()&header.TCPFlagPsh))
	h.nextSeq += uint32(s.payload)
	return true
}

// release lets the segment held at i go.
func (m *merger6) release(i int) {
	pb := m.held[i].pb
	copy(m.held[i:m.n], m.held[i+1:m.n])
	m.n--
	m.held[m.n] = held6{}
	m.send(pb)
	pb.DecRef()
}

// deliver hands pkt over alone: checked says whether parse6 found its
// checksum good.
func (m *merger6) deliver(pkt []byte, checked bool) {
	pb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(pkt)})
	pb.NetworkProtocolNumber = header.IPv6ProtocolNumber
	pb.RXChecksumValidated = checked
	m.send(pb)
	pb.DecRef()
}

func (m *merger6) send(pb *stack.PacketBuffer) {
	if m.out != nil {
		m.out.DeliverNetworkPacket(header.IPv6ProtocolNumber, pb)
	}
}

// flush lets every segment held go, oldest first.
func (m *merger6) flush() {
	for m.n > 0 {
		m.release(0)
	}
}
