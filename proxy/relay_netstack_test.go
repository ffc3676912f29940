package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/netstack/gwlbsim"
	"github.com/gwlbproxy/gwlbproxy/proxy/hostconn"
)

// These tests relay real netstack.Conns: the client direction reads with
// TryRead and parks on the endpoint's wait queue, as in the appliance.

// acceptAll hands every accepted client connection to the test.
type acceptAll struct{ conns chan *netstack.Conn }

func (h *acceptAll) HandleTCP(req *netstack.TCPRequest) {
	if c, err := req.Accept(); err == nil {
		h.conns <- c
	}
}
func (*acceptAll) HandleUDP(_ netstack.FlowInfo, conn net.Conn) { conn.Close() }
func (*acceptAll) HandleEcho(netstack.EchoRequest)              {}

// relayRig is a netstack server behind a GWLB simulator on loopback, and a
// client stack behind the simulator.
type relayRig struct {
	srv    *netstack.Server
	client *gwlbsim.ClientStack
	h      *acceptAll
}

func newRelayRig(t *testing.T) *relayRig {
	t.Helper()
	r := &relayRig{h: &acceptAll{conns: make(chan *netstack.Conn, 1)}}
	var ep *gwlbsim.Endpoint
	r.srv, ep = simulatedEndpoint(t, r.h, false)
	var err error
	if r.client, err = ep.NewClientStack(netip.MustParseAddr("198.18.0.5")); err != nil {
		t.Fatal(err)
	}
	return r
}

// simulatedEndpoint runs a netstack server with handler h (loopback
// destinations allowed when allowLoopback) behind a GWLB simulator on
// loopback, both stopped when the test ends, and returns the server and
// the simulator's endpoint that clients are made on.
func simulatedEndpoint(t *testing.T, h netstack.Handler, allowLoopback bool) (*netstack.Server, *gwlbsim.Endpoint) {
	t.Helper()
	return simulatedEndpointTCP(t, h, allowLoopback, netstack.TCPOptions{})
}

// simulatedEndpointTCP is simulatedEndpoint with the stacks' TCP tuned by
// tcp.
func simulatedEndpointTCP(t *testing.T, h netstack.Handler, allowLoopback bool, tcp netstack.TCPOptions) (*netstack.Server, *gwlbsim.Endpoint) {
	t.Helper()
	return simulatedEndpointWith(t, netstack.Config{Handler: h, AllowLoopback: allowLoopback, TCP: tcp})
}

