package netstack

import (
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/gwlbproxy/gwlbproxy/internal/monoclock"
)

// maxDatagram is the largest GENEVE datagram the GWLB carries, outer IPv4
// and UDP headers included.
const maxDatagram = 8500

// DefaultMTU is the inner MTU: 8500 less the outer IPv4 and UDP headers and
// the largest GENEVE header (options of any size are echoed), so no reply
// can exceed what the GWLB carries, whatever options a flow has.
const DefaultMTU = maxDatagram - outerHeadroom - MaxGeneveHeader

// replyBufPool holds buffers for one outgoing datagram: outer headroom, the
// largest GENEVE header, and an inner packet of up to the MTU.
var replyBufPool = sync.Pool{New: func() any {
	b := make([]byte, maxDatagram)
	return &b
}}

// link is the gVisor link endpoint of one GWLB endpoint's stack. Inbound
// packets are injected by the GENEVE readers; outbound packets are wrapped
// in their flow's GENEVE header and written straight to the return path, so
// there is no queue to overflow and no extra copy.
type link struct {
	srv        *Server
	endpoint   uint64
	mtu        uint32
	dispatcher atomic.Pointer[stack.NetworkDispatcher] // nil: detached
	// closed is set when the stack is closed for idling: nothing of its
	// endpoint is left in the flow table, so what it still writes (resets
	// of the connections it aborts) is discarded, not counted as replies
	// without a flow.
	closed atomic.Bool
	// frags lets a reply's later fragments, which the stack writes one
	// call at a time, find the flow of their first.
	frags fragTable
}

var _ stack.LinkEndpoint = (*link)(nil)

func (l *link) inject(pkt []byte, ipv6 bool) {
	dp := l.dispatcher.Load()
	if dp == nil {
		return
	}
	d := *dp
	pb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(pkt)})
	proto := header.IPv4ProtocolNumber
	if ipv6 {
		proto = header.IPv6ProtocolNumber
	}
	d.DeliverNetworkPacket(proto, pb)
	pb.DecRef()
}

var _ stack.QueueingDiscipline = (*link)(nil)

// WritePacket implements stack.QueueingDiscipline. The link is its NIC's
// queueing discipline (endpointStack.configure), so every packet the stack sends
// comes here, one call each. gVisor's default discipline would put each one
// in a list of its own for WritePackets: an allocation per packet.
func (l *link) WritePacket(pb *stack.PacketBuffer) tcpip.Error {
	if l.closed.Load() {
		return nil
	}
	b := getReplyBatch()
	l.batch(b, pb, monoclock.Now())
	l.srv.sendReplies(b)
	b.release()
	return nil
}

// WritePackets implements stack.LinkWriter.
func (l *link) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	if l.closed.Load() {
		return pkts.Len(), nil
	}
	b := getReplyBatch()
	now := monoclock.Now()
	for _, pb := range pkts.AsSlice() {
		if b.full() {
			l.srv.sendReplies(b)
		}
		l.batch(b, pb, now)
	}
	l.srv.sendReplies(b)
	b.release()
	return pkts.Len(), nil
}

// batch adds pb to b: cut at the MSS first when TCP handed it over for GSO.
func (l *link) batch(b *replyBatch, pb *stack.PacketBuffer, now int64) {
	if pb.GSOOptions.Type != stack.GSONone {
		l.srv.batchSegments(b, l.endpoint, pb, now, &l.frags)
		return
	}
	l.srv.batchReply(b, l.endpoint, pb, now, &l.frags)
}

// GSOMaxSize implements stack.GSOEndpoint.
func (*link) GSOMaxSize() uint32 { return gsoMaxSize }

// SupportedGSO implements stack.GSOEndpoint: host GSO, done by the link.
// TCP hands over what it has to send as one segment of up to 64 KiB, its
// checksum left undone; batchSegments cuts it at the MSS, checksums every
// packet, and the packets leave together in one sendmmsg (or UDP GSO
// send), not a system call each. Only TCP uses it: every other packet
// still arrives whole and with its checksums filled.
func (*link) SupportedGSO() stack.SupportedGSO { return stack.HostGSOSupported }

// MTU implements stack.NetworkLinkEndpoint.
func (l *link) MTU() uint32 { return l.mtu }

// SetMTU implements stack.NetworkLinkEndpoint.
func (l *link) SetMTU(mtu uint32) { l.mtu = mtu }

// MaxHeaderLength implements stack.NetworkLinkEndpoint: there is no link
// header; GENEVE is added on a copy.
func (*link) MaxHeaderLength() uint16 { return 0 }

// LinkAddress implements stack.NetworkLinkEndpoint.
func (*link) LinkAddress() tcpip.LinkAddress { return "" }

// SetLinkAddress implements stack.NetworkLinkEndpoint.
func (*link) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities implements stack.NetworkLinkEndpoint. No checksum offload:
// the stack must fill real checksums, the GWLB passes packets on as they are.
func (*link) Capabilities() stack.LinkEndpointCapabilities { return 0 }

// Attach implements stack.NetworkLinkEndpoint.
func (l *link) Attach(d stack.NetworkDispatcher) {
	if d == nil {
		l.dispatcher.Store(nil)
		return
	}
	l.dispatcher.Store(&d)
}

// IsAttached implements stack.NetworkLinkEndpoint.
func (l *link) IsAttached() bool { return l.dispatcher.Load() != nil }

// Wait implements stack.NetworkLinkEndpoint; the link owns no goroutines.
func (*link) Wait() {}

// ARPHardwareType implements stack.NetworkLinkEndpoint.
func (*link) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }

// AddHeader implements stack.NetworkLinkEndpoint.
func (*link) AddHeader(*stack.PacketBuffer) {}

// ParseHeader implements stack.NetworkLinkEndpoint.
func (*link) ParseHeader(*stack.PacketBuffer) bool { return true }

// Close implements stack.NetworkLinkEndpoint and stack.QueueingDiscipline.
// Removing the NIC calls it twice, once as each, with writes possibly in
// flight: should it ever do something, it must bear that.
func (*link) Close() {}

// SetOnCloseAction implements stack.NetworkLinkEndpoint.
func (*link) SetOnCloseAction(func()) {}
