package proxy

import (
	"bytes"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// TestUDPRelay: datagrams go both ways, the record counts them once the
// flow idles, and both ends are closed; with a client that announces its
// datagrams and with one that can only be read.
func TestUDPRelay(t *testing.T) {
	for _, blocking := range []bool{false, true} {
		name := map[bool]string{false: "readiness", true: "blocking"}[blocking]
		t.Run(name, func(t *testing.T) {
			p, _, recs := udpProxy(t, "policy: {default: allow}\n", func(c *Config) { c.UDPIdleTimeout = 300 * time.Millisecond })
			dst := newUDPSink(t, true)
			c := newFakeUDPClient(quicClient, dst.addr())
			c.inject([]byte("one"))
			done := make(chan struct{})
			var conn net.Conn = c
			if blocking {
				conn = blockingOnly{c}
			}
			go func() {
				p.HandleUDP(netstack.FlowInfo{Endpoint: 7, Client: quicClient, Dest: dst.addr()}, conn)
				close(done)
			}()
			for i, msg := range []string{"one", "two", "three"} {
				if i > 0 {
					c.inject([]byte(msg))
				}
				select {
				case got := <-c.out:
					if string(got) != msg {
						t.Fatalf("echo %q, want %q", got, msg)
					}
				case <-time.After(3 * time.Second):
					t.Fatalf("no echo of %q", msg)
				}
			}
			<-done
			select {
			case <-c.ended:
			case <-time.After(3 * time.Second):
				t.Fatal("the flow did not end once idle")
			}
			rec := recs.records(t, 1)[0]
			if rec.Kind != "udp" || rec.Action != "allow" || rec.BytesOut != 11 || rec.BytesIn != 11 || rec.Result != "ok" {
				t.Fatalf("record %+v", rec)
			}
			if !c.isClosed() {
				t.Fatal("the client's end was left open")
			}
			if a := p.Stats().UDPActive; a != 0 {
				t.Fatalf("%d UDP flows active after the last ended", a)
			}
		})
	}
}

// TestUDPIdleFlowOneGoroutine: an idle flow whose client announces its
// datagrams holds one goroutine, the one waiting on its host socket.
func TestUDPIdleFlowOneGoroutine(t *testing.T) {
	const flows = 50
	p, _, _ := udpProxy(t, "policy: {default: allow}\n", func(c *Config) { c.UDPIdleTimeout = time.Minute })
	dst := newUDPSink(t, false)
	before := runtime.NumGoroutine()
	var clients []*fakeUDPClient
	for i := range flows {
		c, _ := startFlow(p, netip.AddrPortFrom(quicClient.Addr(), uint16(20000+i)), dst.addr(), []byte("hello"))
		clients = append(clients, c)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(dst.received()) < flows || p.Stats().UDPActive < flows {
		if time.Now().After(deadline) {
			t.Fatalf("%d datagrams arrived, %d flows active", len(dst.received()), p.Stats().UDPActive)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// HandleUDP's own goroutines return at once; a goroutine of an earlier
	// test's gVisor stack (a timer firing) may come and go meanwhile: the
	// count must settle at one a flow.
	deadline = time.Now().Add(2 * time.Second)
	for g := runtime.NumGoroutine() - before; g > flows; g = runtime.NumGoroutine() - before {
		if time.Now().After(deadline) {
			t.Fatalf("%d idle flows hold %d goroutines, want at most one each", flows, g)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, c := range clients {
		c.Close()
	}
	deadline = time.Now().Add(5 * time.Second)
	for p.Stats().UDPActive > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d flows still active after their clients closed", p.Stats().UDPActive)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// dnsResponse is q answered with NXDOMAIN.
func dnsResponse(q []byte) []byte {
	r := bytes.Clone(q)
	r[2], r[3] = 0x81, 0x83
	return r
}

// dnsNoError is q answered with NOERROR and no records: an answer that is
// handed to DNSAnswer (a failed lookup's is not).
func dnsNoError(q []byte) []byte {
	r := bytes.Clone(q)
	r[2], r[3] = 0x81, 0x80
	return r
}

// TestDNSFlowEndsAfterAnswer: a flow to a DNS port (here not 53) ends a
// linger after its last answer instead of idling out, and each answer is
// handed to DNSAnswer before the client has it; an unsolicited response is
// not. A query in the linger keeps the flow.
func TestDNSFlowEndsAfterAnswer(t *testing.T) {
	dst := newUDPSink(t, false)
	type answer struct {
		endpoint   string
		id         uint16
		clientHeld int
	}
	var mu sync.Mutex
	var answers []answer
	c := newFakeUDPClient(quicClient, dst.addr())
	p, _, recs := udpProxy(t, "policy: {default: allow}\n", func(cfg *Config) {
		cfg.UDPIdleTimeout = time.Minute
		cfg.DNSPorts = []uint16{dst.addr().Port()}
		cfg.DNSAnswer = func(_ uint64, endpoint string, _ netip.Addr, msg []byte) {
			c.mu.Lock()
			written := c.outNext // datagrams the client has been given
			c.mu.Unlock()
			mu.Lock()
			answers = append(answers, answer{endpoint, uint16(msg[0])<<8 | uint16(msg[1]), written})
			mu.Unlock()
		}
	})
	start := time.Now()
	c.inject(dnsQuery(1, "a.example.test", 1))
	done := make(chan struct{})
	go func() {
		p.HandleUDP(netstack.FlowInfo{Endpoint: 7, Client: quicClient, Dest: dst.addr()}, c)
		close(done)
	}()
	waitSent := func(n int) netip.AddrPort {
		t.Helper()
		deadline := time.Now().Add(3 * time.Second)
		for len(dst.received()) < n {
			if time.Now().After(deadline) {
				t.Fatalf("%d datagrams at the server, want %d", len(dst.received()), n)
			}
			time.Sleep(5 * time.Millisecond)
		}
		dst.mu.Lock()
		defer dst.mu.Unlock()
		return dst.from[n-1]
	}
	from := waitSent(1)
	// Unsolicited first (another ID), then the answer.
	dst.pc.WriteToUDPAddrPort(dnsResponse(dnsQuery(9, "b.example.test", 1)), from)
	dst.pc.WriteToUDPAddrPort(dnsNoError(dnsQuery(1, "a.example.test", 1)), from)
	for range 2 {
		<-c.out
	}
	// A second query within the linger, answered in turn.
	time.Sleep(300 * time.Millisecond)
	c.inject(dnsQuery(2, "a.example.test", 28))
	waitSent(2)
	time.Sleep(900 * time.Millisecond) // past the first answer's linger
	dst.pc.WriteToUDPAddrPort(dnsNoError(dnsQuery(2, "a.example.test", 28)), from)
	<-c.out
	answered := time.Now()
	select {
	case <-c.ended:
	case <-time.After(5 * time.Second):
		t.Fatal("the DNS flow did not end after its answers")
	}
	<-done
	if took := time.Since(answered); took < dnsLinger/2 || took > dnsLinger+time.Second {
		t.Errorf("the flow ended %s after its last answer, want about %s", took, dnsLinger)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(answers) != 2 || answers[0].id != 1 || answers[1].id != 2 || answers[0].endpoint != "vpce-00000000000000007" {
		t.Fatalf("DNSAnswer saw %+v; want the two answers, not the unsolicited response", answers)
	}
	// The unsolicited response reached the client first (the client drops
	// it, not the proxy), then answer 1; answer 2 came after both.
	if answers[0].clientHeld != 1 || answers[1].clientHeld != 2 {
		t.Errorf("DNSAnswer saw the answers after the client had them: %+v", answers)
	}
	var dns, udp int
	for _, r := range recs.records(t, 3) {
		switch r.Kind {
		case "dns":
			dns++
			if r.RCode != "NOERROR" || r.Result != "ok" {
				t.Errorf("dns record %+v", r)
			}
		case "udp":
			udp++
		}
	}
	if dns != 2 || udp != 1 {
		t.Fatalf("%d dns and %d udp records, want 2 and 1", dns, udp)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatal("the flow waited for its idle timeout")
	}
}

// TestDNSPortsOnly: traffic to a port not in DNSPorts is not read as DNS:
// no dns records, and the flow idles out as any other.
func TestDNSPortsOnly(t *testing.T) {
	dst := newUDPSink(t, true)
	p, _, recs := udpProxy(t, "policy: {default: allow}\n", func(cfg *Config) {
		cfg.UDPIdleTimeout = 300 * time.Millisecond
		cfg.DNSPorts = []uint16{dst.addr().Port() + 1}
	})
	c, _ := startFlow(p, quicClient, dst.addr(), dnsQuery(1, "a.example.test", 1))
	<-c.out
	<-c.ended
	for _, r := range recs.records(t, 1) {
		if r.Kind != "udp" {
			t.Fatalf("record %+v", r)
		}
	}
}

// TestUDPShare: a client holding its share of UDP flows gets no more; its
// drops are counted, and recorded at most once in a while; another client
// is not affected, and the client gets a flow again once one of its own
// ends.
func TestUDPShare(t *testing.T) {
	dst := newUDPSink(t, false)
	p, _, recs := udpProxy(t, "policy: {default: allow}\n", func(cfg *Config) {
		cfg.UDPIdleTimeout = time.Minute
		cfg.MaxUDPFlowsPerClient = 2
	})
	flowFrom := func(client string, port uint16) (*fakeUDPClient, chan struct{}) {
		return startFlow(p, netip.AddrPortFrom(netip.MustParseAddr(client), port), dst.addr(), []byte("x"))
	}
	waitActive := func(n int64) {
		t.Helper()
		deadline := time.Now().Add(3 * time.Second)
		for p.Stats().UDPActive != n {
			if time.Now().After(deadline) {
				t.Fatalf("%d flows active, want %d", p.Stats().UDPActive, n)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	a1, _ := flowFrom("198.18.0.5", 1)
	flowFrom("198.18.0.5", 2)
	waitActive(2)
	var dropped []*fakeUDPClient
	for port := uint16(3); port < 8; port++ {
		c, done := flowFrom("198.18.0.5", port)
		<-done
		dropped = append(dropped, c)
	}
	for _, c := range dropped {
		if !c.isClosed() {
			t.Fatal("a flow beyond the share was not dropped")
		}
	}
	if d := p.Stats().UDPShareDrops; d != 5 {
		t.Fatalf("%d drops counted, want 5", d)
	}
	// Another client, and an IPv6 client whose /80 is not the first's.
	flowFrom("198.18.0.6", 1)
	flowFrom("2001:db8:0:1::5", 1)
	flowFrom("2001:db8:0:1::6", 1)
	waitActive(5)
	c, done := flowFrom("2001:db8:0:1::7", 1) // the /80's third
	<-done
	if !c.isClosed() {
		t.Fatal("an IPv6 client took more than its /80's share with another address")
	}
	// Another /80 of the same /64: another instance of the subnet.
	flowFrom("2001:db8:0:1:1::5", 1)
	waitActive(6)
	// One of the first client's flows ends: it may open another.
	a1.Close()
	waitActive(5)
	flowFrom("198.18.0.5", 9)
	waitActive(6)

	var limited []string
	for _, r := range recs.records(t, 3) {
		if strings.Contains(r.Error, "max-udp-flows-per-client") {
			if r.Action != "deny" || r.Result != "denied" {
				t.Errorf("share record %+v", r)
			}
			limited = append(limited, r.ClientIP)
		}
	}
	// One record per client at its share, not one per drop.
	if len(limited) != 2 || limited[0] != "198.18.0.5" || limited[1] != "2001:db8:0:1::7" {
		t.Fatalf("share records for %v, want one for each client that met its share", limited)
	}
}

// TestUDPDeniedHeld: a denied flow keeps its client end, discarding what
// it sends, so that it gives one record however much it sends; after a
// reload its next datagram is decided again.
func TestUDPDeniedHeld(t *testing.T) {
	dst := newUDPSink(t, false)
	p, h, recs := udpProxy(t, "policy: {default: deny}\n", func(cfg *Config) { cfg.UDPIdleTimeout = time.Minute })
	c, done := startFlow(p, quicClient, dst.addr(), []byte("first"))
	<-done
	for range 20 {
		c.inject([]byte("more"))
	}
	if got := recs.records(t, 1); len(got) != 1 || got[0].Action != "deny" {
		t.Fatalf("records %+v, want one deny", got)
	}
	if c.isClosed() {
		t.Fatal("the denied flow was closed: its every datagram would be a new flow")
	}
	h.Store(mustPolicy(t, "policy: {default: allow}\n"))
	c.inject([]byte("after the reload"))
	deadline := time.Now().Add(3 * time.Second)
	for !c.isClosed() {
		if time.Now().After(deadline) {
			t.Fatal("a held denied flow outlived a reload")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := len(dst.received()); n != 0 {
		t.Fatalf("%d datagrams of a denied flow reached the destination", n)
	}
}

// idleDeniedConn is the client end of a denied flow that sends nothing
// more: it announces no datagrams until end closes it.
type idleDeniedConn struct {
	net.Conn
	mu     sync.Mutex
	notify func()
	closed bool
}

func (c *idleDeniedConn) TryRead([]byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	return 0, netstack.ErrWouldBlock
}

func (c *idleDeniedConn) OnReadable(fn func()) {
	c.mu.Lock()
	c.notify = fn
	c.mu.Unlock()
}

func (c *idleDeniedConn) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	return nil
}

func (c *idleDeniedConn) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// end closes the conn and announces it, as the stack does when the flow's
// endpoint goes: a held flow then lets it go at once.
func (c *idleDeniedConn) end() {
	c.mu.Lock()
	c.closed = true
	fn := c.notify
	c.mu.Unlock()
	if fn != nil {
		fn()
	}
}

// TestUDPDeniedHeldBounded: at most maxDeniedUDP denied flows are held
// open, each with its timer and stack endpoint; the next is closed at
// once, its datagrams then decided, and recorded, again. Unbounded,
// clients flooding denied flows would have each kept for the idle timeout.
// The flows are those of as many clients as the bound takes at their
// share each (TestUDPDeniedHeldClientShare tests the share).
func TestUDPDeniedHeldBounded(t *testing.T) {
	p, h, _ := udpProxy(t, "policy: {default: deny}\n", func(cfg *Config) { cfg.UDPIdleTimeout = time.Minute })
	s := udpSubject{proto: policy.ProtoUDP, dest: netip.MustParseAddrPort("127.0.0.1:9"), client: quicClient.Addr()}
	conns := make([]*idleDeniedConn, maxDeniedUDP+1)
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				c.end()
			}
		}
		waitUntil(t, 10*time.Second, func() bool { return p.udp.held.Load() == 0 }, "the held denied flows to be let go")
	})
	for i := range conns {
		conns[i] = &idleDeniedConn{}
		client := netip.AddrFrom4([4]byte{198, 18, 1, byte(i / maxDeniedUDPPerClient)})
		s.client = client
		p.holdDenied(conns[i], conns[i], h.Load(), []udpSubject{s}, shareKey{endpoint: 7, client: client})
	}
	if n := p.udp.held.Load(); n != maxDeniedUDP {
		t.Errorf("%d denied flows held, want the bound, %d", n, maxDeniedUDP)
	}
	if conns[maxDeniedUDP-1].isClosed() {
		t.Error("a denied flow within the bound was closed")
	}
	if !conns[maxDeniedUDP].isClosed() {
		t.Error("the denied flow beyond the bound was held open")
	}
}

// TestUDPShareNotHeldByDenied: a denied flow holds no host socket, so it
// does not count against its client's share, even while it is held.
func TestUDPShareNotHeldByDenied(t *testing.T) {
	allowed, denied := newUDPSink(t, false), newUDPSink(t, false)
	doc := "policy:\n  default: allow\n  rules:\n    - {name: no, dest_cidrs: [\"127.0.0.1/32\"], ports: [" +
		strconv.Itoa(int(denied.addr().Port())) + "], action: deny}\n"
	p, _, recs := udpProxy(t, doc, func(cfg *Config) {
		cfg.UDPIdleTimeout = time.Minute
		cfg.MaxUDPFlowsPerClient = 2
	})
	for port := uint16(1); port <= 3; port++ {
		_, done := startFlow(p, netip.AddrPortFrom(quicClient.Addr(), port), denied.addr(), []byte("x"))
		<-done
	}
	for port := uint16(11); port <= 12; port++ {
		startFlow(p, netip.AddrPortFrom(quicClient.Addr(), port), allowed.addr(), []byte("x"))
	}
	deadline := time.Now().Add(3 * time.Second)
	for p.Stats().UDPActive != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d flows active, want the 2 allowed; %d share drops", p.Stats().UDPActive, p.Stats().UDPShareDrops)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if d := p.Stats().UDPShareDrops; d != 0 {
		t.Fatalf("%d share drops: the denied flows counted against the share", d)
	}
	if n := len(recs.records(t, 3)); n != 3 {
		t.Fatalf("%d records, want the 3 denies", n)
	}
}

// TestUDPClientGoneEndsFlow: a client whose port answers ICMP unreachable
// has closed its socket: the flow ends at once, not at the idle timeout, and
// its record is not an error.
func TestUDPClientGoneEndsFlow(t *testing.T) {
	p, _, recs := udpProxy(t, "policy: {default: allow}\n", func(c *Config) { c.UDPIdleTimeout = time.Minute })
	dst := newUDPSink(t, true)
	c, _ := startFlow(p, quicClient, dst.addr(), []byte("hello"))
	<-c.out
	c.failRead(&net.OpError{Op: "read", Net: "udp", Err: syscall.ECONNREFUSED})
	select {
	case <-c.ended:
	case <-time.After(3 * time.Second):
		t.Fatal("the flow outlived its client")
	}
	if rec := recs.records(t, 1)[0]; rec.Result != "ok" || rec.Error != "" {
		t.Fatalf("record %+v", rec)
	}
}

// TestUDPUnansweredEndsSooner: a UDP relay the destination never answers
// ends after the unanswered timeout, as the packet stack forgets its flow
// then; one the destination answered keeps the idle timeout.
func TestUDPUnansweredEndsSooner(t *testing.T) {
	silent, echo := newUDPSink(t, false), newUDPSink(t, true)
	p, _, _ := udpProxy(t, "policy: {default: allow}\n", func(c *Config) {
		c.UDPIdleTimeout = time.Minute
		c.UDPUnansweredTimeout = time.Second
	})
	start := time.Now()
	startFlow(p, netip.MustParseAddrPort("198.18.0.5:1"), silent.addr(), []byte("anyone?"))
	startFlow(p, netip.MustParseAddrPort("198.18.0.5:2"), echo.addr(), []byte("hello"))
	for p.Stats().UDPActive != 2 {
		if time.Since(start) > 800*time.Millisecond {
			t.Fatalf("%d relays active, want both before the unanswered timeout", p.Stats().UDPActive)
		}
		time.Sleep(5 * time.Millisecond)
	}
	for p.Stats().UDPActive != 1 {
		if time.Since(start) > 5*time.Second {
			t.Fatal("the unanswered relay still runs after 5 s, want it ended after 1 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	if n := p.Stats().UDPActive; n != 1 {
		t.Fatalf("%d relays active, want the answered one still", n)
	}
}