// simulatedEndpointWith is simulatedEndpoint with a server made of cfg
// (its listen address, reader, reply port and return path set here).
func simulatedEndpointWith(t *testing.T, cfg netstack.Config) (*netstack.Server, *gwlbsim.Endpoint) {
	t.Helper()
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	port := pc.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	pc.Close() // the simulator's port, free again for it
	cfg.ListenAddr, cfg.Readers, cfg.ReplyPort, cfg.ReturnPath = "127.0.0.1:0", 1, port, netstack.ReturnPathBound
	srv, err := netstack.Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	sim, err := gwlbsim.New(gwlbsim.Config{Addr: netip.MustParseAddr("127.0.0.1"), ListenPort: port, Appliance: srv.Addr(), Senders: 1})
	if err != nil {
		srv.Close()
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { srv.Serve(); close(served) }()
	t.Cleanup(func() { sim.Close(); srv.Close(); <-served })
	return srv, sim.Endpoint(0x0123456789abcdef, 0x1111222233334444)
}

// dial connects the client to 198.18.9.9:port and returns both ends.
func (r *relayRig) dial(t *testing.T, port uint16) (net.Conn, *netstack.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cc, err := r.client.DialTCP(ctx, netip.AddrPortFrom(netip.MustParseAddr("198.18.9.9"), port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	select {
	case c := <-r.h.conns:
		return cc, c
	case <-time.After(5 * time.Second):
		t.Fatal("the connection did not reach the handler")
		return nil, nil
	}
}

// dialEndpoint connects a bare gVisor endpoint of the client to
// 198.18.9.9:port, for what gonet cannot do (a RST): the endpoint and the
// appliance's end.
func (r *relayRig) dialEndpoint(t *testing.T, port uint16) (tcpip.Endpoint, *netstack.Conn) {
	t.Helper()
	var wq waiter.Queue
	ep, terr := r.client.Stack.NewEndpoint(tcp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
	if terr != nil {
		t.Fatal(terr)
	}
	t.Cleanup(ep.Close)
	ent, ch := waiter.NewChannelEntry(waiter.WritableEvents | waiter.EventHUp | waiter.EventErr)
	wq.EventRegister(&ent)
	defer wq.EventUnregister(&ent)
	start := time.Now()
	if terr = ep.Connect(tcpip.FullAddress{Addr: tcpip.AddrFrom4([4]byte{198, 18, 9, 9}), Port: port}); terr != nil {
		if _, ok := terr.(*tcpip.ErrConnectStarted); !ok {
			t.Fatal(terr)
		}
		select {
		case <-ch:
		case <-time.After(20 * time.Second):
			t.Fatalf("the connection through the appliance not made in 20 s (state %v); %s", tcp.EndpointState(ep.State()), r.handshakeSeen())
		}
		if terr = ep.LastError(); terr != nil {
			t.Fatalf("connecting through the appliance, after %v: %v; %s", time.Since(start).Round(time.Millisecond), terr, r.handshakeSeen())
		}
	}
	select {
	case c := <-r.h.conns:
		return ep, c
	case <-time.After(5 * time.Second):
		t.Fatalf("the connection, made in %v, did not reach the handler (state %v); %s", time.Since(start).Round(time.Millisecond), tcp.EndpointState(ep.State()), r.handshakeSeen())
		return nil, nil
	}
}

// handshakeSeen says what each side counted of a connect that failed or
// took long: where its segments stopped (the client's SYNs sent again, the
// appliance's packets and drops, the connection attempts it handed over).
func (r *relayRig) handshakeSeen() string {
	ct := r.client.Stack.Stats().TCP
	st := r.srv.Stats()
	var drops []string
	for why, n := range st.Drops {
		if n > 0 {
			drops = append(drops, fmt.Sprintf("%s %d", why, n))
		}
	}
	slices.Sort(drops)
	return fmt.Sprintf("client: %d segments sent, %d retransmitted, %d received, %d resets received; "+
		"appliance: %d packets in, %d out, drops %v, %d connection attempts, %d refused, %d return port fallbacks",
		ct.SegmentsSent.Value(), ct.Retransmits.Value(), ct.ValidSegmentsReceived.Value(), ct.ResetsReceived.Value(),
		st.PacketsIn, st.PacketsOut, drops, st.TCPConnections, st.TCPSetupsRefused, st.ReturnPortFallbacks)
}

// Idle relayed flows keep no pooled buffer alive. gVisor's endpoint keeps
// the last reader it was handed until the next write; were that the
// caller's, each idle flow that last wrote from a pooled buffer would keep
// it, a fresh one after every GC emptied the pool: a relay buffer a flow.
func TestRelayIdleFlowsPinNoBuffers(t *testing.T) {
	alive := countBuffers(t)
	r := newRelayRig(t)
	const flows = 40
	for i := range flows {
		cc, conn := r.dial(t, uint16(1000+i))
		upSide, server := loopbackPair(t)
		startRelay(conn, upSide, func(int64, int64, error) {})
		if _, err := server.Write([]byte("hello")); err != nil { // a short response, then quiet
			t.Fatal(err)
		}
		cc.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(cc, make([]byte, 5)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond) // the relay has put its buffer back
		runtime.GC()
		runtime.GC() // the pool is empty now
	}
	live := alive()
	t.Logf("pooled buffers live %d for %d idle flows", live, flows)
	if live > 4 {
		t.Errorf("%d idle flows keep %d pooled relay buffers alive", flows, live)
	}
}

// A client that stops reading while its destination keeps sending (a
// stalled download; any client can do it) costs its flow one relay
// buffer, held while the relay's write to the client waits, and no more:
// the direction does not take a buffer per write attempt or per wake-up.
func TestRelayStalledFlowsHoldOneBufferEach(t *testing.T) {
	alive := countBuffers(t)
	r := newRelayRig(t)
	const flows = 8
	var sent atomic.Int64
	for i := range flows {
		_, conn := r.dial(t, uint16(3000+i)) // the client never reads
		upSide, server := loopbackPair(t)
		startRelay(conn, upSide, func(int64, int64, error) {})
		go func() {
			chunk := make([]byte, 64<<10)
			for {
				n, err := server.Write(chunk)
				sent.Add(int64(n))
				if err != nil {
					return // closed at the test's end
				}
			}
		}()
	}
	// Stalled: the destinations' writes stop moving for a while.
	deadline := time.Now().Add(20 * time.Second)
	for last := int64(-1); ; {
		time.Sleep(300 * time.Millisecond)
		now := sent.Load()
		if now == last {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the flows never stalled: %d bytes sent", now)
		}
		last = now
	}
	live := alive()
	t.Logf("%d stalled flows, %d MiB sent into them: %d relay buffers of %d KiB held",
		flows, sent.Load()>>20, live, relayBufSize>>10)
	if live == 0 {
		t.Fatal("no relay buffer is held: the test measures nothing")
	}
	if live > flows {
		t.Errorf("%d stalled flows hold %d relay buffers: more than one each", flows, live)
	}
}

// Many small writes with pauses, so the client's direction parks and
// wakes often, while the destination half-closes first: every byte arrives
// in order, and done is called once with the exact counts.
func TestRelayParksAndWakes(t *testing.T) {
	r := newRelayRig(t)
	for round := range 10 {
		cc, conn := r.dial(t, uint16(2000+round))
		upSide, server := loopbackPair(t)
		var calls atomic.Int32
		done := make(chan relayResult, 2)
		startRelay(&peekedConn{Conn: conn}, upSide, func(out, in int64, err error) {
			calls.Add(1)
			done <- relayResult{out, in, err}
		})
		server.Write([]byte("banner"))
		server.CloseWrite()
		rng := rand.New(rand.NewPCG(uint64(round), 1))
		sent := make(chan []byte, 1)
		go func() {
			var all bytes.Buffer
			defer func() { sent <- all.Bytes() }()
			for range 200 {
				b := make([]byte, 1+rng.IntN(3000))
				for j := range b {
					b[j] = byte(rng.Uint32())
				}
				all.Write(b)
				if _, err := cc.Write(b); err != nil {
					return
				}
				if rng.IntN(4) == 0 {
					time.Sleep(time.Duration(rng.IntN(300)) * time.Microsecond)
				}
			}
			cc.(interface{ CloseWrite() error }).CloseWrite()
		}()
		got, err := io.ReadAll(server)
		if err != nil {
			t.Fatal(err)
		}
		in, _ := io.ReadAll(cc)
		want := <-sent
		select {
		case res := <-done:
			if res.err != nil || res.out != int64(len(want)) || res.in != 6 || string(in) != "banner" {
				t.Fatalf("round %d: Relay %+v, the client read %q", round, res, in)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: the relay did not end", round)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("round %d: the destination got %d bytes, want the client's %d in order", round, len(got), len(want))
		}
		time.Sleep(10 * time.Millisecond)
		if n := calls.Load(); n != 1 {
			t.Fatalf("done called %d times", n)
		}
	}
}

// A flow whose directions are both parked ends when the client resets it
// or when the stack is closed under it (which aborts gVisor's endpoint
// directly, not through the conn): with an error, and the destination is
// reset too.
func TestRelayParkedEndsOnResetAndStackClose(t *testing.T) {
	for _, how := range []string{"client reset", "stack closed"} {
		t.Run(how, func(t *testing.T) {
			r := newRelayRig(t)
			var abort func()
			var conn *netstack.Conn
			if how == "client reset" {
				var ep tcpip.Endpoint
				ep, conn = r.dialEndpoint(t, 81)
				abort = ep.Abort
			} else {
				_, conn = r.dial(t, 80)
				abort = func() { r.srv.Close() }
			}
			upSide, server := loopbackPair(t)
			done := make(chan error, 1)
			startRelay(&peekedConn{Conn: conn}, upSide, func(_, _ int64, err error) { done <- err })
			time.Sleep(50 * time.Millisecond) // both directions parked
			abort()
			select {
			case err := <-done:
				if err == nil {
					t.Error("the relay ended without an error")
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the relay did not end")
			}
			server.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadAll(server); err == nil {
				t.Error("the destination saw a clean close, want a reset")
			}
		})
	}
}

// A client that half-closes and then resets, or vanishes, while the
// destination stays silent: the relay must not wait for the destination
// for ever. It ends with an error, and closes the destination's socket
// (not a reset, which would throw away what it still held of the upload):
// the destination's next bytes draw a RST.
func TestRelayClientResetAfterFIN(t *testing.T) {
	r := newRelayRig(t)
	ep, conn := r.dialEndpoint(t, 82)
	upSide, server := loopbackPair(t)
	done := make(chan error, 1)
	startRelay(&peekedConn{Conn: conn}, upSide, func(_, _ int64, err error) { done <- err })

	var req bytes.Reader
	req.Reset([]byte("request"))
	if _, terr := ep.Write(&req, tcpip.WriteOptions{}); terr != nil {
		t.Fatal(terr)
	}
	ep.Shutdown(tcpip.ShutdownWrite) // the client's FIN
	server.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, err := io.ReadAll(server); err != nil || string(got) != "request" {
		t.Fatalf("the destination read %q, %v; want the request and the FIN", got, err)
	}
	time.Sleep(50 * time.Millisecond) // the client's direction has ended
	ep.Abort()                        // a RST: the client is gone; the destination never answers
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "broke after its FIN") {
			t.Errorf("the relay ended with %v, want the client's connection broken after its FIN", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the relay still waits for a silent destination after the client reset")
	}
	// After the FIN, a read shows EOF whatever follows; the first write
	// to the closed socket draws its RST, which a later write shows.
	var werr error
	for end := time.Now().Add(5 * time.Second); werr == nil && time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		_, werr = server.Write([]byte("late"))
	}
	if !errors.Is(werr, syscall.ECONNRESET) && !errors.Is(werr, syscall.EPIPE) {
		t.Errorf("the destination's writes after the relay ended: %v; want the RST of a closed socket", werr)
	}
}

// When the destination resets after the client's FIN, the relay's own
// abort of the client is not taken for the client breaking: the record
// names the destination's reset only.
func TestRelayDestinationResetAfterClientFIN(t *testing.T) {
	r := newRelayRig(t)
	cc, conn := r.dial(t, 83)
	upSide, server := loopbackPair(t)
	done := make(chan error, 1)
	startRelay(&peekedConn{Conn: conn}, upSide, func(_, _ int64, err error) { done <- err })
	cc.Write([]byte("request"))
	cc.(interface{ CloseWrite() error }).CloseWrite()
	server.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, err := io.ReadAll(server); err != nil || string(got) != "request" {
		t.Fatalf("the destination read %q, %v", got, err)
	}
	time.Sleep(50 * time.Millisecond) // the client's direction has ended
	server.SetLinger(0)
	server.Close() // a RST from the destination
	select {
	case err := <-done:
		if err == nil || strings.Contains(err.Error(), "after its FIN") {
			t.Errorf("the relay ended with %v, want the destination's reset alone", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the relay did not end after the destination's reset")
	}
}

// resetAfterEOF is a client conn whose RST lands right after TryRead has
// returned its FIN, before the relay arranges to watch it.
type resetAfterEOF struct {
	*netstack.Conn
	clientEP tcpip.Endpoint
}

func (c *resetAfterEOF) TryRead(b []byte) (int, error) {
	n, err := c.Conn.TryRead(b)
	if err == io.EOF {
		c.clientEP.Abort()
		time.Sleep(100 * time.Millisecond) // the RST and its notifications land first
	}
	return n, err
}

// A client that breaks between its FIN being read and the watch being
// arranged is noticed all the same.
func TestRelayClientResetBeforeWatch(t *testing.T) {
	r := newRelayRig(t)
	ep, conn := r.dialEndpoint(t, 84)
	upSide, _ := loopbackPair(t)
	done := make(chan error, 1)
	startRelay(&peekedConn{Conn: &resetAfterEOF{Conn: conn, clientEP: ep}}, upSide, func(_, _ int64, err error) { done <- err })
	var req bytes.Reader
	req.Reset([]byte("request"))
	if _, terr := ep.Write(&req, tcpip.WriteOptions{}); terr != nil {
		t.Fatal(terr)
	}
	ep.Shutdown(tcpip.ShutdownWrite)
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "broke after its FIN") {
			t.Errorf("the relay ended with %v, want the client's connection broken after its FIN", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the relay waits for a silent destination: the client broke before the watch began")
	}
}

// Once the relay has ended, a client endpoint that lingers (TIME-WAIT)
// keeps neither the relay nor what its done function holds reachable.
func TestRelayEndedLeavesNothingReachable(t *testing.T) {
	r := newRelayRig(t)
	cc, conn := r.dial(t, 85)
	upSide, server := loopbackPair(t)
	var freed atomic.Bool
	done := make(chan struct{}, 1)
	func() {
		session := new([1 << 20]byte) // stands for the session and its record
		runtime.AddCleanup(session, func(f *atomic.Bool) { f.Store(true) }, &freed)
		startRelay(&peekedConn{Conn: conn}, upSide, func(int64, int64, error) { _ = session[0]; done <- struct{}{} })
	}()
	server.Write([]byte("response"))
	server.CloseWrite() // the destination closes first: the appliance's end of the client goes to TIME-WAIT
	cc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, _ := io.ReadAll(cc); string(got) != "response" {
		t.Fatalf("the client read %q", got)
	}
	cc.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the relay did not end")
	}
	for range 5 {
		runtime.GC()
		time.Sleep(20 * time.Millisecond)
	}
	if !freed.Load() {
		t.Error("the relay has ended, yet what its done function holds is still reachable")
	}
}

// Each direction reads its source the cheapest way it offers, once the
// bytes a wrapper read ahead are gone: a netstack.Conn without waiting, a
// socket through its raw conn, anything else with plain Reads. (The
// relay tests would pass on plain Reads alone; this one would not.)
func TestRelayChoosesHowToRead(t *testing.T) {
	r := newRelayRig(t)
	_, conn := r.dial(t, 86)
	sock, _ := loopbackPair(t)
	how := func(src net.Conn) string {
		h := &halfRelay{src: src}
		h.choose()
		switch {
		case h.tr != nil:
			return "try"
		case h.rc != nil:
			return "raw"
		case h.plain:
			return "plain"
		}
		return "wrapper"
	}
	if got := how(conn); got != "try" {
		t.Errorf("a netstack.Conn is read %s, want try", got)
	}
	if got := how(sock); got != "raw" {
		t.Errorf("a TCP socket is read %s, want raw", got)
	}
	if got := how(plainConn{sock}); got != "plain" {
		t.Errorf("a conn without a raw socket is read %s, want plain", got)
	}
	pc := &prefixConn{Conn: sock, prefix: []byte("banner")}
	if got := how(pc); got != "wrapper" {
		t.Errorf("a wrapper with bytes of its own is read %s, want through the wrapper", got)
	}
	pc.Read(make([]byte, 16))
	if got := how(pc); got != "raw" {
		t.Errorf("a drained wrapper over a socket is read %s, want raw", got)
	}
}

// A relayed flow that has been quiet for hostconn's IdleAfter holds no
// goroutine (its stack was a third of an idle flow's memory), and wakes
// for the destination's next bytes, its FIN and its reset.
func TestRelayQuietFlowsHoldNoGoroutines(t *testing.T) {
	t.Cleanup(hostconn.SetIdleAfter(100 * time.Millisecond))
	r := newRelayRig(t)
	const flows = 20
	type flow struct {
		client net.Conn
		server *net.TCPConn
		done   chan relayResult
	}
	warm, _ := r.dial(t, 2999) // the appliance's stack, made at the first packet, has its goroutines
	warm.Close()
	before := runtime.NumGoroutine()
	var fs []flow
	for i := range flows {
		cc, conn := r.dial(t, uint16(3000+i))
		upSide, server := loopbackPair(t)
		f := flow{client: cc, server: server, done: make(chan relayResult, 1)}
		startRelay(conn, hostconn.Wrap(upSide), func(out, in int64, err error) { f.done <- relayResult{out, in, err} })
		exchange(t, cc, server, "hello")
		fs = append(fs, f)
	}
	quiet := false
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		// The watch's goroutine and the sweep's are one each for all.
		if runtime.NumGoroutine() <= before+2 {
			quiet = true
			break
		}
	}
	if !quiet {
		t.Fatalf("%d quiet relayed flows hold %d goroutines more than none did, want at most 2", flows, runtime.NumGoroutine()-before)
	}
	for _, f := range fs {
		exchange(t, f.client, f.server, "again")
	}
	for i, f := range fs {
		time.Sleep(150 * time.Millisecond * time.Duration(i%2)) // some parked again
		if i%2 == 0 {
			f.server.CloseWrite() // the destination's FIN reaches the client
			f.client.SetReadDeadline(time.Now().Add(5 * time.Second))
			if b, err := io.ReadAll(f.client); err != nil || len(b) != 0 {
				t.Fatalf("flow %d: the client read %q, %v after the destination's FIN, want the end", i, b, err)
			}
			f.client.Close()
		} else {
			f.server.SetLinger(0)
			f.server.Close() // the destination's reset ends the flow
		}
		select {
		case res := <-f.done:
			if (i%2 == 0) != (res.err == nil) {
				t.Errorf("flow %d ended with %v", i, res.err)
			}
			if res.out != 10 || res.in != 10 {
				t.Errorf("flow %d relayed %d bytes out, %d in, want 10 each", i, res.out, res.in)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("flow %d: the relay did not end", i)
		}
	}
}

// exchange sends msg from the client to the destination and back.
func exchange(t *testing.T, client, server net.Conn, msg string) {
	t.Helper()
	b := make([]byte, len(msg))
	for _, p := range [][2]net.Conn{{client, server}, {server, client}} {
		if _, err := p[0].Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		p[1].SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(p[1], b); err != nil || string(b) != msg {
			t.Fatalf("read %q, %v, want %q", b, err, msg)
		}
	}
}
