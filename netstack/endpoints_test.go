package netstack

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"

	"github.com/gwlbproxy/gwlbproxy/internal/monoclock"
)

// testHandler stands in for the proxy: it rejects TCP, reads the first
// datagram of each UDP flow and closes it, and answers echo requests.
type testHandler struct {
	udp chan []byte // first datagram of each UDP flow, when not nil
}

func (*testHandler) HandleTCP(req *TCPRequest) { req.Reject() }

func (h *testHandler) HandleUDP(_ FlowInfo, conn net.Conn) {
	defer conn.Close()
	if h.udp == nil {
		return
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 65536)
	n, err := conn.Read(buf)
	if err != nil {
		return
	}
	select {
	case h.udp <- buf[:n]:
	default:
	}
}

func (*testHandler) HandleEcho(req EchoRequest) { req.Reply(req.Data) }

// startServer starts a server on 127.0.0.1 with cfg (Handler and ListenAddr
// filled in when unset) and closes it when the test ends.
func startServer(t testing.TB, cfg Config) *Server {
	t.Helper()
	if cfg.Handler == nil {
		cfg.Handler = &testHandler{}
	}
	if cfg.ListenAddr == "" {
		cfg.ListenAddr = "127.0.0.1:0"
	}
	if cfg.Readers == 0 {
		cfg.Readers = 1
	}
	if cfg.ReturnPath == "" {
		cfg.ReturnPath = ReturnPathBound
	}
	s, err := Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { s.Serve(); close(served) }()
	t.Cleanup(func() {
		s.Close()
		<-served
	})
	return s
}

// Inner addresses of the tests: a client and a destination, neither of them
// loopback (the stacks refuse loopback without AllowLoopback).
var (
	testClient = netip.MustParseAddr("198.18.0.5")
	testDest   = netip.MustParseAddr("198.18.9.9")
)

// ipv4Sum fills in the IPv4 header checksum of pkt, which gVisor checks.
func ipv4Sum(pkt []byte) []byte {
	pkt[10], pkt[11] = 0, 0
	binary.BigEndian.PutUint16(pkt[10:], ^checksum.Checksum(pkt[:20], 0))
	return pkt
}

// udpPacket is an IPv4 UDP datagram from the test client's port sport to
// the test destination's port 53, carrying payload bytes (UDP checksum 0:
// none, which IPv4 allows).
func udpPacket(sport uint16, payload int) []byte {
	return ipv4Sum(udpDatagram(netip.AddrPortFrom(testClient, sport), netip.AddrPortFrom(testDest, 53), payload))
}

// echoPacket is an IPv4 ICMP echo request from the test client.
func echoPacket(id uint16, data string) []byte {
	pkt := make([]byte, 20+8+len(data))
	pkt[0], pkt[8], pkt[9] = 0x45, 64, protoICMP
	binary.BigEndian.PutUint16(pkt[2:], uint16(len(pkt)))
	c, d := testClient.As4(), testDest.As4()
	copy(pkt[12:], c[:])
	copy(pkt[16:], d[:])
	icmp := pkt[20:]
	icmp[0] = 8
	binary.BigEndian.PutUint16(icmp[4:], id)
	copy(icmp[8:], data)
	binary.BigEndian.PutUint16(icmp[2:], ^checksum.Checksum(icmp, 0))
	return ipv4Sum(pkt)
}

func geneve(endpoint uint64, inner []byte) []byte {
	return append(AppendHeader(nil, EtherTypeIPv4, 0, endpoint, 0xa77ac4, 0xc00c1e, nil), inner...)
}

// gwlbSocket is a UDP socket on addr that sends GENEVE to the server, as the
// GWLB would.
func gwlbSocket(t testing.TB, addr string) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitUntil polls cond every 10 ms for up to d, failing the test with
// what's description of what there was instead.
func waitUntil(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, got := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s; got %s", d, what, got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stackGoroutines returns the goroutines running gVisor's code (each stack
// has its own), with their stacks.
func stackGoroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "gvisor.dev/gvisor/") {
			out = append(out, g)
		}
	}
	return out
}

// noStackGoroutines waits until no goroutine runs gVisor's code: every
// stack closed has stopped.
func noStackGoroutines(t *testing.T, d time.Duration, what string) {
	t.Helper()
	waitUntil(t, d, what, func() (bool, string) {
		gs := stackGoroutines()
		return len(gs) == 0, fmt.Sprintf("%d goroutines of gVisor:\n%s", len(gs), strings.Join(gs, "\n\n"))
	})
}

