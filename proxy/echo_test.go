package proxy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// recordSink collects the records a Proxy writes.
type recordSink struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *recordSink) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(b)
}

// records waits until at least n records have been written (the writer may
// deliver them on a goroutine of its own), then a little longer for any
// records beyond n to show, and returns them all.
func (s *recordSink) records(t *testing.T, n int) []records.Record {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(s.parse(t)) < n && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	return s.parse(t)
}

func (s *recordSink) parse(t *testing.T) []records.Record {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []records.Record
	for _, l := range strings.Split(strings.TrimSpace(s.buf.String()), "\n") {
		if l == "" {
			continue
		}
		var r records.Record
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("record %q: %v", l, err)
		}
		out = append(out, r)
	}
	return out
}

func mustPolicy(t *testing.T, doc string) *policy.Policy {
	t.Helper()
	p, err := policy.Parse("test.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// echoProxy returns a Proxy with the policy doc and the sink its records go
// to. Only denied echo is sent to it: an allowed one would need an
// unprivileged ICMP socket and a netstack to answer through (the appliance's
// tests cover that).
func echoProxy(t *testing.T, doc string, mutate func(*Config)) (*Proxy, *policy.Holder, *recordSink) {
	t.Helper()
	sink := new(recordSink)
	h := new(policy.Holder)
	h.Store(mustPolicy(t, doc))
	cfg := Config{Records: records.NewWriter(nil, sink), Policy: h, AllowLoopback: true}
	if mutate != nil {
		mutate(&cfg)
	}
	return New(cfg), h, sink
}

func echoReq(dst string, id, seq uint16) netstack.EchoRequest {
	return netstack.EchoRequest{
		Flow: netstack.FlowInfo{
			Endpoint: 0x0123456789abcdef, Attachment: 0x1111222233334444, FlowCookie: 0xabcd,
			Client: netip.MustParseAddrPort("127.0.0.9:0"), Dest: netip.AddrPortFrom(netip.MustParseAddr(dst), 0),
		},
		ID: id, Seq: seq, Data: []byte("ping!"),
	}
}

const noPing = `
policy:
  default: allow
  rules:
    - name: no-ping
      protocols: [icmp]
      dest_cidrs: [127.0.0.2, "::1"]
      action: deny
`

// TestEchoDeniedOncePerFlow: echo to a destination the policy denies is
// dropped, with one deny record per flow however many requests it sends,
// even at once.
func TestEchoDeniedOncePerFlow(t *testing.T) {
	p, _, sink := echoProxy(t, noPing, nil)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := range 200 {
				p.HandleEcho(echoReq("127.0.0.2", 7, uint16(g*200+seq)))
			}
		}()
	}
	wg.Wait()
	recs := sink.records(t, 1)
	if len(recs) != 1 {
		t.Fatalf("%d records for one denied flow of 1,600 requests, want 1: %+v", len(recs), recs)
	}
	r := recs[0]
	if r.Kind != "icmp" || r.Action != "deny" || r.Rule != "no-ping" || r.Result != "denied" || r.Error != "denied by policy" ||
		r.DestIP != "127.0.0.2" || r.ClientIP != "127.0.0.9" || r.Endpoint != "vpce-00123456789abcdef" || r.Packets != 0 {
		t.Fatalf("record %+v", r)
	}

	// Another echo ID (another ping) is another flow; so is ICMPv6.
	p.HandleEcho(echoReq("127.0.0.2", 8, 1))
	p.HandleEcho(echoReq("127.0.0.2", 8, 2))
	p.HandleEcho(echoReq("::1", 7, 1))
	p.HandleEcho(echoReq("::1", 7, 2))
	if recs = sink.records(t, 3); len(recs) != 3 || recs[1].Rule != "no-ping" || recs[2].DestIP != "::1" || recs[2].Rule != "no-ping" {
		t.Fatalf("records %+v, want 3", recs)
	}
	if st := p.Stats(); st.Denied != 3 || st.EchoActive != 0 {
		t.Fatalf("stats %+v, want 3 denied and no echo relayed", st)
	}
	p.echo.mu.Lock()
	defer p.echo.mu.Unlock()
	if len(p.echo.flows) != 3 || p.echo.denied != 3 {
		t.Fatalf("%d flows, %d denied remembered; want 3, 3", len(p.echo.flows), p.echo.denied)
	}
}

// TestEchoDeniedNoAlloc: dropping a request of a known denied flow, the
// packet path's steady state under a ping -f, does not allocate.
func TestEchoDeniedNoAlloc(t *testing.T) {
	p, _, _ := echoProxy(t, noPing, nil)
	req := echoReq("127.0.0.2", 7, 1)
	p.HandleEcho(req)
	if n := testing.AllocsPerRun(1000, func() { p.HandleEcho(req) }); n != 0 {
		t.Fatalf("%v allocations per denied request", n)
	}
}

