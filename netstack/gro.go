package netstack

import (
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"
)

// coalescer merges the consecutive TCP segments of a flow that one reader
// took in one recvmmsg batch into fewer, bigger ones (gVisor's GRO for
// IPv4, merger6 for IPv6) before its stack sees them: TCP then runs,
// acknowledges and wakes its processors once per merged segment instead of
// once per packet. Nothing waits for more packets: what a batch brought is
// delivered before the reader reads again. A reader's coalescer serves one
// stack at a time, entered read-locked like any delivery, and is used by
// that reader alone.
type coalescer struct {
	gro gro.GRO         // IPv4's
	m6  merger6         // IPv6's (gro6.go)
	st  *endpointStack  // the stack of the segments held, or nil
	out checkedDelivery // between the GRO and st
	// acks holds the last pure ACK of each flow in the batch that has one
	// pending (see "Thinning pure ACKs"), in the order the flows came.
	acks []heldAck
	// flows are the flows of the segments held, each once per run of its
	// segments: whether one is there (holds) decides whether a segment
	// that bypasses the batch must flush it first.
	flows []ackFlow
}

func newCoalescer() *coalescer {
	c := &coalescer{acks: make([]heldAck, 0, maxBatch), flows: make([]ackFlow, 0, maxBatch)}
	c.gro.Init(true)
	return c
}

// hold gives the TCP packet pkt, as ParsePacket read it into p (not a
// fragment; IPv6 without extension headers; pkt cut to p.Len), to st by
// way of the coalescer. The caller holds st open (st.mu read-locked); pkt
// is copied.
func (c *coalescer) hold(st *endpointStack, pkt []byte, p *Packet) {
	if c.st != st {
		c.flush()
	}
	dp := st.link.dispatcher.Load()
	if dp == nil {
		return // detached: dropped, as inject would
	}
	c.st = st
	c.out = checkedDelivery{nic: *dp, ip4: st.ip4, ip6: st.ip6}
	c.gro.Dispatcher = &c.out
	c.m6.out = &c.out
	flow := ackFlow{p.Src, p.Dst, p.SrcPort, p.DstPort}
	if n := len(c.flows); n == 0 || c.flows[n-1] != flow {
		c.flows = append(c.flows, flow)
	}
	seq, ack, thinnable := pureAck(pkt, p)
	for i := range c.acks {
		h := &c.acks[i]
		if h.flow != flow {
			continue
		}
		if thinnable && seq == h.seq && seqAfter(ack, h.ack) {
			h.set(flow, seq, ack, pkt, p.IPv6) // the one held is dropped, as if lost on the way
			return
		}
		c.enqueue(h.pkt(), h.ipv6) // what came first goes in first
		c.acks = append(c.acks[:i], c.acks[i+1:]...)
		break
	}
	if thinnable && len(c.acks) < cap(c.acks) {
		c.acks = c.acks[:len(c.acks)+1]
		c.acks[len(c.acks)-1].set(flow, seq, ack, pkt, p.IPv6)
		return
	}
	c.enqueue(pkt, p.IPv6)
}

// holds reports whether the coalescer holds a segment of p's flow for st.
func (c *coalescer) holds(st *endpointStack, p *Packet) bool {
	if c.st != st {
		return false
	}
	flow := ackFlow{p.Src, p.Dst, p.SrcPort, p.DstPort}
	for i := range c.flows {
		if c.flows[i] == flow {
			return true
		}
	}
	return false
}

// releaseAcks hands the ACKs held to the GRO.
func (c *coalescer) releaseAcks() {
	for i := range c.acks {
		c.enqueue(c.acks[i].pkt(), c.acks[i].ipv6)
	}
	c.acks = c.acks[:0]
}

func (c *coalescer) enqueue(pkt []byte, ipv6 bool) {
	if ipv6 {
		c.m6.enqueue(pkt)
		return
	}
	pb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(pkt)})
	pb.NetworkProtocolNumber = header.IPv4ProtocolNumber
	c.gro.Enqueue(pb)
	pb.DecRef()
}

// flush delivers what the coalescer holds to its stack, unless the stack
// closed since: then the segments are dropped, as any packet for a closed
// stack is.
func (c *coalescer) flush() {
	st := c.st
	if st == nil {
		return
	}
	st.mu.RLock()
	c.flushLocked(st)
	st.mu.RUnlock()
}