func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// Bytes after the inner packet's IP length are none of the packet's (a
// sender's padding): an echo request's data ends where its packet does,
// so the reply, and what is sent on to the destination, carries only
// that.
func TestEchoEndsAtTheIPLength(t *testing.T) {
	c := gwlbSocket(t, "127.0.0.1:0")
	s := startServer(t, Config{ReplyPort: c.LocalAddr().(*net.UDPAddr).AddrPort().Port()})
	if _, err := c.WriteToUDPAddrPort(geneve(7, append(echoPacket(1, "ping"), "TRAILER"...)), s.Addr()); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 65536)
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no echo reply: %v; stats %+v", err, s.Stats())
	}
	h, r := ParseHeader(buf[:n])
	if r != DropNone {
		t.Fatalf("reply: %s", r)
	}
	if got := string(buf[h.Len+28 : n]); got != "ping" {
		t.Fatalf("echo reply data %q, want %q", got, "ping")
	}
}

// TestUnknownSenderNoReply: GENEVE from outside Senders gets no reply, makes
// no stack and no flow, and is counted; the same datagram from a sender
// inside gets its reply.
func TestUnknownSenderNoReply(t *testing.T) {
	gwlb := gwlbSocket(t, "127.0.0.2:0")
	stranger := gwlbSocket(t, "127.0.0.1:0")
	s := startServer(t, Config{
		Senders:   []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")},
		ReplyPort: gwlb.LocalAddr().(*net.UDPAddr).AddrPort().Port(),
	})
	to := net.UDPAddrFromAddrPort(s.Addr())
	req := geneve(42, echoPacket(7, "are you there"))

	// The stranger's echo request: counted, no reply.
	if _, err := stranger.WriteToUDP(req, to); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Second, "an unknown_sender drop", func() (bool, string) {
		st := s.Stats()
		return st.Drops["unknown_sender"] == 1, fmt.Sprintf("drops %v", st.Drops)
	})
	if st := s.Stats(); st.Stacks != 0 || st.Flows != 0 || st.EchoRequests != 0 {
		t.Fatalf("a datagram from an unknown sender made %d stacks, %d flows, %d echo requests", st.Stacks, st.Flows, st.EchoRequests)
	}
	// The GWLB's: answered, to the GWLB (to whom else), under the header.
	if _, err := gwlb.WriteToUDP(req, to); err != nil {
		t.Fatal(err)
	}
	gwlb.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 9000)
	n, err := gwlb.Read(buf)
	if err != nil {
		t.Fatalf("no reply to the GWLB's echo request: %v; drops %v", err, s.Stats().Drops)
	}
	h, r := ParseHeader(buf[:n])
	if r != DropNone || h.Endpoint != 42 {
		t.Fatalf("reply: %s, endpoint %d", r, h.Endpoint)
	}
	// Nothing ever reached the stranger: its datagram was dropped before
	// anything could answer it, and replies go only to a flow's GWLB.
	stranger.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := stranger.Read(buf); err == nil {
		t.Fatalf("the unknown sender got %d bytes back", n)
	}
	if d := s.Stats().Drops["unknown_sender"]; d != 1 {
		t.Fatalf("%d unknown_sender drops, want 1", d)
	}
}

