package proxy

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/netstack/gwlbsim"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// shareRig is a proxy behind a packet stack whose flow table gives each
// client share flows and forgets a reset flow after transitory, the
// proxy configured by cfg (its records to sink).
type shareRig struct {
	p      *Proxy
	sink   *recordSink
	client *gwlbsim.ClientStack
}

func newShareRig(t *testing.T, share int, transitory time.Duration, cfg Config) *shareRig {
	t.Helper()
	return newShareRigTCP(t, share, transitory, cfg, netstack.TCPOptions{KeepaliveIdle: 300 * time.Millisecond, KeepaliveInterval: 200 * time.Millisecond, KeepaliveCount: 2})
}

// newShareRigTCP is newShareRig with the stack's TCP options (its
// keepalives) given: newShareRig's give a client that vanished up within
// a second, and so, on a loaded machine, one that answered a probe late.
func newShareRigTCP(t *testing.T, share int, transitory time.Duration, cfg Config, tcpOpts netstack.TCPOptions) *shareRig {
	t.Helper()
	sink := new(recordSink)
	cfg.Records, cfg.AllowLoopback = records.NewWriter(nil, sink), true
	p := New(cfg)
	t.Cleanup(p.Close)
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	port := pc.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	pc.Close()
	srv, err := netstack.Listen(netstack.Config{ListenAddr: "127.0.0.1:0", Readers: 1, ReplyPort: port,
		ReturnPath: netstack.ReturnPathBound, Handler: p, AllowLoopback: true,
		MaxFlows: 1000, MaxFlowsPerClient: share, TransitoryTimeout: transitory, TCP: tcpOpts})
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
	ep := sim.Endpoint(0x0123456789abcdef, 0x1111222233334444)
	client, err := ep.NewClientStack(netip.MustParseAddr("198.18.0.5"))
	if err != nil {
		t.Fatal(err)
	}
	return &shareRig{p: p, sink: sink, client: client}
}

// dialWithinShare connects a bare endpoint of r's client to dst, trying
// again while the client's flow share is full (its SYN unanswered), for
// at most within.
func (r *shareRig) dialWithinShare(t *testing.T, dst netip.AddrPort, within time.Duration) *rawClient {
	t.Helper()
	for end := time.Now().Add(within); time.Now().Before(end); {
		if c := dialOnce(r.client, dst, 300*time.Millisecond); c != nil {
			t.Cleanup(func() { c.Close() })
			c.SetDeadline(time.Now().Add(10 * time.Second))
			return c
		}
	}
	t.Fatalf("no connection to %v through the appliance within %v", dst, within)
	return nil
}

// dialOnce connects a bare endpoint of cs to dst; nil when the SYN goes
// unanswered within d.
func dialOnce(cs *gwlbsim.ClientStack, dst netip.AddrPort, d time.Duration) *rawClient {
	var wq waiter.Queue
	ep, terr := cs.Stack.NewEndpoint(tcp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
	if terr != nil {
		return nil
	}
	ent, ch := waiter.NewChannelEntry(waiter.WritableEvents | waiter.EventHUp | waiter.EventErr)
	wq.EventRegister(&ent)
	defer wq.EventUnregister(&ent)
	a := dst.Addr().As4()
	if terr = ep.Connect(tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(a), Port: dst.Port()}); terr != nil {
		if _, ok := terr.(*tcpip.ErrConnectStarted); !ok {
			ep.Close()
			return nil
		}
		select {
		case <-ch:
		case <-time.After(d):
			ep.Abort()
			return nil
		}
	}
	if ep.LastError() != nil {
		ep.Close()
		return nil
	}
	return &rawClient{Conn: gonet.NewTCPConn(&wq, ep), ep: ep}
}

// heldDest listens on loopback with a small receive buffer; it accepts
// every connection and reads nothing from it until drain is called, which
// reads each to its end and reports how many bytes each got, by the
// order they came.
func heldDest(t *testing.T) (dst netip.AddrPort, drain func() []destEnd) {
	t.Helper()
	ln := smallBufferListener(t)
	var (
		mu   sync.Mutex
		held []net.Conn
	)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	})
	drain = func() []destEnd {
		mu.Lock()
		cs := append([]net.Conn(nil), held...)
		mu.Unlock()
		ends := make([]destEnd, len(cs))
		var wg sync.WaitGroup
		for i, c := range cs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
				n, err := io.Copy(io.Discard, c)
				ends[i] = destEnd{n, err}
			}()
		}
		wg.Wait()
		return ends
	}
	return ln.Addr().(*net.TCPAddr).AddrPort(), drain
}

// hostSocketsTo counts this process's IPv4 TCP sockets whose remote port
// is port and that are neither in TIME_WAIT nor closed: the appliance's
// host sockets to a loopback destination.
func hostSocketsTo(t *testing.T, port uint16) int {
	t.Helper()
	return countHostSockets(t, port, false)
}

