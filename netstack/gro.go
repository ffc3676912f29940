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
// took in one recvmmsg batch into fewer, bigger ones (gVisor's GRO) before
// its stack sees them: TCP then runs, acknowledges and wakes its
// processors once per merged segment instead of once per packet. Nothing
// waits for more packets: what a batch brought is delivered before the
// reader reads again. A reader's coalescer serves one stack at a time,
// entered read-locked like any delivery, and is used by that reader alone.
type coalescer struct {
	gro gro.GRO
	st  *endpointStack // the stack of the segments held, or nil
	fix checksumFixer  // between the GRO and st's dispatcher
}

func newCoalescer() *coalescer {
	c := &coalescer{}
	c.gro.Init(true)
	return c
}

// hold gives the TCP packet pkt (not a fragment) to st by way of the
// coalescer. The caller holds st open (st.mu read-locked); pkt is copied.
func (c *coalescer) hold(st *endpointStack, pkt []byte, ipv6 bool) {
	if c.st != st {
		c.flush()
	}
	dp := st.link.dispatcher.Load()
	if dp == nil {
		return // detached: dropped, as inject would
	}
	c.st = st
	c.fix.next = *dp
	c.gro.Dispatcher = &c.fix
	pb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(pkt)})
	pb.NetworkProtocolNumber = header.IPv4ProtocolNumber
	if ipv6 {
		pb.NetworkProtocolNumber = header.IPv6ProtocolNumber
	}
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
	c.st = nil
	st.mu.RLock()
	if st.closed {
		c.gro.Dispatcher = discardDispatcher{}
	}
	c.gro.Flush()
	st.mu.RUnlock()
	c.gro.Dispatcher, c.fix.next = nil, nil
}

// checksumFixer makes the checksums of the segments GRO merged true again
// before they reach the stack. GRO checks each segment's checksums, merges
// and fixes up the lengths, and leaves the checksums for a link that
// promises the stack they were checked (RX checksum offload); this link
// makes no such promise, so that the stack still checks every packet that
// did not come through GRO, and the merged ones must pass its check too:
// gVisor's NIC sets RXChecksumValidated from the link's capabilities on
// every packet it takes in, whatever GRO marked (without this fixer,
// every merged segment is dropped and an upload stalls).
type checksumFixer struct {
	next stack.NetworkDispatcher
}

// DeliverNetworkPacket implements stack.NetworkDispatcher.
func (f *checksumFixer) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	// GRO marks what it checked (and so may have merged); anything else
	// went through it untouched.
	if pkt.RXChecksumValidated {
		fixMerged(pkt)
	}
	f.next.DeliverNetworkPacket(proto, pkt)
}

// DeliverLinkPacket implements stack.NetworkDispatcher.
func (f *checksumFixer) DeliverLinkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	f.next.DeliverLinkPacket(proto, pkt)
}

// fixMerged recomputes the IP header and TCP checksums of a TCP segment GRO
// checked. An IPv4 segment whose header checksum still holds was not merged
// (merging changes the total length) and is left as it is; IPv6 has no such
// tell, and is recomputed whatever GRO did.
func fixMerged(pkt *stack.PacketBuffer) {
	data := pkt.Data()
	first, ok := data.PullUp(1)
	if !ok {
		return
	}
	var ipLen int
	var src, dst tcpip.Address
	switch first[0] >> 4 {
	case 4:
		hdr, ok := data.PullUp(header.IPv4MinimumSize)
		if !ok {
			return
		}
		ip := header.IPv4(hdr)
		if ip.IsChecksumValid() {
			return
		}
		ip.SetChecksum(0)
		ip.SetChecksum(^ip.CalculateChecksum())
		ipLen, src, dst = header.IPv4MinimumSize, ip.SourceAddress(), ip.DestinationAddress()
	case 6:
		hdr, ok := data.PullUp(header.IPv6MinimumSize)
		if !ok {
			return
		}
		ip := header.IPv6(hdr)
		if ip.NextHeader() != uint8(header.TCPProtocolNumber) {
			return // never held (see deliver): extension headers move the TCP header
		}
		ipLen, src, dst = header.IPv6MinimumSize, ip.SourceAddress(), ip.DestinationAddress()
	default:
		return
	}
	hdr, ok := data.PullUp(ipLen + header.TCPMinimumSize)
	if !ok {
		return
	}
	tcp := header.TCP(hdr[ipLen:])
	tcpLen := data.Size() - ipLen
	tcp.SetChecksum(0)
	sum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(tcpLen))
	tcp.SetChecksum(^checksum.Combine(sum, data.ChecksumAtOffset(ipLen)))
}

// discardDispatcher takes packets for a stack that is gone.
type discardDispatcher struct{}

func (discardDispatcher) DeliverNetworkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}
func (discardDispatcher) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer)    {}
