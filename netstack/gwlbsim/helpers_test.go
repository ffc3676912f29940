package gwlbsim

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// Each test has its own loopback /24, 127.86.<n>.0/24: the simulator on .2,
// targets from .11 up. cmd/gwlbsim's tests use 127.86.81.0/24.
func testNet(n int) (sim netip.Addr, target func(i int) netip.Addr) {
	return netip.AddrFrom4([4]byte{127, 86, byte(n), 2}), func(i int) netip.Addr {
		return netip.AddrFrom4([4]byte{127, 86, byte(n), byte(11 + i)})
	}
}

var (
	testClient = netip.MustParseAddr("198.18.50.2")
	testDest   = netip.MustParseAddr("198.18.2.3")
)

const (
	testEndpoint   = 0x0123456789abcdef
	testAttachment = 0x0a1b2c3d4e5f6071
)

// ipPacket builds an IPv4 packet of protocol proto (UDP or TCP, a SYN)
// between src and dst. The simulator parses headers only; checksums of the
// transport stay zero.
func ipPacket(proto uint8, src, dst netip.AddrPort, payload []byte) []byte {
	th := 8
	if proto == protoTCP {
		th = 20
	}
	b := make([]byte, 20+th+len(payload))
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	b[8], b[9] = 64, proto
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	binary.BigEndian.PutUint16(b[10:], ipChecksum(b[:20]))
	binary.BigEndian.PutUint16(b[20:], src.Port())
	binary.BigEndian.PutUint16(b[22:], dst.Port())
	if proto == protoTCP {
		b[32] = 5 << 4 // data offset
		b[33] = 0x02   // SYN
		binary.BigEndian.PutUint16(b[34:], 65535)
	} else {
		binary.BigEndian.PutUint16(b[24:], uint16(8+len(payload)))
	}
	copy(b[20+th:], payload)
	return b
}

func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// reflectPacket turns an IPv4 packet into its reply: addresses and ports
// swapped.
func reflectPacket(in []byte) []byte {
	out := append([]byte(nil), in...)
	copy(out[12:16], in[16:20])
	copy(out[16:20], in[12:16])
	copy(out[20:22], in[22:24])
	copy(out[22:24], in[20:22])
	return out
}

// received is one datagram a fake target got.
type received struct {
	header []byte
	cookie uint32
	inner  []byte
	from   netip.AddrPort
}

// fakeTarget is an appliance stand-in: a GENEVE socket that records what it
// receives and, when asked, answers with the inner packet reflected under
// the received header, sent to the simulator's port 6081 from its own
// address and the port the datagram came from, as the appliance does
// (outer ports kept); and an HTTP health check server on the same address
// whose answer the test sets.
type fakeTarget struct {
	t      *testing.T
	conn   *net.UDPConn
	sim    netip.AddrPort
	reply  atomic.Bool
	status atomic.Int32 // the health check's answer; 0: hang up
	delay  atomic.Int64 // the health check's delay, nanoseconds
	hport  int

	mu     sync.Mutex
	got    []received
	checks []*http.Request
	ports  map[uint16]*net.UDPConn // sockets bound to the ports replies leave from
}

func newFakeTarget(t *testing.T, addr netip.Addr, sim netip.AddrPort) *fakeTarget {
	t.Helper()
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, 0)))
	if err != nil {
		t.Fatalf("fake target on %s: %v", addr, err)
	}
	ft := &fakeTarget{t: t, conn: c, sim: sim}
	ft.status.Store(http.StatusOK)
	ln, err := net.Listen("tcp4", netip.AddrPortFrom(addr, 0).String())
	if err != nil {
		t.Fatalf("fake target's health server on %s: %v", addr, err)
	}
	ft.hport = ln.Addr().(*net.TCPAddr).Port
	srv := &http.Server{Handler: http.HandlerFunc(ft.serveHealth), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	done := make(chan struct{})
	go func() {
		defer close(done)
		ft.serve()
	}()
	t.Cleanup(func() {
		srv.Close()
		c.Close()
		<-done
		ft.mu.Lock()
		defer ft.mu.Unlock()
		for _, pc := range ft.ports {
			pc.Close()
		}
	})
	return ft
}

