package appliance

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/netstack/gwlbsim"
	"github.com/gwlbproxy/gwlbproxy/proxy/destcheck/destchecktest"
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
	// dns is the appliance's resolver (--dns-resolver): the destination
	// check looks names up there. Tests say what names resolve to with
	// r.dns.Set; unknown names are NXDOMAIN.
	dns *destchecktest.Server
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
	dns, err := destchecktest.Start(tn.server(254))
	if err != nil {
		t.Fatalf("starting the appliance's resolver: %v", err)
	}
	t.Cleanup(dns.Close)
	o.DNSResolver = dns.Addr().String()
	o.GWLBCIDRs = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")} // the simulator, on loopback
	o.sysfs = t.TempDir()                                              // not EC2: a rig asks the real instance metadata nothing
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
	r := &rig{t: t, net: tn, app: a, sim: sim, logPath: o.AccessLog, dns: dns, cancel: cancel, done: make(chan error, 1)}
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

// recordsWait is how long records waits for the access log to hold what a
// test wants.
const recordsWait = 5 * time.Second

// records returns the access log's records once want(records) holds. If it
// does not within recordsWait the test fails, naming the condition (the
// caller's source line) and the records there were: a test never goes on
// with fewer records than it waited for.
func (r *rig) records(want func([]records.Record) bool) []records.Record {
	r.t.Helper()
	deadline := time.Now().Add(recordsWait)
	for {
		recs := r.readRecords()
		if want(recs) {
			return recs
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("waited %s for access records: %s\ngot %s", recordsWait, callerLine(2), summarizeRecords(recs))
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// readRecords returns what the access log holds now, without waiting.
func (r *rig) readRecords() []records.Record {
	r.t.Helper()
	var recs []records.Record
	f, err := os.Open(r.logPath)
	if err != nil {
		return nil // not created yet
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var rec records.Record
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			r.t.Fatalf("access log line %q: %v", sc.Text(), err)
		}
		recs = append(recs, rec)
	}
	return recs
}

// callerLine names a helper's call site for a failure message: file:line
// and, when the source is at hand, the call itself, up to the parenthesis
// that closes it (for records, the condition waited for).
func callerLine(skip int) string {
	_, file, line, ok := runtime.Caller(skip)
	if !ok {
		return "(unknown caller)"
	}
	at := fmt.Sprintf("%s:%d", filepath.Base(file), line)
	src, err := os.ReadFile(file)
	if err != nil {
		return at
	}
	lines := strings.Split(string(src), "\n")
	if line < 1 || line > len(lines) {
		return at
	}
	var call []string
	depth := 0
	for i := line - 1; i < len(lines) && i < line+15; i++ {
		call = append(call, strings.TrimSpace(lines[i]))
		depth += strings.Count(lines[i], "(") - strings.Count(lines[i], ")")
		if depth <= 0 {
			break
		}
	}
	return at + ": " + strings.Join(call, " ")
}

// summarizeRecords lists records one a line, by the fields tests match on,
// the first 30 of them.
func summarizeRecords(recs []records.Record) string {
	if len(recs) == 0 {
		return "no records"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d records:", len(recs))
	for i, rec := range recs {
		if i == 30 {
			fmt.Fprintf(&b, "\n  ... and %d more", len(recs)-i)
			break
		}
		fmt.Fprintf(&b, "\n  %s %s %s:%d action=%s rule=%q result=%s", rec.Kind, rec.ClientIP, rec.DestIP, rec.DestPort, rec.Action, rec.Rule, rec.Result)
		for _, f := range []struct{ name, v string }{{"sni", rec.SNI}, {"host", rec.Host}, {"path", rec.Path}, {"query", rec.QueryName}, {"error", rec.Error}} {
			if f.v != "" {
				fmt.Fprintf(&b, " %s=%q", f.name, f.v)
			}
		}
		if rec.Status != 0 {
			fmt.Fprintf(&b, " status=%d", rec.Status)
		}
	}
	return b.String()
}

// waitFor polls check every 10 ms until it returns "" and fails the test
// if it has not within 5 s, naming what it waited for and check's last
// answer (what there was instead).
func waitFor(t testing.TB, what string, check func() string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := check()
		if got == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited 5s for %s; got %s", what, got)
		}
		time.Sleep(10 * time.Millisecond)
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
	ln := testnet.Serve(t, addr.String(), serve)
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