// countHostSockets counts the IPv4 TCP sockets whose remote port is port,
// neither in TIME_WAIT nor closed, and with fdOnly only those an fd holds
// (an inode).
func countHostSockets(t *testing.T, port uint16, fdOnly bool) int {
	t.Helper()
	want := fmt.Sprintf(":%04X", port)
	n := 0
	procTCPRows(t, func(fs []string) {
		if len(fs) > 9 && strings.HasSuffix(fs[2], want) && fs[3] != "06" && fs[3] != "07" && (!fdOnly || fs[9] != "0") {
			n++
		}
	})
	return n
}

// procTCPRows calls row with the fields of each socket of /proc/net/tcp
// (local and remote address, state, queues, ...), the heading left out.
func procTCPRows(t *testing.T, row func(fs []string)) {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Skipf("no /proc/net/tcp: %v", err)
	}
	for _, l := range strings.Split(string(b), "\n")[1:] {
		row(strings.Fields(l))
	}
}

// TestRelayLingersHeldToClientShare: one client uploads to a destination
// of its own that reads nothing, sends its FIN, waits for its
// acknowledgement and resets, again and again. Each such flow's
// destination lingers for the write-stall timeout (a minute here), while
// the client's flow-table entry is forgotten soon after its reset,
// giving its flow share back: the lingers held host sockets, fds and
// goroutines outside every share, 11 times the flow share in 25 s in the
// review. The client may hold only its share of lingering connections:
// one more is cut short at once, the destination reset and the record
// saying the tail was not delivered, for that share; the ones within it
// still deliver the whole upload once the destination reads.
func TestRelayLingersHeldToClientShare(t *testing.T) {
	const (
		share     = 4
		lingerCap = 3
		flows     = 20
		size      = 64 << 10
	)
	r := newShareRig(t, share, 300*time.Millisecond, Config{MaxLingeringPerClient: lingerCap})
	r.p.SetWriteStallTimeout(time.Minute)
	dst, drain := heldDest(t)
	g0 := runtime.NumGoroutine()
	for range flows {
		c := r.dialWithinShare(t, dst, 10*time.Second)
		uploadWholeThenReset(t, c, size)
	}
	// The flows past the share are recorded as they are cut; wait for them.
	var recs []records.Record
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if recs = r.sink.parse(t); len(recs) >= flows-lingerCap {
			break
		}
	}
	lingering, g1 := hostSocketsTo(t, dst.Port()), runtime.NumGoroutine()
	t.Logf("%d flows made (flow share %d, share of lingering connections %d): %d host sockets to the destination open, %d records, goroutines %d -> %d",
		flows, share, lingerCap, lingering, len(recs), g0, g1)
	if lingering > lingerCap {
		t.Errorf("one client holds %d lingering host sockets to its destination; its share is %d", lingering, lingerCap)
	}
	// A linger's goroutine, and the relay's readers of the destination
	// it keeps: a few each, not one per flow made.
	if g1 > g0+4*lingerCap+6 {
		t.Errorf("goroutines %d -> %d with at most %d connections lingering", g0, g1, lingerCap)
	}
	if len(recs) != flows-lingerCap {
		t.Fatalf("%d records of flows cut short, want %d", len(recs), flows-lingerCap)
	}
	t.Logf("a record of a flow cut short: result %s, bytes_out %d, error %q", recs[0].Result, recs[0].BytesOut, recs[0].Error)
	for _, rec := range recs {
		if !strings.Contains(rec.Error, "the upload's tail was not delivered") || !strings.Contains(rec.Error, "share of lingering connections") {
			t.Errorf("record of a flow past the share of lingering connections: result %s, error %q", rec.Result, rec.Error)
		}
		if rec.BytesOut >= size {
			t.Errorf("record bytes_out %d of a %d-byte upload whose tail the destination never had", rec.BytesOut, size)
		}
	}
	// The lingers within the share deliver the whole upload.
	ends := drain()
	whole := 0
	for _, e := range ends {
		if e.n == size && e.err == nil {
			whole++
		}
	}
	if whole != lingerCap {
		t.Errorf("%d destination connections got the whole upload and the FIN, want the %d within the share: %+v", whole, lingerCap, ends)
	}
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if recs = r.sink.parse(t); len(recs) >= flows {
			break
		}
	}
	delivered := 0
	for _, rec := range recs {
		if !strings.Contains(rec.Error, "tail was not delivered") && rec.BytesOut == size {
			delivered++
		}
	}
	if len(recs) != flows || delivered != lingerCap {
		t.Errorf("%d records, %d of them of a whole upload delivered; want %d and %d", len(recs), delivered, flows, lingerCap)
	}
}