// flushLocked is flush for a caller that holds st read-locked; it does
// nothing if what the coalescer holds is another stack's.
func (c *coalescer) flushLocked(st *endpointStack) {
	if c.st != st || st == nil {
		return
	}
	c.st = nil
	if st.closed {
		c.gro.Dispatcher, c.m6.out = discardDispatcher{}, nil
	}
	c.releaseAcks()
	c.flows = c.flows[:0]
	// gVisor's GRO.Flush hands over only the first packet of each of its
	// buckets (removing one clears its link to the next: google/gvisor
	// PR 14081, not in the version used here), and a bucket holds up to 8
	// flows' packets. One call left the others held: they reached the
	// stack only with the reader's next batch, or, if that batch was
	// another endpoint's, that endpoint's stack (review r3s28 F1).
	for range groBucketSize {
		c.gro.Flush()
	}
	c.m6.flush()
	c.gro.Dispatcher, c.m6.out, c.out = nil, nil, checkedDelivery{}
}

// groBucketSize is how many packets one of gVisor's GRO buckets holds at
// most (gro.groBucketSize, unexported): a flush per packet empties them.
const groBucketSize = 8

// checkedDelivery hands what GRO lets out to the stack. GRO checks the IP
// and TCP checksums of every segment before it merges any, and marks what
// passed RXChecksumValidated: such a packet goes straight to the stack's IP
// endpoint with that mark, so that its bytes are summed once, not three
// times (by GRO, to mend the merged packet's checksums, and by the stack's
// TCP). The NIC cannot be the way in for it: gVisor's NIC sets the mark
// from the link's capabilities on every packet, and this link claims no RX
// checksum offload, so that everything else GRO lets out unmarked (a bad
// checksum, a malformed header) goes through the NIC and is checked by the
// stack as ever. Going around the NIC skips only its receive counters and
// packet sockets, which no stack here has; the IP endpoint still drops
// packets while it is disabled.
type checkedDelivery struct {
	nic      stack.NetworkDispatcher
	ip4, ip6 stack.NetworkEndpoint // the stack's, or nil: then all goes through nic
}

// DeliverNetworkPacket implements stack.NetworkDispatcher.
func (d *checkedDelivery) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	compactTiny(pkt)
	if pkt.RXChecksumValidated {
		ep := d.ip4
		if proto == header.IPv6ProtocolNumber {
			ep = d.ip6
		}
		if ep != nil {
			ep.HandlePacket(pkt)
			return
		}
	}
	d.nic.DeliverNetworkPacket(proto, pkt)
}

// minMergedView is the fewest bytes a view of a merged segment may hold
// on average for the segment to reach the stack as GRO built it.
const minMergedView = 512

// compactTiny copies a segment GRO merged from tiny ones into one chunk.
// GRO appends each merged packet's bytes as a view of the packet's own
// chunk (64 bytes at least, besides the view's and chunk's structs), while
// gVisor's TCP counts a segment, against the receive buffer and the
// out-of-order share, as its bytes plus one packet buffer: a 1-byte
// segment merged into another was counted as 1 byte and held ~150, and a
// connection ~14 times the documented 192 KiB past a hole. Copied, the
// segment costs what it is counted as, as an unmerged one does. Views of
// full-sized segments are left as they are (no copy), their fixed costs
// small beside their bytes; a segment of tiny views has few bytes to copy.
func compactTiny(pkt *stack.PacketBuffer) {
	size := pkt.Data().Size()
	vl, _ := pkt.AsViewList()
	views := 0
	for v := vl.Front(); v != nil; v = v.Next() {
		if views++; views > 1 && views*minMergedView > size {
			pkt.Data().PullUp(size) // merges every view into one
			return
		}
	}
}

// DeliverLinkPacket implements stack.NetworkDispatcher.
func (d *checkedDelivery) DeliverLinkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	d.nic.DeliverLinkPacket(proto, pkt)
}

// discardDispatcher takes packets for a stack that is gone.
type discardDispatcher struct{}

func (discardDispatcher) DeliverNetworkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}
func (discardDispatcher) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer)    {}