// TestForgedEndpointsBounded: 10,000 GENEVE datagrams, each claiming an
// endpoint of its own, keep the stacks, goroutines and heap within
// MaxEndpoints; the ones beyond it are dropped and counted; once idle,
// every stack is closed and the goroutines and heap go back to where they
// were.
func TestForgedEndpointsBounded(t *testing.T) {
	const (
		maxEndpoints = 64
		forged       = 10_000
	)
	gwlb := gwlbSocket(t, "127.0.0.1:0")
	baseG := runtime.NumGoroutine()
	baseHeap := heapInUse()
	s := startServer(t, Config{
		MaxEndpoints:        maxEndpoints,
		IdleTimeout:         time.Second,
		TCPIdleTimeout:      time.Second,
		EndpointIdleTimeout: 500 * time.Millisecond,
	})
	to := net.UDPAddrFromAddrPort(s.Addr())

	// One stack, to know what one costs in goroutines.
	if _, err := gwlb.WriteToUDP(geneve(1<<40, udpPacket(1000, 16)), to); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Second, "the first stack", func() (bool, string) {
		st := s.Stats()
		return st.Stacks == 1, fmt.Sprintf("%d stacks", st.Stacks)
	})
	perStack := max(len(stackGoroutines()), 1)

	var maxStacks atomic.Int64
	var maxG atomic.Int64
	sample := func() {
		maxStacks.Store(max(maxStacks.Load(), s.Stats().Stacks))
		maxG.Store(max(maxG.Load(), int64(runtime.NumGoroutine())))
	}
	for i := range forged {
		if _, err := gwlb.WriteToUDP(geneve(uint64(i)+1, udpPacket(uint16(2000+i%1000), 16)), to); err != nil {
			t.Fatal(err)
		}
		// Never more in flight than the socket buffers hold: every
		// datagram is read, none lost in the kernel.
		if i%100 == 99 {
			want := uint64(i + 2)
			waitUntil(t, 10*time.Second, fmt.Sprintf("datagram %d read", i+2), func() (bool, string) {
				st := s.Stats()
				return st.PacketsIn >= want, fmt.Sprintf("%d read", st.PacketsIn)
			})
			sample()
		}
	}
	waitUntil(t, 10*time.Second, "every datagram read", func() (bool, string) {
		st := s.Stats()
		return st.PacketsIn == forged+1, fmt.Sprintf("%d read", st.PacketsIn)
	})
	sample()
	st := s.Stats()
	heapFull := heapInUse()
	t.Logf("%d forged endpoints: at most %d stacks and %d goroutines (%d before, %d per stack); %d stacks made, %d closed, %d dropped over the cap; heap %d KiB over the start",
		forged, maxStacks.Load(), maxG.Load(), baseG, perStack, st.StacksCreated, st.StacksClosed, st.Drops["endpoint_limit"], (int64(heapFull)-int64(baseHeap))>>10)
	if maxStacks.Load() > maxEndpoints {
		t.Errorf("%d stacks at once, cap %d", maxStacks.Load(), maxEndpoints)
	}
	// Besides the stacks': the server's readers and expiry, and UDP flows
	// being handed over.
	if limit := int64(baseG + maxEndpoints*perStack + 64); maxG.Load() > limit {
		t.Errorf("%d goroutines at once, want at most %d (%d stacks of %d)", maxG.Load(), limit, maxEndpoints, perStack)
	}
	if st.StacksCreated+st.Drops["endpoint_limit"] != forged+1 {
		t.Errorf("%d stacks made and %d datagrams dropped over the cap, of %d", st.StacksCreated, st.Drops["endpoint_limit"], forged+1)
	}
	if st.Drops["endpoint_limit"] < forged/2 {
		t.Errorf("only %d datagrams dropped over the cap", st.Drops["endpoint_limit"])
	}
	// Uncapped, 10,000 stacks took over 100 MiB; 64 take a few.
	if grown := int64(heapFull) - int64(baseHeap); grown > 48<<20 {
		t.Errorf("heap grew by %d MiB", grown>>20)
	}

	// Idle: the flows expire, then the stacks close, and everything they
	// held goes.
	waitUntil(t, 15*time.Second, "every stack closed", func() (bool, string) {
		st := s.Stats()
		return st.Stacks == 0 && st.Flows == 0 && len(st.FlowsByEndpoint) == 0,
			fmt.Sprintf("%d stacks, %d flows, %d endpoints in the flow table", st.Stacks, st.Flows, len(st.FlowsByEndpoint))
	})
	noStackGoroutines(t, 10*time.Second, "the stacks' goroutines to end")
	if grown := int64(heapInUse()) - int64(baseHeap); grown > 8<<20 {
		t.Errorf("heap %d MiB over the start with every stack closed", grown>>20)
	}
	if st := s.Stats(); st.StacksClosed != st.StacksCreated {
		t.Errorf("%d stacks made, %d closed", st.StacksCreated, st.StacksClosed)
	}
}