// TestEchoForbiddenOncePerFlow: forbidden destinations are denied once per
// flow too, and no reload lets them through.
func TestEchoForbiddenOncePerFlow(t *testing.T) {
	p, h, sink := echoProxy(t, "policy: {default: allow}\n", func(c *Config) { c.AllowLoopback = false })
	for seq := range 100 {
		p.HandleEcho(echoReq("127.0.0.1", 1, uint16(seq)))
	}
	h.Store(mustPolicy(t, "policy: {default: allow}\n"))
	p.HandleEcho(echoReq("127.0.0.1", 1, 100))
	recs := sink.records(t, 1)
	if len(recs) != 1 || recs[0].Action != "deny" || recs[0].Error != "destination is a loopback address" {
		t.Fatalf("records %+v, want one deny for a loopback destination", recs)
	}
}

// TestEchoDeniedReloadAndIdle: a denied flow is decided again after a
// reload, and forgotten once idle, but not while it keeps sending.
func TestEchoDeniedReloadAndIdle(t *testing.T) {
	// "Keeps sending" holds only if this test's sends came closer together
	// than the idle timeout; on a loaded machine a sleep can last longer,
	// so a run whose sends did not is tried again rather than judged.
	for try := 1; ; try++ {
		if echoDeniedReloadAndIdle(t) {
			return
		}
		if try == 3 {
			t.Fatal("the machine stalled this test's sends past the idle timeout in 3 tries: nothing was checked")
		}
	}
}

// echoDeniedReloadAndIdle is TestEchoDeniedReloadAndIdle's one try: false
// when a gap between its sends came near the idle timeout.
func echoDeniedReloadAndIdle(t *testing.T) bool {
	const idle = 300 * time.Millisecond
	p, h, sink := echoProxy(t, noPing, func(c *Config) { c.EchoIdleTimeout = idle })
	p.HandleEcho(echoReq("127.0.0.2", 7, 1))
	h.Store(mustPolicy(t, "policy:\n  default: deny\n  rules:\n    - {name: web, protocols: [tls], action: splice}\n"))
	p.HandleEcho(echoReq("127.0.0.2", 7, 2))
	p.HandleEcho(echoReq("127.0.0.2", 7, 3))
	recs := sink.records(t, 2)
	if len(recs) != 2 || recs[0].Rule != "no-ping" || recs[1].Rule != "default" || recs[1].Action != "deny" {
		t.Fatalf("records %+v, want a deny by no-ping, then one by the reloaded default", recs)
	}

	// Busy for three idle timeouts: still remembered, no new record.
	var maxGap time.Duration
	last := time.Now()
	for end := last.Add(3 * idle); time.Now().Before(end); time.Sleep(idle / 10) {
		p.HandleEcho(echoReq("127.0.0.2", 7, 4))
		now := time.Now()
		maxGap, last = max(maxGap, now.Sub(last)), now
	}
	if maxGap > idle/2 {
		t.Logf("a gap of %v between sends, against an idle timeout of %v: trying again", maxGap, idle)
		return false
	}
	if recs = sink.records(t, 2); len(recs) != 2 {
		t.Fatalf("a busy denied flow was forgotten (sends at most %v apart): %d records", maxGap, len(recs))
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		p.echo.mu.Lock()
		n, d := len(p.echo.flows), p.echo.denied
		p.echo.mu.Unlock()
		if n == 0 && d == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("an idle denied flow is still remembered: %d flows, %d denied", n, d)
		}
		time.Sleep(idle / 5)
	}
	p.HandleEcho(echoReq("127.0.0.2", 7, 5))
	if recs = sink.records(t, 3); len(recs) != 3 || recs[2].Rule != "default" {
		t.Fatalf("records %+v: want a new deny once the flow was forgotten", recs)
	}
	return true
}