// Thinning pure ACKs. A client that receives a download acknowledges every
// other segment or so, and one reader's batch often brings several such
// ACKs of a flow. TCP sends for each ACK it handles, so each became a send
// of a few segments, and a system call. So the coalescer holds a flow's
// pure ACK until the batch ends or another packet of the flow comes; if
// that is a pure ACK that moves the acknowledgement forward, it takes the
// held one's place and the held one is dropped, as if lost on the way,
// which TCP is made to bear: the later ACK acknowledges the earlier one's
// bytes too, its window and timestamp are the latest, gVisor grows the
// congestion window by the segments acknowledged rather than by the ACKs
// counted, and had the earlier one repeated an even earlier ACK (a
// duplicate, which fast retransmit counts), the forward one would end
// that run of duplicates anyway. Anything else of the flow goes in after
// the held ACK, in order (a packet that goes around the coalescer too). A
// duplicate after the held ACK, SACK blocks, any flag but ACK (ECN's
// included), any option but timestamps, IPv4 options and checksums that do
// not hold (IP or TCP) are never thinned, so nothing the stack would
// refuse replaces an ACK it would take. The flow table and the capture
// tap see every packet before this.

// maxHeldAck is the largest pure ACK held: an IPv6 header and a TCP header
// with the longest options.
const maxHeldAck = header.IPv6MinimumSize + header.TCPHeaderMaximumSize

// ackFlow names a flow among the ACKs held: addresses (IPv4 ones mapped,
// so that the families differ) and ports.
type ackFlow struct {
	src, dst     [16]byte
	sport, dport uint16
}

// heldAck is a flow's pure ACK held back.
type heldAck struct {
	flow     ackFlow
	seq, ack uint32
	ipv6     bool
	n        int
	buf      [maxHeldAck]byte
}

func (h *heldAck) set(flow ackFlow, seq, ack uint32, pkt []byte, ipv6 bool) {
	h.flow, h.seq, h.ack, h.ipv6, h.n = flow, seq, ack, ipv6, copy(h.buf[:], pkt)
}

func (h *heldAck) pkt() []byte { return h.buf[:h.n] }

// pureAck reads the sequence and acknowledgement numbers of pkt, a TCP
// packet as hold takes it, and whether it is a pure ACK that thinning may
// replace or drop: nothing but the ACK flag, no option but timestamps, an
// IPv4 header without options, and checksums that hold, so that nothing
// the stack would refuse replaces an ACK it would take.
func pureAck(pkt []byte, p *Packet) (seq, ack uint32, thinnable bool) {
	tcp := header.TCP(pkt[p.Payload:])
	seq, ack = tcp.SequenceNumber(), tcp.AckNumber()
	// The cheap tests first: most TCP packets here carry data.
	if len(pkt) > maxHeldAck || header.TCPFlags(p.TCPFlags) != header.TCPFlagAck || int(tcp.DataOffset()) != len(tcp) ||
		!onlyTimestamps(tcp.Options()) {
		return seq, ack, false
	}
	if !p.IPv6 && p.Payload != header.IPv4MinimumSize {
		return seq, ack, false
	}
	src, dst, ok := ipAddrs(p, pkt)
	if !ok {
		return seq, ack, false
	}
	sum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(tcp)))
	return seq, ack, checksum.Checksum(tcp, sum) == 0xffff
}

// onlyTimestamps reports whether opts holds no TCP option but padding and
// timestamps.
func onlyTimestamps(opts []byte) bool {
	for i := 0; i < len(opts); {
		switch opts[i] {
		case header.TCPOptionEOL:
			return true
		case header.TCPOptionNOP:
			i++
		case header.TCPOptionTS:
			if i+header.TCPOptionTSLength > len(opts) || opts[i+1] != header.TCPOptionTSLength {
				return false
			}
			i += header.TCPOptionTSLength
		default:
			return false
		}
	}
	return true
}

// coalescable reports whether the inner packet pkt, as ParsePacket read it
// into p, goes to the stack by way of a coalescer: TCP, not a fragment, and
// for IPv6 with TCP right after the fixed header. GRO would merge packets
// with extension headers too, but it checks the TCP checksum against the
// fixed header's destination, which a routing header would make the wrong
// one, and the stack trusts what GRO checked (see checkedDelivery).
func coalescable(p *Packet, pkt []byte) bool {
	return p.Proto == protoTCP && !p.ICMPError && !p.Fragment && !p.MoreFragments && (!p.IPv6 || pkt[6] == protoTCP)
}
