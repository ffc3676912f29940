// Package gwlbsim simulates an AWS Gateway Load Balancer for tests,
// benchmarks and demos. It encapsulates client packets in GENEVE with the
// AWS options (an endpoint ID per simulated endpoint, a flow cookie per
// flow), sends them to a target group of appliances from varying source
// ports of its own address, and accepts a reply only on its own port 6081,
// only from the target that owns the flow and from the port it sends that
// flow from (replies keep the outer ports), and only if it carries, byte
// for byte, the header it sent for that flow.
//
// With one target (Config.Appliance) it behaves as it always has. With
// several (Config.Targets) it is a GWLB in front of a target group: flow
// stickiness by 5-, 3- or 2-tuple, HTTP health checks with healthy and
// unhealthy thresholds, new flows only to healthy targets (to every
// registered target when none is healthy: fail-open), deregistration with
// a delay, and the target-failover settings for existing flows
// (no_rebalance, rebalance). See targets.go and health.go.
package gwlbsim

import (
	"errors"
	"fmt"
	"hash/maphash"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// Config configures a simulator.
type Config struct {
	// Addr is the simulator's own IPv4 address, e.g. 127.0.0.2. It listens
	// for replies on Addr:ListenPort, and health checks leave from it.
	Addr netip.Addr
	// ListenPort is the GENEVE port the simulator receives on (default 6081).
	ListenPort uint16
	// Appliance is the appliance's GENEVE address: a target group of one.
	// It may be combined with Targets, and then comes first.
	Appliance netip.AddrPort
	// Targets are the GENEVE addresses of the target group's appliances.
	// Replies for a flow must come from the address of the target that
	// owns it.
	Targets []netip.AddrPort
	// Senders is the number of sockets (source ports) flows are spread
	// over (default 16).
	Senders int
	// ExtraOptions are further GENEVE options, already encoded (a multiple
	// of 4 bytes), added after the AWS ones; the appliance must echo them.
	ExtraOptions []byte
	// VNI is the Virtual Network Identifier every flow's header carries
	// (24 bits; default 0). A reply must carry it back unchanged, so a
	// non-zero VNI shows an appliance that writes its own instead of
	// echoing the header.
	VNI uint32

	// Stickiness is what defines a flow: the 5-tuple (the default), the
	// 3-tuple (source IP, destination IP, protocol) or the 2-tuple (source
	// IP, destination IP). All packets of one flow go to one target under
	// one flow cookie.
	Stickiness Stickiness
	// HealthCheck configures the targets' health checks. Without a port
	// there are none, and every registered target counts as healthy.
	HealthCheck HealthCheck
	// Attributes are the target group's failover settings and
	// deregistration delay; SetAttributes changes them while running.
	Attributes Attributes
	// TCPIdleTimeout and IdleTimeout: a flow without a packet either way
	// for this long is forgotten, as the GWLB does (defaults 350 s for
	// TCP, 120 s for the rest); its next packet starts a new flow.
	TCPIdleTimeout, IdleTimeout time.Duration
}

// The GWLB's idle timeouts.
const (
	DefaultTCPIdleTimeout = 350 * time.Second
	DefaultIdleTimeout    = 120 * time.Second
)

// Stats counts what the simulator saw. The JSON names are what the gwlbsim
// command prints on exit; tests and scripts parse them.
type Stats struct {
	Sent            uint64 `json:"sent"`              // datagrams sent to the appliances
	Received        uint64 `json:"received"`          // replies accepted and delivered to a client
	HeaderMismatch  uint64 `json:"header_mismatch"`   // replies whose GENEVE header differs from the flow's
	UnknownFlow     uint64 `json:"unknown_flow"`      // replies for a flow the simulator never sent (or forgot), or fragments of none
	Malformed       uint64 `json:"malformed"`         // replies that do not parse
	TooBig          uint64 `json:"too_big"`           // replies over the GWLB's 8500 bytes, outer IPv4/UDP headers included
	WrongPort       uint64 `json:"wrong_port"`        // datagrams that arrived on a sender port, not ListenPort
	UnknownEndpoint uint64 `json:"unknown_endpoint"`  // replies naming an endpoint that does not exist
	WrongTarget     uint64 `json:"wrong_target"`      // replies from an address other than the flow's target's
	WrongSourcePort uint64 `json:"wrong_source_port"` // replies from a port other than the one the flow is sent from
	WrongDirection  uint64 `json:"wrong_direction"`   // replies whose inner packet goes to an end of the flow that never sent through the simulator: a terminating appliance may only answer
	NoTarget        uint64 `json:"no_target"`         // packets of new flows dropped: no registered target
	FlowDropped     uint64 `json:"flow_dropped"`      // packets of flows whose target was deregistered without rebalance
	Rebalanced      uint64 `json:"rebalanced"`        // flows moved to another target (rebalance)
	FlowsExpired    uint64 `json:"flows_expired"`     // flows forgotten after their idle timeout
	Flows           int    `json:"flows"`             // flows now in the table
}

// Sim is a running simulator.
type Sim struct {
	cfg     Config
	listen  *net.UDPConn
	senders []*net.UDPConn
	// raw holds each sender's raw connection, for sendmmsg (SendBatch).
	raw map[*net.UDPConn]syscall.RawConn
	// sendBatches holds SendBatch's sendmmsg state for reuse.
	sendBatches chan *sendBatch
	seed        maphash.Seed
	health      *healthChecker // nil without health checks

	mu        sync.RWMutex
	endpoints map[uint64]*Endpoint
	flows     map[netstack.TupleKey]*simFlow
	// newest holds, under 5-tuple stickiness, the newest flow of each
	// (endpoint, addresses, protocol): later IP fragments, which carry no
	// ports, follow it.
	newest  map[netstack.TupleKey]*simFlow
	targets []*target
	attrs   Attributes

	sent, received, mismatch, unknown, malformed, wrongPort, unknownEP atomic.Uint64
	wrongTarget, noTarget, flowDropped, rebalanced, expired            atomic.Uint64
	wrongSrcPort, tooBig, wrongDir                                     atomic.Uint64

	// replyFrags ties the later fragments of a reply to its first's flow.
	replyFrags replyFrags

	wg     sync.WaitGroup
	done   chan struct{}
	closed atomic.Bool
}

// simFlow is one GWLB flow: its key (the stickiness tuple), its route (the
// target and the header it goes under), and when it last saw a packet.
type simFlow struct {
	key       netstack.TupleKey
	route     atomic.Pointer[flowRoute]
	sender    *net.UDPConn
	port      uint16 // sender's port: the one its replies must come from
	ep        *Endpoint
	etherType uint16
	tcp       bool
	src, dst  netip.AddrPort // the first packet's, for Flows
	// fromDst says a packet from dst's address has come through the
	// flow too: replies may then go to it as well as to src (handleReply).
	fromDst atomic.Bool
	proto   uint8
	created time.Time    // when its first packet arrived
	last    atomic.Int64 // unix nanoseconds of the last packet either way
	moves   int          // times rebalanced; under Sim.mu
}

// flowRoute is where a flow's packets go. It is replaced whole when a
// flow moves, so a sender reads the target and the header together.
type flowRoute struct {
	header []byte
	cookie uint32
	target *target // nil: dropped, its target left without rebalance
}

// New starts a simulator.
func New(cfg Config) (*Sim, error) {
	if cfg.ListenPort == 0 {
		cfg.ListenPort = netstack.GenevePort
	}
	if cfg.Senders <= 0 {
		cfg.Senders = 16
	}
	if cfg.TCPIdleTimeout <= 0 {
		cfg.TCPIdleTimeout = DefaultTCPIdleTimeout
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if len(cfg.ExtraOptions)%4 != 0 {
		return nil, errors.New("gwlbsim: extra options must be a multiple of 4 bytes")
	}
	if cfg.VNI >= 1<<24 {
		return nil, fmt.Errorf("gwlbsim: VNI %#x is over 24 bits", cfg.VNI)
	}
	var err error
	if cfg.Stickiness, err = ParseStickiness(string(cfg.Stickiness)); err != nil {
		return nil, err
	}
	if err := cfg.Attributes.normalize(); err != nil {
		return nil, err
	}
	addrs := cfg.Targets
	if cfg.Appliance.IsValid() {
		addrs = append([]netip.AddrPort{cfg.Appliance}, cfg.Targets...)
	}
	if len(addrs) == 0 {
		return nil, errors.New("gwlbsim: no target: set Appliance or Targets")
	}
	if cfg.HealthCheck.Port != 0 {
		if err := cfg.HealthCheck.normalize(); err != nil {
			return nil, err
		}
	}
	l, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(cfg.Addr, cfg.ListenPort)))
	if err != nil {
		return nil, fmt.Errorf("gwlbsim: listening on %s:%d: %w", cfg.Addr, cfg.ListenPort, err)
	}
	_ = l.SetReadBuffer(8 << 20)
	s := &Sim{
		cfg: cfg, listen: l, seed: maphash.MakeSeed(), attrs: cfg.Attributes, done: make(chan struct{}),
		endpoints: make(map[uint64]*Endpoint), flows: make(map[netstack.TupleKey]*simFlow),
		newest: make(map[netstack.TupleKey]*simFlow), raw: make(map[*net.UDPConn]syscall.RawConn),
		sendBatches: make(chan *sendBatch, 4),
	}
	if cfg.HealthCheck.Port != 0 {
		s.health = newHealthChecker(s, cfg.HealthCheck)
	}
	for _, a := range addrs {
		if _, err := s.addTarget(a); err != nil {
			l.Close()
			return nil, err
		}
	}
	for range cfg.Senders {
		c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(cfg.Addr, 0)))
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("gwlbsim: opening a sender socket: %w", err)
		}
		_ = c.SetWriteBuffer(8 << 20)
		s.senders = append(s.senders, c)
		rc, err := c.SyscallConn()
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("gwlbsim: a sender socket's raw connection: %w", err)
		}
		s.raw[c] = rc
		s.wg.Add(1)
		go s.readSender(c)
	}
	s.wg.Add(2)
	go s.readReplies()
	go s.expireFlows()
	s.mu.Lock()
	for _, t := range s.targets {
		s.startChecksLocked(t)
	}
	s.mu.Unlock()
	return s, nil
}

