// Package gwlbsim simulates an AWS Gateway Load Balancer for tests,
// benchmarks and demos. It encapsulates client packets in GENEVE with the
// AWS options (an endpoint ID per simulated endpoint, a flow cookie per
// 5-tuple), sends them to the appliance from varying source ports of its own
// address, and accepts a reply only on its own port 6081 and only if it
// carries, byte for byte, the header it sent for that flow.
package gwlbsim

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// Config configures a simulator.
type Config struct {
	// Addr is the simulator's own IPv4 address, e.g. 127.0.0.2. It listens
	// for replies on Addr:ListenPort.
	Addr netip.Addr
	// ListenPort is the GENEVE port the simulator receives on (default 6081).
	ListenPort uint16
	// Appliance is the appliance's GENEVE address.
	Appliance netip.AddrPort
	// Senders is the number of sockets (source ports) flows are spread
	// over (default 16).
	Senders int
	// ExtraOptions are further GENEVE options, already encoded (a multiple
	// of 4 bytes), added after the AWS ones; the appliance must echo them.
	ExtraOptions []byte
}

// Stats counts what the simulator saw. The JSON names are what the gwlbsim
// command prints on exit; tests and scripts parse them.
type Stats struct {
	Sent            uint64 `json:"sent"`             // datagrams sent to the appliance
	Received        uint64 `json:"received"`         // replies accepted and delivered to a client
	HeaderMismatch  uint64 `json:"header_mismatch"`  // replies whose GENEVE header differs from the flow's
	UnknownFlow     uint64 `json:"unknown_flow"`     // replies for a flow the simulator never sent
	Malformed       uint64 `json:"malformed"`        // replies that do not parse
	WrongPort       uint64 `json:"wrong_port"`       // datagrams that arrived on a sender port, not ListenPort
	UnknownEndpoint uint64 `json:"unknown_endpoint"` // replies naming an endpoint that does not exist
}

// Sim is a running simulator.
type Sim struct {
	cfg     Config
	listen  *net.UDPConn
	senders []*net.UDPConn

	mu        sync.RWMutex
	endpoints map[uint64]*Endpoint
	flows     map[netstack.FlowKey]*simFlow

	sent, received, mismatch, unknown, malformed, wrongPort, unknownEP atomic.Uint64
	wg                                                                 sync.WaitGroup
	closed                                                             atomic.Bool
}

type simFlow struct {
	header []byte
	sender *net.UDPConn
}

// New starts a simulator.
func New(cfg Config) (*Sim, error) {
	if cfg.ListenPort == 0 {
		cfg.ListenPort = netstack.GenevePort
	}
	if cfg.Senders <= 0 {
		cfg.Senders = 16
	}
	if len(cfg.ExtraOptions)%4 != 0 {
		return nil, errors.New("gwlbsim: extra options must be a multiple of 4 bytes")
	}
	l, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(cfg.Addr, cfg.ListenPort)))
	if err != nil {
		return nil, fmt.Errorf("gwlbsim: listening on %s:%d: %w", cfg.Addr, cfg.ListenPort, err)
	}
	_ = l.SetReadBuffer(8 << 20)
	s := &Sim{cfg: cfg, listen: l, endpoints: make(map[uint64]*Endpoint), flows: make(map[netstack.FlowKey]*simFlow)}
	for range cfg.Senders {
		c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(cfg.Addr, 0)))
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("gwlbsim: opening a sender socket: %w", err)
		}
		_ = c.SetWriteBuffer(8 << 20)
		s.senders = append(s.senders, c)
		s.wg.Add(1)
		go s.readSender(c)
	}
	s.wg.Add(1)
	go s.readReplies()
	return s, nil
}

// Addr returns the address the simulator receives replies on.
func (s *Sim) Addr() netip.AddrPort { return s.listen.LocalAddr().(*net.UDPAddr).AddrPort() }

// Close stops the simulator and every client stack it made.
func (s *Sim) Close() {
	if s.closed.Swap(true) {
		return
	}
	s.listen.Close()
	for _, c := range s.senders {
		c.Close()
	}
	s.wg.Wait()
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, e := range s.endpoints {
		e.close()
	}
}

// Stats returns the simulator's counters.
func (s *Sim) Stats() Stats {
	return Stats{
		Sent: s.sent.Load(), Received: s.received.Load(), HeaderMismatch: s.mismatch.Load(),
		UnknownFlow: s.unknown.Load(), Malformed: s.malformed.Load(), WrongPort: s.wrongPort.Load(),
		UnknownEndpoint: s.unknownEP.Load(),
	}
}

