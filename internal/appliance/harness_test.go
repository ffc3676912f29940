package appliance

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/netstack/gwlbsim"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// Every test gets its own 127.P.N.0/24: the appliance on .1, the simulator
// on .2, servers from .3 up. All of it is loopback. P varies with the
// process, so that two test binaries running at once (go test ./... beside
// a benchmark) do not bind the same addresses.
var (
	nextNet  atomic.Uint32
	netOctet = byte(1 + os.Getpid()%250)
)

func init() {
	nextNet.Store(10)
	// The appliance logs to slog; keep test and benchmark output readable
	// unless GWLBPROXY_TEST_LOG asks for the logs.
	switch os.Getenv("GWLBPROXY_TEST_LOG") {
	case "":
		slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	case "debug":
		slog.SetLogLoggerLevel(slog.LevelDebug)
	}
}

type testNet struct {
	n         uint32
	appliance netip.Addr
	sim       netip.Addr
}

func newTestNet() testNet {
	n := nextNet.Add(1)
	return testNet{
		n:         n,
		appliance: netip.AddrFrom4([4]byte{127, netOctet, byte(n), 1}),
		sim:       netip.AddrFrom4([4]byte{127, netOctet, byte(n), 2}),
	}
}

// server returns the i-th server address of the test net (i ≥ 3).
func (tn testNet) server(i byte) netip.Addr {
	return netip.AddrFrom4([4]byte{127, netOctet, byte(tn.n), i})
}

// rig is an appliance, a simulator in front of it and a client stack.
type rig struct {
	t       testing.TB
	net     testNet
	app     *Appliance
	sim     *gwlbsim.Sim
	ep      *gwlbsim.Endpoint
	client  *gwlbsim.ClientStack
	logPath string
	cancel  context.CancelFunc
	done    chan error
}

// rigDrain is the rig's drain: flows get it less the flush reserve.
const rigDrain = 4 * time.Second

// Inner client addresses: they exist only inside GENEVE and the stacks.
var (
	clientV4 = netip.MustParseAddr("198.18.0.5")
	clientV6 = netip.MustParseAddr("2001:db8::5")
)

func newRig(t testing.TB, mutate func(*Options), simCfg func(*gwlbsim.Config)) *rig {
	t.Helper()
	tn := newTestNet()
	o := DefaultOptions()
	o.GeneveAddr = netip.AddrPortFrom(tn.appliance, netstack.GenevePort).String()
	o.AdminAddr = netip.AddrPortFrom(tn.appliance, 0).String()
	o.AccessLog = filepath.Join(t.TempDir(), "access.log")
	o.AllowLoopback = true
	o.StateDir = t.TempDir()
	o.Readers = 2
	o.DialTimeout = 3 * time.Second
	o.ReturnPath = netstack.ReturnPathBound
	if mutate != nil {
		mutate(&o)
	}
	a, err := New(o)
	if err != nil {
		t.Fatalf("starting the appliance: %v", err)
	}
	sc := gwlbsim.Config{Addr: tn.sim, Appliance: a.netstack.Addr(), Senders: 8}
	if simCfg != nil {
		simCfg(&sc)
	}
	sim, err := gwlbsim.New(sc)
	if err != nil {
		t.Fatalf("starting the simulator: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &rig{t: t, net: tn, app: a, sim: sim, logPath: o.AccessLog, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- a.Run(ctx, func() time.Duration { return rigDrain }) }()
	r.ep = sim.Endpoint(0x0123456789abcdef, 0x1111222233334444)
	r.client, err = r.ep.NewClientStack(clientV4, clientV6)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.stop)
	return r
}

func (r *rig) stop() {
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		r.t.Error("appliance did not stop within 10s")
	}
	r.sim.Close()
}

// records reads the access log, waiting until want(records) holds or 5 s pass.
func (r *rig) records(want func([]records.Record) bool) []records.Record {
	r.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var recs []records.Record
		f, err := os.Open(r.logPath)
		if err == nil {
			sc := bufio.NewScanner(f)
			sc.Buffer(nil, 1<<20)
			for sc.Scan() {
				var rec records.Record
				if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
					r.t.Fatalf("access log line %q: %v", sc.Text(), err)
				}
				recs = append(recs, rec)
			}
			f.Close()
		}
		if want(recs) || time.Now().After(deadline) {
			return recs
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (r *rig) stats() stats {
	r.t.Helper()
	resp, err := http.Get("http://" + r.app.adminLn.Addr().String() + "/stats")
	if err != nil {
		r.t.Fatalf("GET /stats: %v", err)
	}
	defer resp.Body.Close()
	var s stats
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		r.t.Fatalf("decoding /stats: %v", err)
	}
	return s
}

// listenTCP starts a TCP server on addr that runs serve for each connection;
// it stops when the test ends.
func listenTCP(t testing.TB, addr netip.AddrPort, serve func(net.Conn)) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", addr.String())
	if err != nil {
		t.Fatalf("listening on %s: %v", addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				serve(c)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// serveUDP answers each datagram to addr with reply(datagram), or nothing
// when reply returns nil; it stops when the test ends.
func serveUDP(t testing.TB, addr netip.AddrPort, reply func([]byte) []byte) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp", addr.String())
	if err != nil {
		t.Fatalf("listening on udp %s: %v", addr, err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if out := reply(buf[:n]); out != nil {
				pc.WriteTo(out, from)
			}
		}
	}()
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// must returns v, failing the test if err is set: must(f())(t).
func must[T any](v T, err error) func(testing.TB) T {
	return func(t testing.TB) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func findRecord(recs []records.Record, kind string, dest netip.AddrPort) *records.Record {
	for i := range recs {
		if recs[i].Kind == kind && recs[i].DestIP == dest.Addr().String() && recs[i].DestPort == dest.Port() {
			return &recs[i]
		}
	}
	return nil
}