func (ft *fakeTarget) addr() netip.AddrPort { return ft.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

func (ft *fakeTarget) serveHealth(w http.ResponseWriter, r *http.Request) {
	ft.mu.Lock()
	ft.checks = append(ft.checks, r)
	ft.mu.Unlock()
	if d := time.Duration(ft.delay.Load()); d > 0 {
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return
		}
	}
	code := int(ft.status.Load())
	if code == 0 {
		panic(http.ErrAbortHandler)
	}
	if code >= 300 && code < 400 {
		w.Header().Set("Location", "/elsewhere")
	}
	w.WriteHeader(code)
}

func (ft *fakeTarget) serve() {
	buf := make([]byte, 65536)
	for {
		n, from, err := ft.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		h, reason := netstack.ParseHeader(buf[:n])
		if reason != netstack.DropNone {
			continue
		}
		r := received{
			header: append([]byte(nil), buf[:h.Len]...), cookie: h.FlowCookie,
			inner: append([]byte(nil), buf[h.Len:n]...), from: from,
		}
		ft.mu.Lock()
		ft.got = append(ft.got, r)
		ft.mu.Unlock()
		if ft.reply.Load() {
			ft.send(r.from.Port(), r.header, reflectPacket(r.inner))
		}
	}
}

// send sends a reply under header hdr from this target's address and
// source port port (0: its GENEVE socket's).
func (ft *fakeTarget) send(port uint16, hdr, inner []byte) {
	c := ft.conn
	if port != 0 && port != ft.addr().Port() {
		ft.mu.Lock()
		if c = ft.ports[port]; c == nil {
			var err error
			c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ft.addr().Addr(), port)))
			if err != nil {
				ft.mu.Unlock()
				ft.t.Errorf("fake target %s: binding reply port %d: %v", ft.addr(), port, err)
				return
			}
			if ft.ports == nil {
				ft.ports = map[uint16]*net.UDPConn{}
			}
			ft.ports[port] = c
		}
		ft.mu.Unlock()
	}
	if _, err := c.WriteToUDPAddrPort(append(append([]byte(nil), hdr...), inner...), ft.sim); err != nil {
		ft.t.Errorf("fake target %s: sending a reply: %v", ft.addr(), err)
	}
}

// received returns what the target got so far.
func (ft *fakeTarget) received() []received {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	return append([]received(nil), ft.got...)
}

func (ft *fakeTarget) reset() {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	ft.got = nil
}

// group is a simulator in front of n fake targets.
type group struct {
	sim     *Sim
	ep      *Endpoint
	targets []*fakeTarget
	byAddr  map[netip.AddrPort]*fakeTarget
	replies chan []byte
}

// newGroup starts n fake targets and a simulator in front of them on test
// network net; mutate adjusts the configuration (health checks need the
// targets' port: healthPort is it).
func newGroup(t *testing.T, netN, n int, mutate func(c *Config, healthPort int)) *group {
	t.Helper()
	simAddr, tgt := testNet(netN)
	g := &group{byAddr: map[netip.AddrPort]*fakeTarget{}, replies: make(chan []byte, 256)}
	simAP := netip.AddrPortFrom(simAddr, netstack.GenevePort)
	cfg := Config{Addr: simAddr, Senders: 4}
	// Every fake target's health server listens on its own port; the
	// simulator checks one port on every target, so they must agree: bind
	// them in turn until one port works on all (ephemeral ports of distinct
	// addresses rarely collide, so the first try almost always does).
	for i := range n {
		ft := newFakeTarget(t, tgt(i), simAP)
		g.targets = append(g.targets, ft)
		g.byAddr[ft.addr()] = ft
		cfg.Targets = append(cfg.Targets, ft.addr())
	}
	hp := g.alignHealthPorts(t)
	if mutate != nil {
		mutate(&cfg, hp)
	}
	sim, err := New(cfg)
	if err != nil {
		t.Fatalf("starting the simulator: %v", err)
	}
	t.Cleanup(sim.Close)
	g.sim = sim
	g.ep = sim.Endpoint(testEndpoint, testAttachment)
	g.ep.SetReceiver(func(inner []byte) {
		select {
		case g.replies <- append([]byte(nil), inner...):
		default:
		}
	})
	return g
}