// TestIdleStackClosedAndRemade: a stack with a flow stays; once the flow has
// expired and no packet came for EndpointIdleTimeout it is closed, its
// goroutines end, and the endpoint's next packet gets a working new one.
func TestIdleStackClosedAndRemade(t *testing.T) {
	h := &testHandler{udp: make(chan []byte, 4)}
	gwlb := gwlbSocket(t, "127.0.0.1:0")
	s := startServer(t, Config{
		Handler:             h,
		IdleTimeout:         2 * time.Second,
		TCPIdleTimeout:      2 * time.Second,
		EndpointIdleTimeout: 100 * time.Millisecond,
	})
	to := net.UDPAddrFromAddrPort(s.Addr())
	send := func(sport uint16) {
		t.Helper()
		if _, err := gwlb.WriteToUDP(geneve(0x0123456789abcdef, udpPacket(sport, 100)), to); err != nil {
			t.Fatal(err)
		}
		select {
		case d := <-h.udp:
			if len(d) != 100 {
				t.Fatalf("the handler got %d bytes, want 100", len(d))
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no UDP flow reached the handler; stats %+v", s.Stats())
		}
	}
	send(5000)
	// Longer than EndpointIdleTimeout, shorter than the flow's: the flow
	// keeps the stack.
	time.Sleep(400 * time.Millisecond)
	if st := s.Stats(); st.Stacks != 1 || st.StacksClosed != 0 {
		t.Fatalf("with a flow in the table: %d stacks, %d closed", st.Stacks, st.StacksClosed)
	}
	waitUntil(t, 5*time.Second, "the idle stack closed", func() (bool, string) {
		st := s.Stats()
		return st.Stacks == 0 && st.StacksClosed == 1, fmt.Sprintf("%d stacks, %d closed, %d flows", st.Stacks, st.StacksClosed, st.Flows)
	})
	noStackGoroutines(t, 5*time.Second, "the closed stack's goroutines to end")
	send(5001)
	if st := s.Stats(); st.Stacks != 1 || st.StacksCreated != 2 {
		t.Fatalf("after the endpoint's next packet: %d stacks, %d made; want 1 and 2", st.Stacks, st.StacksCreated)
	}
	if d := s.Stats().Drops["reply_without_flow"]; d != 0 {
		t.Errorf("%d replies without a flow: the closed stack's writes were counted", d)
	}
}

// TestStackCloseRace: readers hand packets to an endpoint's stack while the
// reaper closes it whenever it can (its flows expired at once). No packet
// is ever handed to a closed stack (run with -race: the lock protocol is
// what is checked), every stack made is closed, and nothing is left
// running.
func TestStackCloseRace(t *testing.T) {
	s := startServer(t, Config{EndpointIdleTimeout: time.Hour})
	const readers = 4
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var handed atomic.Int64
	for r := range readers {
		wg.Go(func() {
			from := netip.MustParseAddrPort("127.0.0.2:40000")
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ep := uint64(1 + i%3)
				s.handleDatagram(geneve(ep, udpPacket(uint16(1000*r+i%1000), 8)), from, nil)
				st, _ := s.enterStack(ep, true, DropNone)
				if st == nil {
					continue
				}
				if st.closed {
					t.Error("a reader holds a closed stack")
				}
				handed.Add(1)
				st.mu.RUnlock()
			}
		})
	}
	far := monoclock.Now() + int64(1000*time.Hour)
	closed := 0
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); {
		s.flows.Expire(far)
		closed += s.closeIdleStacks(far)
	}
	close(stop)
	wg.Wait()
	// The server's own expiry may hold a stack's lock just then: a stack
	// it holds is left for the next round.
	for deadline := time.Now().Add(5 * time.Second); s.Stats().Stacks > 0 && time.Now().Before(deadline); {
		s.flows.Expire(far)
		closed += s.closeIdleStacks(far)
	}
	st := s.Stats()
	t.Logf("%d packets handed in, %d stacks made, %d closed", handed.Load(), st.StacksCreated, closed)
	if closed == 0 || handed.Load() == 0 {
		t.Fatalf("%d stacks closed while %d packets were handed in: the race was not run", closed, handed.Load())
	}
	// Every flow has expired: an endpoint still counted is a count that
	// went wrong when its stack closed under a reader making a new one.
	for ep, n := range s.flows.PerEndpoint() {
		if n != 0 {
			t.Errorf("endpoint %d: %d flows counted, none in the table", ep, n)
		}
	}
	if st.Stacks != 0 || st.StacksCreated != uint64(closed) || st.StacksClosed != uint64(closed) {
		t.Fatalf("%d stacks open, %d made, %d closed", st.Stacks, st.StacksCreated, closed)
	}
	noStackGoroutines(t, 5*time.Second, "the stacks' goroutines to end")
}

