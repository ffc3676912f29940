package netstack

import (
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
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
	st  *endpointStack  // the stack of the segments held, or nil
	out checkedDelivery // between the GRO and st
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
	c.out = checkedDelivery{nic: *dp, ip4: st.ip4, ip6: st.ip6}
	c.gro.Dispatcher = &c.out
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
	c.gro.Dispatcher, c.out = nil, checkedDelivery{}
}

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

// DeliverLinkPacket implements stack.NetworkDispatcher.
func (d *checkedDelivery) DeliverLinkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	d.nic.DeliverLinkPacket(proto, pkt)
}

// discardDispatcher takes packets for a stack that is gone.
type discardDispatcher struct{}

func (discardDispatcher) DeliverNetworkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}
func (discardDispatcher) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer)    {}