// SendRaw sends b to the appliance as it is, for malformed-input tests.
func (s *Sim) SendRaw(b []byte) error {
	_, err := s.senders[0].WriteToUDPAddrPort(b, s.cfg.Appliance)
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
	closers    []func()
}

// ID returns the endpoint ID.
func (e *Endpoint) ID() uint64 { return e.id }

// SetReceiver sets the function replies for this endpoint's clients go to.
// It is called on the simulator's reader goroutine with a buffer it reuses.
func (e *Endpoint) SetReceiver(fn func(inner []byte)) { e.deliver.Store(&fn) }

func (e *Endpoint) close() {
	for _, c := range e.closers {
		c()
	}
}

var sendBufPool = sync.Pool{New: func() any {
	b := make([]byte, 0, netstack.MaxGeneveHeader+65535)
	return &b
}}

// Send encapsulates the inner IP packet and sends it to the appliance under
// its flow's header, from its flow's source port.
func (e *Endpoint) Send(inner []byte) error {
	etherType := uint16(netstack.EtherTypeIPv4)
	if len(inner) > 0 && inner[0]>>4 == 6 {
		etherType = netstack.EtherTypeIPv6
	}
	p, reason := netstack.ParsePacket(inner, etherType)
	if reason != netstack.DropNone {
		return fmt.Errorf("gwlbsim: inner packet: %s", reason)
	}
	f := e.sim.flow(e, p.Key(e.id), etherType, p.Fragment)
	// A pooled buffer: Send is on every simulated packet's path.
	bufp := sendBufPool.Get().(*[]byte)
	buf := append(append((*bufp)[:0], f.header...), inner...)
	_, err := f.sender.WriteToUDPAddrPort(buf, e.sim.cfg.Appliance)
	*bufp = buf
	sendBufPool.Put(bufp)
	if err != nil {
		return fmt.Errorf("gwlbsim: sending to the appliance: %w", err)
	}
	e.sim.sent.Add(1)
	return nil
}

// flow returns the state of a flow, creating it with a fresh cookie. Later
// fragments carry no ports; they travel like the GWLB would send them, under
// a header of their own (their key has zero ports).
func (s *Sim) flow(e *Endpoint, k netstack.FlowKey, etherType uint16, _ bool) *simFlow {
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
	f = &simFlow{
		header: netstack.AppendHeader(nil, etherType, 0, e.id, e.attachment, rand.Uint32(), s.cfg.ExtraOptions),
		sender: s.senders[rand.IntN(len(s.senders))],
	}
	s.flows[k] = f
	return f
}

// FlowHeader returns the GENEVE header the simulator uses for the flow with
// key k, or nil.
func (s *Sim) FlowHeader(k netstack.FlowKey) []byte {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if f := s.flows[k]; f != nil {
		return f.header
	}
	return nil
}

func (s *Sim) readReplies() {
	defer s.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, _, err := s.listen.ReadFromUDPAddrPort(buf)
		if err != nil {
			if !s.closed.Load() {
				slog.Warn("gwlbsim: reading replies", "err", err)
			}
			return
		}
		s.handleReply(buf[:n])
	}
}

func (s *Sim) handleReply(b []byte) {
	h, reason := netstack.ParseHeader(b)
	if reason != netstack.DropNone {
		s.malformed.Add(1)
		return
	}
	inner := b[h.Len:]
	p, reason := netstack.ParsePacket(inner, h.Protocol)
	if reason != netstack.DropNone {
		s.malformed.Add(1)
		return
	}
	s.mu.RLock()
	e := s.endpoints[h.Endpoint]
	var f *simFlow
	if !p.Fragment {
		f = s.flows[p.Key(h.Endpoint)]
	}
	s.mu.RUnlock()
	switch {
	case e == nil:
		s.unknownEP.Add(1)
		return
	case p.Fragment:
		// A later fragment carries no ports; the GWLB would map it by its
		// own means. The simulator accepts it when its header is one it
		// sent on that endpoint.
	case f == nil:
		s.unknown.Add(1)
		return
	case !bytes.Equal(f.header, b[:h.Len]):
		s.mismatch.Add(1)
		return
	}
	if fn := e.deliver.Load(); fn != nil {
		s.received.Add(1)
		(*fn)(inner)
	}
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
