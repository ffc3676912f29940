package netstack

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// TCPOptions tunes the TCP of every stack.
type TCPOptions struct {
	// ReceiveBuffer and SendBuffer are the per-connection buffer caps in
	// bytes (default 4 MiB each); buffers start at initialTCPBuffer (or the
	// cap, if smaller) and grow with the flow's bandwidth-delay product
	// (receive buffer moderation, send buffer auto-tuning).
	ReceiveBuffer int
	SendBuffer    int
	// MaxInFlight bounds the connection attempts a stack holds while the
	// handler dials the destination (default 16384). Beyond it SYNs are
	// dropped, counted as tcp_setups_full, and the client retries; a small
	// bound would stall every new connection behind a few blackholed
	// destinations.
	MaxInFlight int
	// KeepaliveIdle, KeepaliveInterval and KeepaliveCount set the keepalive
	// the stack sends to clients. The idle time must stay below the GWLB's
	// TCP idle timeout so an idle but live flow is never forgotten
	// (default: half the TCP idle timeout, every 30 s, 5 probes).
	KeepaliveIdle     time.Duration
	KeepaliveInterval time.Duration
	KeepaliveCount    int
	// ClosedSendTimeout bounds how long a connection its handler has
	// closed may keep bytes the client does not acknowledge: a client that
	// keeps its window shut, answering the stack's zero-window probes,
	// would otherwise hold them, up to a send buffer, for good (default
	// DefaultClosedSendTimeout; shorter under memory pressure, see
	// closedSendTimeout). The appliance passes its write-stall timeout.
	// It bounds the same wait while the handler still has the connection
	// too (no shorter under pressure then: the stall watch and the
	// reclaim see a live connection): a client that vanished with bytes
	// in flight is timed out by it, as keepalives do not run then.
	ClosedSendTimeout time.Duration
}

// DefaultClosedSendTimeout is the default of TCPOptions.ClosedSendTimeout:
// the proxy's default write-stall timeout, which bounds the same wait
// while the handler still writes.
const DefaultClosedSendTimeout = 15 * time.Minute

func (o *TCPOptions) setDefaults(tcpIdle time.Duration) {
	if o.ReceiveBuffer <= 0 {
		o.ReceiveBuffer = 4 << 20
	}
	if o.SendBuffer <= 0 {
		o.SendBuffer = 4 << 20
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 16384
	}
	if o.KeepaliveIdle <= 0 || o.KeepaliveIdle >= tcpIdle {
		o.KeepaliveIdle = tcpIdle / 2
	}
	if o.KeepaliveInterval <= 0 {
		o.KeepaliveInterval = 30 * time.Second
	}
	if o.KeepaliveCount <= 0 {
		o.KeepaliveCount = 5
	}
	if o.ClosedSendTimeout <= 0 {
		o.ClosedSendTimeout = DefaultClosedSendTimeout
	}
}

const nicID = 1

// initialTCPBuffer is the buffer a connection starts with, each way. The
// receive buffer bounds the out-of-order bytes the stack queues for a
// connection (three quarters of it) from its first segment on: a client
// sending past a hole it never fills holds that much for as long as it
// keeps the connection alive, with no write waiting for the write-stall
// watch to see. Started at the 4 MiB cap, that was 3 MiB per connection
// with no warm-up; moderation grows the buffer of a flow that moves bytes.
const initialTCPBuffer = 256 << 10

// stackTimeWait is how long a stack keeps a connection it closed first in
// TIME_WAIT (gVisor's default is 60 s). The stack closes first whenever the
// destination does, and while in TIME_WAIT it drops a client's SYN that
// reopens the 5-tuple: gVisor passes such a SYN on only to a listening
// endpoint, and the forwarder is none. A client reusing its port towards
// the same destination then waited 60 s of SYN retries, with nothing
// answered, recorded or counted. TIME_WAIT guards against an old
// incarnation's late segments; here the GWLB keeps a flow on one target,
// so there is no other path for them to linger on, and the client's own
// kernel holds its own TIME_WAIT (or chose to reuse the port). A second
// covers the ACK of the client's FIN being lost and its FIN retransmitted
// (the first retransmission comes after about the RTO, 200 ms to 1 s), and
// a client's SYN retried after 1 s then gets through.
const stackTimeWait = time.Second