// Config returns the simulator's configuration with the defaults filled
// in. Its Attributes are the ones it started with (see Attributes), its
// targets the ones it was given (see Targets).
func (s *Sim) Config() Config {
	c := s.cfg
	c.Targets = append([]netip.AddrPort(nil), c.Targets...)
	return c
}

// Addr returns the address the simulator receives replies on.
func (s *Sim) Addr() netip.AddrPort { return s.listen.LocalAddr().(*net.UDPAddr).AddrPort() }

// Close stops the simulator, its health checks and every client stack it
// made.
func (s *Sim) Close() {
	if s.closed.Swap(true) {
		return
	}
	close(s.done)
	s.listen.Close()
	for _, c := range s.senders {
		c.Close()
	}
	s.mu.Lock()
	for _, t := range s.targets {
		s.stopChecksLocked(t)
		if t.drainTimer != nil {
			t.drainTimer.Stop()
		}
	}
	s.mu.Unlock()
	s.wg.Wait()
	if s.health != nil {
		s.health.wait()
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, e := range s.endpoints {
		e.close()
	}
}

// Stats returns the simulator's counters.
func (s *Sim) Stats() Stats {
	s.mu.RLock()
	n := len(s.flows)
	s.mu.RUnlock()
	return Stats{
		Sent: s.sent.Load(), Received: s.received.Load(), HeaderMismatch: s.mismatch.Load(),
		UnknownFlow: s.unknown.Load(), Malformed: s.malformed.Load(), WrongPort: s.wrongPort.Load(),
		UnknownEndpoint: s.unknownEP.Load(), WrongTarget: s.wrongTarget.Load(), WrongSourcePort: s.wrongSrcPort.Load(), WrongDirection: s.wrongDir.Load(),
		NoTarget: s.noTarget.Load(), FlowDropped: s.flowDropped.Load(), Rebalanced: s.rebalanced.Load(),
		FlowsExpired: s.expired.Load(), TooBig: s.tooBig.Load(), Flows: n,
	}
}

// SendRaw sends b to the first target as it is, for malformed-input tests.
func (s *Sim) SendRaw(b []byte) error {
	s.mu.RLock()
	to := s.targets[0].addr
	s.mu.RUnlock()
	_, err := s.senders[0].WriteToUDPAddrPort(b, to)
	return err
}

// Endpoint returns the simulated GWLB endpoint with the given IDs, creating it.
func (s *Sim) Endpoint(id, attachment uint64) *Endpoint {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.endpoints[id]; e != nil {
		return e
	}
	e := &Endpoint{sim: s, id: id, attachment: attachment}
	s.endpoints[id] = e
	return e
}

// Endpoint is one simulated GWLB endpoint: the clients behind it send
// through it, and it delivers replies to them.
type Endpoint struct {
	sim        *Sim
	id         uint64
	attachment uint64
	deliver    atomic.Pointer[func([]byte)]
	batch      atomic.Pointer[batchReceiver] // set: replies go here instead
	closers    []func()
}

// ID returns the endpoint ID.
func (e *Endpoint) ID() uint64 { return e.id }

// SetReceiver sets the function replies for this endpoint's clients go to.
// It is called on the simulator's reader goroutine with a buffer it reuses.
// It replaces a receiver set by SetBatchReceiver.
func (e *Endpoint) SetReceiver(fn func(inner []byte)) {
	e.deliver.Store(&fn)
	e.batch.Store(nil)
}

func (e *Endpoint) close() {
	for _, c := range e.closers {
		c()
	}
}

var sendBufPool = sync.Pool{New: func() any {
	b := make([]byte, 0, netstack.MaxGeneveHeader+65535)
	return &b
}}

// Send encapsulates the inner IP packet and sends it to its flow's target
// under the flow's header, from the flow's source port. A packet the GWLB
// would drop (no registered target, or a flow whose target left) is
// counted and dropped without an error, as the GWLB drops it silently.
func (e *Endpoint) Send(inner []byte) error {
	f, r, t, err := e.route(inner)
	if err != nil || t == nil {
		return err
	}
	// A pooled buffer: Send is on every simulated packet's path.
	bufp := sendBufPool.Get().(*[]byte)
	buf := append(append((*bufp)[:0], r.header...), inner...)
	_, err = f.sender.WriteToUDPAddrPort(buf, t.addr)
	*bufp = buf
	sendBufPool.Put(bufp)
	if err != nil {
		return fmt.Errorf("gwlbsim: sending to %s: %w", t.addr, err)
	}
	e.sim.sent.Add(1)
	t.packets.Add(1)
	return nil
}

// route finds the flow of the inner packet (making it if new), the route
// it goes under and its target, and refreshes the flow. A nil target with
// a nil error: the GWLB drops the packet, and it is counted.
func (e *Endpoint) route(inner []byte) (*simFlow, *flowRoute, *target, error) {
	etherType := uint16(netstack.EtherTypeIPv4)
	if len(inner) > 0 && inner[0]>>4 == 6 {
		etherType = netstack.EtherTypeIPv6
	}
	p, reason := netstack.ParsePacket(inner, etherType)
	if reason != netstack.DropNone {
		return nil, nil, nil, fmt.Errorf("gwlbsim: inner packet: %s", reason)
	}
	s := e.sim
	f := s.flow(e, &p, etherType)
	if f == nil {
		s.noTarget.Add(1)
		return nil, nil, nil, nil
	}
	r := f.route.Load()
	t := r.target
	if p.Fragment && s.cfg.Stickiness == FiveTuple {
		t = s.fragmentTarget(f, t)
	}
	if t == nil {
		s.flowDropped.Add(1)
		return nil, nil, nil, nil
	}
	f.last.Store(time.Now().UnixNano())
	if p.SrcAddr() != f.src.Addr() && !f.fromDst.Load() {
		f.fromDst.Store(true)
	}
	return f, r, t, nil
}

// flowKey narrows a packet's 5-tuple key to the key of the GWLB flow it
// belongs to: its stickiness tuple. Later fragments carry no ports: their
// key has zero ports, as the GWLB would see them.
func (s *Sim) flowKey(k netstack.TupleKey) netstack.TupleKey { return s.cfg.Stickiness.key(k) }

// flow returns the state of a flow, creating it with a fresh cookie on a
// target chosen for it; nil when there is no registered target.
func (s *Sim) flow(e *Endpoint, p *netstack.Packet, etherType uint16) *simFlow {
	if p.ICMPError {
		// The GWLB hashes an ICMP error from the client's side by its own
		// header (ICMP, the error's addresses), not by the flow it quotes:
		// it gets a flow and a cookie of its own, and with several targets
		// it may go to another one than the quoted flow's (design.md).
		q := netstack.Packet{IPv6: p.IPv6, Proto: protoICMP, Src: p.Src, Dst: p.Dst}
		if p.IPv6 {
			q.Proto = protoICMPv6
		}
		p = &q
	}
	k := s.flowKey(p.Tuple(e.id))
	s.mu.RLock()
	f := s.flows[k]
	s.mu.RUnlock()
	if f != nil {
		return f
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if f = s.flows[k]; f != nil {
		return f
	}
	var t *target
	if p.Fragment && s.cfg.Stickiness == FiveTuple {
		if n := s.newest[tripleKey(k)]; n != nil {
			t = n.route.Load().target
		}
	}
	if t == nil {
		if t = s.pickLocked(k, nil, true); t == nil {
			return nil
		}
	}
	sender := s.senders[rand.IntN(len(s.senders))]
	f = &simFlow{
		key: k, sender: sender, port: uint16(sender.LocalAddr().(*net.UDPAddr).Port), ep: e, etherType: etherType,
		tcp: p.Proto == protoTCP, proto: p.Proto,
		src: netip.AddrPortFrom(p.SrcAddr(), p.SrcPort), dst: netip.AddrPortFrom(p.DstAddr(), p.DstPort),
	}
	f.created = time.Now()
	f.last.Store(f.created.UnixNano())
	f.route.Store(s.newRoute(f, t, 0))
	t.flows++
	t.flowsTotal++
	s.flows[k] = f
	if s.cfg.Stickiness == FiveTuple && !p.Fragment {
		s.newest[tripleKey(k)] = f
	}
	return f
}

// newRoute is a route to t under a fresh flow cookie, other than old.
func (s *Sim) newRoute(f *simFlow, t *target, old uint32) *flowRoute {
	cookie := rand.Uint32()
	for cookie == old {
		cookie = rand.Uint32()
	}
	return &flowRoute{
		header: netstack.AppendHeader(nil, f.etherType, s.cfg.VNI, f.ep.id, f.ep.attachment, cookie, s.cfg.ExtraOptions),
		cookie: cookie, target: t,
	}
}

// fragmentTarget is where a later fragment goes under 5-tuple stickiness:
// to the target of the newest flow between the same addresses with the
// same protocol, whose first fragment it most likely follows.
func (s *Sim) fragmentTarget(f *simFlow, t *target) *target {
	s.mu.RLock()
	n := s.newest[tripleKey(f.key)]
	s.mu.RUnlock()
	if n == nil {
		return t
	}
	if nt := n.route.Load().target; nt != nil {
		return nt
	}
	return t
}

func tripleKey(k netstack.TupleKey) netstack.TupleKey {
	k.LoPort, k.HiPort = 0, 0
	return k
}

// IP protocol numbers.
const (
	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58
)

// FlowHeader returns the GENEVE header the simulator uses for the flow
// with 5-tuple key k, or nil.
func (s *Sim) FlowHeader(k netstack.TupleKey) []byte {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if f := s.flows[s.flowKey(k)]; f != nil {
		return f.route.Load().header
	}
	return nil
}

// readSender counts datagrams that arrive on a sender port: the GWLB only
// listens on 6081, so a reply sent anywhere else would be lost.
func (s *Sim) readSender(c *net.UDPConn) {
	defer s.wg.Done()
	buf := make([]byte, 65536)
	for {
		if _, _, err := c.ReadFromUDPAddrPort(buf); err != nil {
			return
		}
		s.wrongPort.Add(1)
	}
}

// expireFlows forgets flows idle for longer than their timeout, as the
// GWLB does: TCP after TCPIdleTimeout, the rest after IdleTimeout.
func (s *Sim) expireFlows() {
	defer s.wg.Done()
	every := min(s.cfg.IdleTimeout, s.cfg.TCPIdleTimeout) / 4
	every = min(max(every, 10*time.Millisecond), time.Second)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-s.done:
			return
		case now := <-tick.C:
			s.expireIdle(now)
		}
	}
}

func (s *Sim) expireIdle(now time.Time) {
	tcpBefore := now.Add(-s.cfg.TCPIdleTimeout).UnixNano()
	otherBefore := now.Add(-s.cfg.IdleTimeout).UnixNano()
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, f := range s.flows {
		before := otherBefore
		if f.tcp {
			before = tcpBefore
		}
		if f.last.Load() >= before {
			continue
		}
		delete(s.flows, k)
		if tk := tripleKey(k); s.newest[tk] == f {
			delete(s.newest, tk)
		}
		if t := f.route.Load().target; t != nil {
			t.flows--
		}
		s.expired.Add(1)
	}
}