// TestLaterFragmentsFollowTheirFirst: a client's datagram in fragments
// reaches the handler whole; later fragments whose first fragment was not
// taken in (never sent, refused by a full flow table, or for an endpoint
// without a stack) are dropped and counted, make no flow and no stack, and
// never reach a stack's reassembly.
func TestLaterFragmentsFollowTheirFirst(t *testing.T) {
	h := &testHandler{udp: make(chan []byte, 4)}
	const maxFlows = 4
	s := startServer(t, Config{Handler: h, MaxFlows: maxFlows, MaxFlowsPerClient: maxFlows})
	from := netip.MustParseAddrPort("127.0.0.2:40000")
	const ep = 9

	// A whole datagram, in order: reassembled and handed over.
	frags := fragment(udpPacket(3000, 20000), 0x4242, 1500)
	for _, f := range frags {
		s.handleDatagram(geneve(ep, ipv4Sum(f)), from, nil)
	}
	select {
	case d := <-h.udp:
		if len(d) != 20000 {
			t.Fatalf("the handler got %d bytes, want the 20000 sent in %d fragments", len(d), len(frags))
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("the fragmented datagram never reached the handler; stats %+v", s.Stats())
	}
	st := s.Stats()
	if st.Flows != 1 || st.Drops["fragment_without_flow"] != 0 {
		t.Fatalf("after one datagram in %d fragments: %d flows, drops %v", len(frags), st.Flows, st.Drops)
	}
	v, _ := s.stacks.Load(uint64(ep))
	ipIn := func() uint64 { return v.(*endpointStack).stack.Stats().IP.PacketsReceived.Value() }
	before := ipIn()

	// A flood of later fragments, all sources, all IDs, two endpoints:
	// nothing is taken in.
	const flood = 5000
	for i := range flood {
		pkt := udpPacket(uint16(4000+i), 3000)
		binary.BigEndian.PutUint32(pkt[12:], uint32(0xc6120000+i)) // 198.18.x.y: a client each
		later := fragment(pkt, uint32(i), 1500)[1]
		s.handleDatagram(geneve(uint64(ep+i%2), ipv4Sum(later)), from, nil)
	}
	st = s.Stats()
	if st.Drops["fragment_without_flow"] != flood || st.Flows != 1 || st.Stacks != 1 {
		t.Fatalf("after %d later fragments without their first: %d dropped, %d flows, %d stacks",
			flood, st.Drops["fragment_without_flow"], st.Flows, st.Stacks)
	}
	if got := ipIn(); got != before {
		t.Fatalf("%d later fragments without their first reached the stack", got-before)
	}

	// First fragments beyond the flow table take the places of the oldest
	// flows never answered (the first datagram's among them, perhaps: the
	// oldest of a shard), and the later fragments of a datagram whose flow
	// was evicted since its first are refused: fragments still never get
	// past the table.
	var later [][]byte
	var keys []FlowKey
	for i := range 2 * maxFlows {
		fs := fragment(udpPacket(uint16(6000+i), 3000), uint32(0x1000+i), 1500)
		s.handleDatagram(geneve(ep, ipv4Sum(fs[0])), from, nil)
		later = append(later, fs[1:]...)
		p, _ := ParsePacket(ipv4Sum(fs[0]), EtherTypeIPv4)
		keys = append(keys, p.Key(ep))
	}
	gone := 0
	for _, k := range keys {
		if s.flows.Lookup(&k) == nil {
			gone++
		}
	}
	for _, f := range later {
		s.handleDatagram(geneve(ep, ipv4Sum(f)), from, nil)
	}
	st = s.Stats()
	if gone < maxFlows || st.Flows != maxFlows || st.FlowsEvicted != maxFlows+1 || st.Drops["flow_table_full"] != 0 ||
		st.Drops["fragment_without_flow"] != flood+uint64(gone*len(later)/len(keys)) {
		t.Fatalf("fragmented datagrams beyond a table of %d: %d flows, %d evicted (%d of the new), drops %v", maxFlows, st.Flows, st.FlowsEvicted, gone, st.Drops)
	}
}