// endpointStack is the gVisor stack of one GWLB endpoint. Each endpoint has
// its own, so overlapping client CIDRs behind different endpoints never meet.
type endpointStack struct {
	srv      *Server
	endpoint uint64
	stack    *stack.Stack
	link     *link
	// ip4 and ip6 are the stack's IP endpoints, where segments GRO
	// checked go in (see checkedDelivery).
	ip4, ip6 stack.NetworkEndpoint
	// mu is held shared by every GENEVE reader handing a packet in, and
	// exclusively to close the stack, so that no packet is ever handed to
	// a closed stack.
	mu     sync.RWMutex
	closed bool // under mu
	// lastPacket is when a packet last came for the endpoint (monoclock.Now,
	// to within packetStampEvery).
	lastPacket atomic.Int64
	// inFrags lets the later fragments of a client's datagram, which carry
	// no ports, follow the flow their first fragment was taken in under.
	inFrags fragTable
	// setups shares the slots of connections being set up (setups.go).
	setups setupShares
}

// packetStampEvery is how stale endpointStack.lastPacket may be: the
// readers of every core store it at most this often, not once a packet.
const packetStampEvery = int64(10 * time.Millisecond)

// sawPacket notes a packet for the endpoint at now.
func (st *endpointStack) sawPacket(now int64) {
	if now-st.lastPacket.Load() > packetStampEvery {
		st.lastPacket.Store(now)
	}
}

func newEndpointStack(srv *Server, endpoint uint64) *endpointStack {
	var s *stack.Stack
	newStack := func() {
		s = newGVisorStack(srv)
	}
	if full := srv.cfg.NewStacksAtFullProcs; full != nil {
		full(newStack)
	} else {
		newStack()
	}
	st := &endpointStack{srv: srv, endpoint: endpoint, stack: s}
	st.link = &link{srv: srv, endpoint: endpoint, mtu: uint32(srv.cfg.MTU)}
	if err := st.configure(); err != nil {
		// Only a programming error gets here: every option is static.
		panic(fmt.Sprintf("configuring gVisor stack: %v", err))
	}
	return st
}

// newGVisorStack makes a stack with the protocols an endpoint's flows use.
func newGVisorStack(srv *Server) *stack.Stack {
	return stack.New(stack.Options{
		NetworkProtocols: []stack.NetworkProtocolFactory{
			ipv4.NewProtocolWithOptions(ipv4.Options{AllowExternalLoopbackTraffic: srv.cfg.AllowLoopback}),
			ipv6.NewProtocolWithOptions(ipv6.Options{AllowExternalLoopbackTraffic: srv.cfg.AllowLoopback}),
		},
		TransportProtocols: []stack.TransportProtocolFactory{
			tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6,
		},
		HandleLocal: false,
		// The SYNs its TCP forwarder drops, its MaxInFlight slots all
		// taken, go into the server's counter, not one that closes
		// with the stack.
		Stats: tcpip.Stats{TCP: tcpip.TCPStats{ForwardMaxInFlightDrop: &srv.stats.synsPastInFlight}},
	})
}

func (st *endpointStack) configure() error {
	s, o := st.stack, st.srv.cfg.TCP
	if err := s.CreateNICWithOptions(nicID, st.link, stack.NICOptions{QDisc: st.link}); err != nil {
		return fmt.Errorf("creating NIC: %s", err)
	}
	var terr tcpip.Error
	if st.ip4, terr = s.GetNetworkEndpoint(nicID, ipv4.ProtocolNumber); terr != nil {
		return fmt.Errorf("IPv4 endpoint: %s", terr)
	}
	if st.ip6, terr = s.GetNetworkEndpoint(nicID, ipv6.ProtocolNumber); terr != nil {
		return fmt.Errorf("IPv6 endpoint: %s", terr)
	}
	// Promiscuous: accept packets for any destination. Spoofing: answer
	// from that destination's address. Both are needed to terminate flows
	// to addresses the stack does not own.
	if err := s.SetPromiscuousMode(nicID, true); err != nil {
		return fmt.Errorf("promiscuous mode: %s", err)
	}
	if err := s.SetSpoofing(nicID, true); err != nil {
		return fmt.Errorf("spoofing: %s", err)
	}
	s.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: nicID},
		{Destination: header.IPv6EmptySubnet, NIC: nicID},
	})
	sack := tcpip.TCPSACKEnabled(true)
	moderate := tcpip.TCPModerateReceiveBufferOption(true)
	rcvStart := min(initialTCPBuffer, o.ReceiveBuffer)
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: 4096, Default: rcvStart, Max: o.ReceiveBuffer}
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: 4096, Default: min(initialTCPBuffer, o.SendBuffer), Max: o.SendBuffer}
	tw := tcpip.TCPTimeWaitTimeoutOption(stackTimeWait)
	for _, opt := range []tcpip.SettableTransportProtocolOption{&sack, &moderate, &rcv, &snd, &tw} {
		if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, opt); err != nil {
			return fmt.Errorf("TCP option %T: %s", opt, err)
		}
	}
	// The forwarder sets every connection's receive buffer to rcvWnd (with
	// moderation left on), so it is the buffer a connection starts with,
	// not its cap. The window scale offered in the SYN-ACK is the cap's
	// while moderation is on (gVisor's rcvWndScaleForHandshake), so the
	// window can still grow to the cap.
	tcpFwd := tcp.NewForwarder(s, rcvStart, o.MaxInFlight, st.handleTCP)
	s.SetTransportProtocolHandler(tcp.ProtocolNumber, tcpFwd.HandlePacket)
	udpFwd := udp.NewForwarder(s, st.handleUDP)
	s.SetTransportProtocolHandler(udp.ProtocolNumber, udpFwd.HandlePacket)
	return nil
}

