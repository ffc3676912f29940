package gwlbsim

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// ClientMTU is the MTU of simulated clients: the GWLB's 8500-byte limit.
const ClientMTU = 8500

// ClientStack is a userspace client behind a simulated endpoint: a gVisor
// stack whose every packet goes through the simulator to the appliance.
type ClientStack struct {
	Stack *stack.Stack
	ep    *Endpoint
	tap   atomic.Pointer[func([]byte) bool]
	link  *clientLink
}

// NewClientStack creates a client with the given addresses (IPv4 and/or
// IPv6) behind endpoint e, with default routes through the simulator.
func (e *Endpoint) NewClientStack(addrs ...netip.Addr) (*ClientStack, error) {
	s := stack.New(stack.Options{
		NetworkProtocols: []stack.NetworkProtocolFactory{
			ipv4.NewProtocolWithOptions(ipv4.Options{AllowExternalLoopbackTraffic: true}),
			ipv6.NewProtocolWithOptions(ipv6.Options{AllowExternalLoopbackTraffic: true}),
		},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
	})
	c := &ClientStack{Stack: s, ep: e}
	c.link = &clientLink{c: c}
	if err := s.CreateNIC(1, c.link); err != nil {
		return nil, fmt.Errorf("gwlbsim: creating client NIC: %s", err)
	}
	for _, a := range addrs {
		proto := ipv4.ProtocolNumber
		if a.Is6() {
			proto = ipv6.ProtocolNumber
		}
		pa := tcpip.ProtocolAddress{Protocol: proto, AddressWithPrefix: tcpip.AddrFromSlice(a.AsSlice()).WithPrefix()}
		if err := s.AddProtocolAddress(1, pa, stack.AddressProperties{}); err != nil {
			return nil, fmt.Errorf("gwlbsim: adding client address %s: %s", a, err)
		}
	}
	s.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: 1},
		{Destination: header.IPv6EmptySubnet, NIC: 1},
	})
	sack := tcpip.TCPSACKEnabled(true)
	_ = s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack)
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: 4096, Default: 1 << 20, Max: 8 << 20}
	_ = s.SetTransportProtocolOption(tcp.ProtocolNumber, &rcv)
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: 4096, Default: 1 << 20, Max: 8 << 20}
	_ = s.SetTransportProtocolOption(tcp.ProtocolNumber, &snd)
	e.SetReceiver(c.receive)
	e.closers = append(e.closers, s.Close)
	return c, nil
}

// SetTap installs fn to see every reply before the stack; a reply for which
// fn returns true is not given to the stack (tests use it for ICMP echo).
func (c *ClientStack) SetTap(fn func(inner []byte) bool) { c.tap.Store(&fn) }

func (c *ClientStack) receive(inner []byte) {
	if fn := c.tap.Load(); fn != nil && (*fn)(inner) {
		return
	}
	if a := c.link.acks.Load(); a != nil {
		a.received(inner)
	}
	c.link.inject(inner)
}

// DelayACKs makes the client acknowledge as a Linux kernel does, quick
// ACKs first, then delayed ones (see ackDelayer), rather than every
// segment at once as gVisor does. Call it before the client's first
// connection.
func (c *ClientStack) DelayACKs() { c.link.acks.Store(newAckDelayer(c.ep.Send)) }

// DialTCP connects from the client to dst through the appliance.
func (c *ClientStack) DialTCP(ctx context.Context, dst netip.AddrPort) (*gonet.TCPConn, error) {
	return gonet.DialContextTCP(ctx, c.Stack, fullAddr(dst), protoOf(dst.Addr()))
}

// DialTCPFrom connects from a chosen local address and port.
func (c *ClientStack) DialTCPFrom(ctx context.Context, src, dst netip.AddrPort) (*gonet.TCPConn, error) {
	return gonet.DialTCPWithBind(ctx, c.Stack, fullAddr(src), fullAddr(dst), protoOf(dst.Addr()))
}

// DialUDP opens a UDP flow from the client to dst through the appliance.
func (c *ClientStack) DialUDP(dst netip.AddrPort) (*gonet.UDPConn, error) {
	raddr := fullAddr(dst)
	return gonet.DialUDP(c.Stack, nil, &raddr, protoOf(dst.Addr()))
}

// Send sends a raw inner packet from the client through the simulator.
func (c *ClientStack) Send(inner []byte) error { return c.ep.Send(inner) }

func fullAddr(a netip.AddrPort) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFromSlice(a.Addr().AsSlice()), Port: a.Port()}
}

func protoOf(a netip.Addr) tcpip.NetworkProtocolNumber {
	if a.Is4() {
		return ipv4.ProtocolNumber
	}
	return ipv6.ProtocolNumber
}

// clientLink carries the client stack's packets to the simulator.
type clientLink struct {
	c          *ClientStack
	mu         sync.RWMutex
	dispatcher stack.NetworkDispatcher
	acks       atomic.Pointer[ackDelayer] // nil: every packet goes at once
}

func (l *clientLink) inject(pkt []byte) {
	l.mu.RLock()
	d := l.dispatcher
	l.mu.RUnlock()
	if d == nil || len(pkt) == 0 {
		return
	}
	proto := header.IPv4ProtocolNumber
	if pkt[0]>>4 == 6 {
		proto = header.IPv6ProtocolNumber
	}
	pb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(pkt)})
	d.DeliverNetworkPacket(proto, pb)
	pb.DecRef()
}

func (l *clientLink) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	n := 0
	for _, pb := range pkts.AsSlice() {
		v := pb.ToView()
		var err error
		if a := l.acks.Load(); a != nil {
			err = a.write(v.AsSlice())
		} else {
			err = l.c.ep.Send(v.AsSlice())
		}
		v.Release()
		if err != nil {
			break
		}
		n++
	}
	if n == 0 {
		return 0, &tcpip.ErrClosedForSend{}
	}
	return n, nil
}

func (*clientLink) MTU() uint32                                  { return ClientMTU }
func (*clientLink) SetMTU(uint32)                                {}
func (*clientLink) MaxHeaderLength() uint16                      { return 0 }
func (*clientLink) LinkAddress() tcpip.LinkAddress               { return "" }
func (*clientLink) SetLinkAddress(tcpip.LinkAddress)             {}
func (*clientLink) Capabilities() stack.LinkEndpointCapabilities { return 0 }
func (l *clientLink) Attach(d stack.NetworkDispatcher) {
	l.mu.Lock()
	l.dispatcher = d
	l.mu.Unlock()
}
func (l *clientLink) IsAttached() bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.dispatcher != nil
}
func (*clientLink) Wait()                                   {}
func (*clientLink) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }
func (*clientLink) AddHeader(*stack.PacketBuffer)           {}
func (*clientLink) ParseHeader(*stack.PacketBuffer) bool    { return true }
func (*clientLink) Close()                                  {}
func (*clientLink) SetOnCloseAction(func())                 {}