// TestEchoDeniedTableFull: beyond the denied flows it can remember, the
// relay drops the requests of further denied flows without a record, counts
// them, and records again once a remembered flow is forgotten.
func TestEchoDeniedTableFull(t *testing.T) {
	p, _, sink := echoProxy(t, noPing, nil)
	p.echo.maxDenied = 2
	p.HandleEcho(echoReq("127.0.0.2", 1, 1))
	p.HandleEcho(echoReq("127.0.0.2", 2, 1))
	for seq := range 3 {
		p.HandleEcho(echoReq("127.0.0.2", 3, uint16(seq))) // no room for flow 3
	}
	p.HandleEcho(echoReq("127.0.0.2", 1, 2)) // a remembered flow: dropped as before
	if recs := sink.records(t, 2); len(recs) != 2 {
		t.Fatalf("%d records, want 2 (flows 1 and 2): %+v", len(recs), recs)
	}
	if st := p.Stats(); st.Denied != 2 || st.EchoUnrecorded != 3 {
		t.Fatalf("stats %+v, want 2 denied and 3 unrecorded", st)
	}

	p.echo.mu.Lock()
	for k, f := range p.echo.flows {
		if k.id == 1 {
			f.timer.Stop()
			p.echo.forget(k, f)
		}
	}
	p.echo.mu.Unlock()
	p.HandleEcho(echoReq("127.0.0.2", 3, 4))
	if recs := sink.records(t, 3); len(recs) != 3 || recs[2].Action != "deny" {
		t.Fatalf("records %+v, want flow 3 recorded once there was room", recs)
	}
	if st := p.Stats(); st.Denied != 3 || st.EchoUnrecorded != 3 {
		t.Fatalf("stats %+v, want 3 denied and still 3 unrecorded", st)
	}
}

// TestEchoDeniedShareLeavesRoomForOthers: one client's denied echo flows
// fill at most its share of the flows remembered, not the whole pool: a
// client spraying echo IDs at a denied destination cannot leave another
// client's denied flow without a record. The pool is still bounded: once
// every share is taken, a further client's new denied flow goes
// unrecorded, counted as before.
func TestEchoDeniedShareLeavesRoomForOthers(t *testing.T) {
	p, _, sink := echoProxy(t, noPing, nil)
	p.echo.maxDenied, p.echo.deniedShare = 8, 2 // stand for 65,536 and 1,024
	from := func(client string, id, seq uint16) netstack.EchoRequest {
		req := echoReq("127.0.0.2", id, seq)
		req.Flow.Client = netip.MustParseAddrPort(client + ":0")
		return req
	}
	const hoarded = 20 // enough to fill the whole pool without shares
	for id := range uint16(hoarded) {
		p.HandleEcho(from("127.0.0.9", id, 1))
	}
	for seq := range uint16(3) {
		p.HandleEcho(from("127.0.0.50", 77, seq))
	}
	recs := sink.records(t, 3)
	byClient := map[string]int{}
	for _, r := range recs {
		byClient[r.ClientIP]++
	}
	if byClient["127.0.0.50"] != 1 {
		t.Errorf("the other client's denied echo flow has %d records, want 1; records by client %v, stats %+v", byClient["127.0.0.50"], byClient, p.Stats())
	}
	if byClient["127.0.0.9"] != 2 {
		t.Errorf("the hoarding client has %d records, want its share, 2", byClient["127.0.0.9"])
	}
	if got := p.Stats().EchoUnrecorded; got != hoarded-2 {
		t.Errorf("echo_denied_unrecorded %d, want the %d requests beyond the hoarder's share", got, hoarded-2)
	}

	// The pool full (the two clients above hold 3, these 5): a new
	// client's denied flow goes unrecorded.
	for c := range 3 {
		for id := range uint16(2) {
			p.HandleEcho(from(fmt.Sprintf("127.0.1.%d", c), id, 1))
		}
	}
	before := p.Stats().EchoUnrecorded
	p.HandleEcho(from("127.0.2.1", 1, 1))
	if got := p.Stats().EchoUnrecorded; got != before+1 {
		t.Errorf("a denied echo flow beyond the full pool: echo_denied_unrecorded %d, want %d", got, before+1)
	}
}

// TestEchoDeniedShareComesBack: a client's denied echo flows that idle out
// give their room in its share back (records.md: "... requests of its
// further new denied flows are dropped without a record ... until some
// idle out"). Otherwise a client's share fills once for good and every
// later denied ping of that client goes unrecorded.
func TestEchoDeniedShareComesBack(t *testing.T) {
	p, _, sink := echoProxy(t, noPing, func(cfg *Config) { cfg.EchoIdleTimeout = 100 * time.Millisecond })
	t.Cleanup(p.Close)
	p.echo.deniedShare = 2
	p.HandleEcho(echoReq("127.0.0.2", 1, 1))
	p.HandleEcho(echoReq("127.0.0.2", 2, 1))
	if n := len(sink.records(t, 2)); n != 2 {
		t.Fatalf("%d records of the first two denied flows, want 2", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		p.echo.mu.Lock()
		n := len(p.echo.flows)
		p.echo.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d denied flows still remembered after their idle timeout", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	p.HandleEcho(echoReq("127.0.0.2", 3, 1))
	p.HandleEcho(echoReq("127.0.0.2", 4, 1))
	if n := len(sink.records(t, 4)); n != 4 {
		t.Fatalf("%d records, want 4: the client's later denied flows went unrecorded (echo_denied_unrecorded %d) though its first ones had idled out",
			n, p.Stats().EchoUnrecorded)
	}
}