// close closes the stack, ending its connections; its goroutines end soon
// after. The caller has taken it out of the server first.
func (st *endpointStack) close() {
	st.stack.Close()
}

// destroy closes the stack and waits for its goroutines to end, and takes
// its NIC away. The caller has taken it out of the server first.
func (st *endpointStack) destroy() {
	st.stack.Destroy()
}

// holdsTCP reports whether the stack of k's endpoint holds a TCP endpoint
// for the connection k names: one the stack has not ended. A RST the stack
// takes, or any other end but TIME_WAIT, takes the endpoint out of the
// stack's demultiplexer at once; an out-of-window RST leaves it. A lookup
// there is a few read locks and map reads, and Expire asks only about
// flows a RST would expire.
func (s *Server) holdsTCP(k *FlowKey) bool { return s.tcpEndpoint(k) != nil }

// tcpEndpoint returns the connection the stack of k's endpoint holds on
// k's 4-tuple, or nil.
func (s *Server) tcpEndpoint(k *FlowKey) stack.TransportEndpoint {
	v, ok := s.stacks.Load(k.Endpoint)
	if !ok {
		return nil
	}
	st := v.(*endpointStack)
	proto, client, server := ipv4.ProtocolNumber, tcpip.AddrFrom4([4]byte(k.ClientAddr[12:])), tcpip.AddrFrom4([4]byte(k.ServerAddr[12:]))
	if k.IPv6 {
		proto, client, server = ipv6.ProtocolNumber, tcpip.AddrFrom16(k.ClientAddr), tcpip.AddrFrom16(k.ServerAddr)
	}
	// The stack's end is the server, its local one.
	id := stack.TransportEndpointID{LocalPort: k.ServerPort, LocalAddress: server, RemotePort: k.ClientPort, RemoteAddress: client}
	return st.stack.FindTransportEndpoint(proto, tcp.ProtocolNumber, id, nicID)
}

// tcpTakesData reports whether the stack of k's endpoint holds a
// connection on k's 4-tuple that may take a client's data: one not torn
// down already (reset, closed, in TIME-WAIT). A RST the connection has
// not taken yet, or one it ignored, leaves it taking data: only the stack
// can tell which.
func (s *Server) tcpTakesData(k *FlowKey) bool {
	ep := s.tcpEndpoint(k)
	if ep == nil {
		return false
	}
	if e, ok := ep.(*tcp.Endpoint); ok {
		switch e.EndpointState() {
		case tcp.StateError, tcp.StateClose, tcp.StateTimeWait:
			return false
		}
	}
	return true
}

// fullAddr converts a gVisor address and port.
func fullAddr(a tcpip.Address, port uint16) netip.AddrPort {
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return netip.AddrPortFrom(ip.Unmap(), port)
}

func (st *endpointStack) info(proto uint8, id stack.TransportEndpointID) FlowInfo {
	info, _ := st.infoKey(proto, id)
	return info
}

// infoKey is info, and the flow's key in the table.
func (st *endpointStack) infoKey(proto uint8, id stack.TransportEndpointID) (FlowInfo, FlowKey) {
	client := fullAddr(id.RemoteAddress, id.RemotePort)
	dest := fullAddr(id.LocalAddress, id.LocalPort)
	p := Packet{Proto: proto, IPv6: dest.Addr().Is6(), SrcPort: client.Port(), DstPort: dest.Port()}
	p.Src, p.Dst = client.Addr().As16(), dest.Addr().As16()
	key := p.Key(st.endpoint)
	return st.srv.flowInfo(st.endpoint, client, dest, &key), key
}