// alignHealthPorts gives every fake target's health server the same port.
func (g *group) alignHealthPorts(t *testing.T) int {
	t.Helper()
	port := g.targets[0].hport
	for _, ft := range g.targets[1:] {
		if ft.hport == port {
			continue
		}
		ln, err := net.Listen("tcp4", netip.AddrPortFrom(ft.addr().Addr(), uint16(port)).String())
		if err != nil {
			t.Skipf("cannot give every fake target health port %d: %v", port, err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(ft.serveHealth), ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		ft.hport = port
	}
	return port
}

// send sends one packet from the client's port srcPort to the destination's
// dstPort and returns the target that got it (nil if none within a second).
func (g *group) send(t *testing.T, proto uint8, srcPort, dstPort uint16) *fakeTarget {
	t.Helper()
	return g.sendFrom(t, proto, netip.AddrPortFrom(testClient, srcPort), netip.AddrPortFrom(testDest, dstPort))
}

func (g *group) sendFrom(t *testing.T, proto uint8, src, dst netip.AddrPort) *fakeTarget {
	t.Helper()
	before := make([]int, len(g.targets))
	for i, ft := range g.targets {
		before[i] = len(ft.received())
	}
	if err := g.ep.Send(ipPacket(proto, src, dst, []byte("x"))); err != nil {
		t.Fatalf("Send: %v", err)
	}
	deadline := time.Now().Add(time.Second)
	for {
		for i, ft := range g.targets {
			if len(ft.received()) > before[i] {
				return ft
			}
		}
		if time.Now().After(deadline) {
			return nil
		}
		time.Sleep(time.Millisecond)
	}
}

// last returns the last datagram ft got.
func (ft *fakeTarget) last(t *testing.T) received {
	t.Helper()
	r := ft.received()
	if len(r) == 0 {
		t.Fatalf("target %s got nothing", ft.addr())
	}
	return r[len(r)-1]
}

// target returns the simulator's view of ft.
func (g *group) target(t *testing.T, ft *fakeTarget) TargetStats {
	t.Helper()
	for _, ts := range g.sim.Targets() {
		if ts.Addr == ft.addr() {
			return ts
		}
	}
	t.Fatalf("target %s unknown to the simulator", ft.addr())
	return TargetStats{}
}

// waitState waits up to 5 s for every target to be in the given state.
func (g *group) waitState(t *testing.T, want map[*fakeTarget]TargetState) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ok := true
		var got []string
		for ft, st := range want {
			ts := g.target(t, ft)
			got = append(got, fmt.Sprintf("%s %s", ts.Addr, ts.State))
			ok = ok && ts.State == st
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("target states %v, want %v", got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// portTo finds a client source port from base on whose new flow (proto,
// to dstPort) the simulator would send to ft.
func (g *group) portTo(t *testing.T, ft *fakeTarget, proto uint8, base, dstPort uint16) uint16 {
	t.Helper()
	for p := base; p < base+1000; p++ {
		to, existing, ok := g.sim.Route(testEndpoint, proto, netip.AddrPortFrom(testClient, p), netip.AddrPortFrom(testDest, dstPort))
		if ok && !existing && to == ft.addr() {
			return p
		}
	}
	t.Fatalf("no port from %d whose flow goes to %s", base, ft.addr())
	return 0
}

// flowOf returns the simulator's flow from the client's srcPort, or fails.
func (g *group) flowOf(t *testing.T, srcPort uint16) FlowInfo {
	t.Helper()
	for _, f := range g.sim.Flows() {
		if f.Src.Port() == srcPort && f.Src.Addr() == testClient {
			return f
		}
	}
	t.Fatalf("no flow from port %d", srcPort)
	return FlowInfo{}
}

// waitStats waits up to 2 s for cond on the simulator's counters.
func (g *group) waitStats(t *testing.T, what string, cond func(Stats) bool) Stats {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		st := g.sim.Stats()
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: stats %+v", what, st)
		}
		time.Sleep(time.Millisecond)
	}
}