func (st *endpointStack) handleTCP(r *tcp.ForwarderRequest) {
	info, key := st.infoKey(protoTCP, r.ID())
	req := &TCPRequest{Flow: info, fr: r, opts: &st.srv.cfg.TCP, flow: st.srv.flows.Lookup(&key)}
	req.client = clientKeyOf(st.endpoint, req.Flow.Client.Addr().As16())
	if !st.setups.take(req.client, st.srv.cfg.TCP.MaxInFlight) {
		st.srv.stats.tcpSetupsRefused.Add(1)
		r.Complete(true)
		return
	}
	req.setups = &st.setups
	req.live = &st.srv.live
	req.pressure = &st.srv.flows.pressure
	st.srv.stats.tcpAttempts.Add(1)
	st.srv.cfg.Handler.HandleTCP(req)
	req.mu.Lock()
	defer req.mu.Unlock()
	if !req.done { // a handler that forgot: never leak the forwarder's slot
		req.complete(true)
	}
}

// handleUDP runs on the packet path. The endpoint is created here, not in
// the handler's goroutine: until it exists, every further datagram of the
// flow would come to the forwarder again as a new flow.
func (st *endpointStack) handleUDP(r *udp.ForwarderRequest) bool {
	conn := newUDPConn()
	ep, err := r.CreateEndpoint(&conn.wq)
	if err != nil {
		st.srv.stats.drop(DropUDPCreateFailed)
		return true
	}
	st.srv.stats.udpFlows.Add(1)
	flow := st.info(protoUDP, r.ID())
	conn.attach(ep, flow.Client, flow.Dest)
	go st.srv.cfg.Handler.HandleUDP(flow, conn)
	return true
}

// TCPRequest is a client's connection attempt, held in SYN-RECEIVED until
// the handler accepts it or rejects it. Dialling the destination first lets
// a refused destination become a RST to the client.
type TCPRequest struct {
	// Flow describes the connection.
	Flow FlowInfo

	mu     sync.Mutex
	fr     *tcp.ForwarderRequest
	opts   *TCPOptions
	done   bool
	client clientKey
	setups *setupShares // the slot's share, given back on completion
	live   *liveConns   // where the accepted conn is counted for its client
	// pressure is the server's memory pressure (flowTable.pressure), by
	// which Close shortens the conn's ClosedSendTimeout.
	pressure *atomic.Int32
	// flow is the flow's entry in the table as the SYN found it: its
	// segments tell what the client acknowledged (Conn.SendQueued).
	flow *Flow
}

// ErrRequestDone is returned by Accept after Accept or Reject.
var ErrRequestDone = errors.New("netstack: TCP request already completed")

// Accept completes the handshake with the client and returns the connection.
func (r *TCPRequest) Accept() (*Conn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done {
		return nil, ErrRequestDone
	}
	wq := new(waiter.Queue)
	ep, terr := r.fr.CreateEndpoint(wq)
	if terr != nil {
		r.complete(true)
		return nil, fmt.Errorf("completing the handshake with %s: %s", r.Flow.Client, terr)
	}
	r.complete(false)
	ep.SocketOptions().SetKeepAlive(true)
	idle := tcpip.KeepaliveIdleOption(r.opts.KeepaliveIdle)
	intvl := tcpip.KeepaliveIntervalOption(r.opts.KeepaliveInterval)
	_ = ep.SetSockOpt(&idle)
	_ = ep.SetSockOpt(&intvl)
	_ = ep.SetSockOptInt(tcpip.KeepaliveCountOption, r.opts.KeepaliveCount)
	// Keepalives do not run while data is outstanding: a client that
	// vanished with bytes in flight, fewer than a send buffer (no write
	// waits for the stall watch to see), held the connection, its record
	// unwritten, until gVisor's fixed retransmission limit (15 tries, the
	// timeout capped at 120 s: 15.4 minutes), whatever the configured
	// bounds. The user timeout resets it once sent bytes have waited that
	// long for an acknowledgement, as Linux's TCP_USER_TIMEOUT does.
	uto := tcpip.TCPUserTimeoutOption(r.opts.ClosedSendTimeout)
	_ = ep.SetSockOpt(&uto)
	c := newConn(wq, ep, r.Flow.Dest, r.Flow.Client)
	c.closedSend, c.pressure, c.flow = r.opts.ClosedSendTimeout, r.pressure, r.flow
	if r.flow != nil {
		c.iss = r.flow.iss.Load() // the SYN-ACK went out through the flow before the handshake ended
	}
	if r.live != nil {
		r.live.add(c, r.client)
	}
	return c, nil
}

// Reject answers the client's SYN with a RST.
func (r *TCPRequest) Reject() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.done {
		r.complete(true)
	}
}

func (r *TCPRequest) complete(reset bool) {
	r.fr.Complete(reset)
	r.done = true
	if r.setups != nil {
		r.setups.give(r.client)
	}
}
