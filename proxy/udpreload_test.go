package proxy

import (
	"crypto/tls"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// TestUDPAllowedRedecidedAfterReload: an allowed UDP flow opened before a
// reload that denies it used to go on under the old policy for as long as
// its client kept sending. Its next datagram after the reload is decided
// again: dropped, the flow ended with a record saying the reload denied it
// (by the new rule), and its client end held like a denied flow's, so that
// what it sends next reaches nobody and writes no record. A reload that
// still allows a flow lets it go on.
func TestUDPAllowedRedecidedAfterReload(t *testing.T) {
	dst := newUDPSink(t, true)
	p, h, recs := udpProxy(t, "policy: {default: allow}\n", func(cfg *Config) { cfg.UDPIdleTimeout = time.Minute })
	c, _ := startFlow(p, quicClient, dst.addr(), []byte("one"))
	<-c.out
	// A reload that still allows it (another rule): the flow goes on.
	h.Store(mustPolicy(t, "policy:\n  default: deny\n  rules:\n    - name: loopback-udp\n      protocols: [udp]\n      action: allow\n"))
	c.inject([]byte("two"))
	select {
	case <-c.out:
	case <-time.After(3 * time.Second):
		t.Fatal("a flow the new policy still allows was cut")
	}
	denying := mustPolicy(t, "policy:\n  default: allow\n  rules:\n    - name: no-loopback\n      dest_cidrs: [\"127.0.0.0/8\"]\n      action: deny\n")
	h.Store(denying)
	c.inject([]byte("three"))
	rec := oneRecord(t, recs)
	if rec.Kind != "udp" || rec.Action != "deny" || rec.Rule != "no-loopback" || rec.Result != "denied" ||
		!strings.Contains(rec.Error, "policy reload") || rec.BytesOut != int64(len("onetwo")) {
		t.Fatalf("record %+v; want the flow ended as denied by no-loopback after a reload, 6 bytes out", rec)
	}
	if rec.Policy == "" || rec.Policy != denying.ID() {
		t.Errorf("record names policy %q, want %q: the reload's, whose rule denied it", rec.Policy, denying.ID())
	}
	for range 10 {
		c.inject([]byte("more"))
	}
	time.Sleep(200 * time.Millisecond)
	if got := dst.received(); len(got) != 2 {
		t.Fatalf("the destination received %d datagrams, want 2: the flow was relayed after a reload denied it", len(got))
	}
	if c.isClosed() {
		t.Fatal("the flow's client end was closed, not held: each further datagram would be a new flow and record")
	}
	if n := len(recs.parse(t)); n != 1 {
		t.Fatalf("%d records, want 1", n)
	}
}

// TestDNSFlowRedecidedAfterReload: a client keeps a DNS flow to a server
// of its own alive across a reload that denies DNS there (a query within a
// second of each answer keeps it in the DNS linger). Its queries after the
// reload are not relayed, so no answer to them is relayed or observed.
func TestDNSFlowRedecidedAfterReload(t *testing.T) {
	res := newDNSResolverWith(t, 0, dnsNoError)
	var seen atomic.Int32
	p, h, _ := udpProxy(t, "policy: {default: allow}\n", func(cfg *Config) {
		cfg.UDPIdleTimeout = 3 * time.Second
		cfg.DNSPorts = []uint16{res.addr().Port()}
		cfg.DNSAnswer = func(uint64, string, netip.Addr, []byte) { seen.Add(1) }
	})
	c, _ := startFlow(p, quicClient, res.addr(), dnsQuery(1, "allowed.example", 1))
	<-c.out
	h.Store(mustPolicy(t, tightDNSPolicy))
	for i := range 3 {
		time.Sleep(300 * time.Millisecond) // within the DNS linger
		c.inject(dnsQuery(uint16(10+i), "allowed.example", 1))
	}
	time.Sleep(300 * time.Millisecond)
	if n, asked := seen.Load(), res.count(); n != 1 || asked != 1 {
		t.Fatalf("%d answers observed, the resolver asked %d times; want 1 and 1: the old DNS flow carried queries past a reload that denies it", n, asked)
	}
}

// TestQUICAllowedRedecidedAfterReload: a QUIC flow allowed by its
// ClientHello's name is decided again, on that name, on its next datagram
// after a reload; one the new policy denies by name ends.
func TestQUICAllowedRedecidedAfterReload(t *testing.T) {
	p, h, recs := udpProxy(t, quicPolicy, func(cfg *Config) { cfg.UDPIdleTimeout = time.Minute })
	dst := newUDPSink(t, true)
	flight := quicFirstFlight(t, "www.example.test")
	c, _ := startFlow(p, quicClient, dst.addr(), flight...)
	for range flight {
		<-c.out
	}
	h.Store(mustPolicy(t, "policy:\n  default: allow\n  rules:\n    - name: no-www\n      domains: [\"www.example.test\"]\n      action: deny\n"))
	c.inject(flight[0])
	rec := oneRecord(t, recs)
	if rec.Kind != "quic" || rec.SNI != "www.example.test" || rec.Action != "deny" || rec.Rule != "no-www" || rec.Result != "denied" {
		t.Fatalf("record %+v; want the QUIC flow ended as denied by no-www", rec)
	}
	time.Sleep(100 * time.Millisecond)
	if n := len(dst.received()); n != len(flight) {
		t.Fatalf("the destination received %d datagrams, want the %d of the first flight only", n, len(flight))
	}
}

// oneRecord waits for the flow's one record.
func oneRecord(t *testing.T, recs *recordSink) records.Record {
	t.Helper()
	got := recs.records(t, 1)
	if len(got) != 1 {
		t.Fatalf("%d records, want the flow's one: it did not end", len(got))
	}
	return got[0]
}

// TestUDPServerPushRedecidedAfterReload: a client that sends one datagram
// and then stays silent, to a destination that keeps pushing (a stream, a
// command channel), used to go on receiving after a reload that denies the
// flow, for ever: each datagram from the destination kept the flow from
// idling, and the flow was decided again only on a client datagram. The
// destination's next datagram after the reload has it decided again: the
// flow ends with the reload's record, and the client receives nothing more.
func TestUDPServerPushRedecidedAfterReload(t *testing.T) {
	srv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	pushed := make(chan struct{})
	t.Cleanup(func() { close(stop); srv.Close(); <-pushed })
	go func() {
		defer close(pushed)
		buf := make([]byte, 1500)
		_, from, err := srv.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				_, _ = srv.WriteToUDPAddrPort([]byte("push"), from)
			}
		}
	}()
	dst := srv.LocalAddr().(*net.UDPAddr).AddrPort()
	// An idle timeout far beyond the test: the flow must end on the
	// destination's next datagram, not by idling.
	p, h, recs := udpProxy(t, "policy: {default: allow}\n", func(cfg *Config) { cfg.UDPIdleTimeout = time.Minute })
	c, _ := startFlow(p, quicClient, dst, []byte("hello"))
	for range 3 {
		select {
		case <-c.out:
		case <-time.After(3 * time.Second):
			t.Fatal("the destination's pushes did not reach the client")
		}
	}
	h.Store(mustPolicy(t, "policy:\n  default: allow\n  rules:\n    - name: no-loopback\n      dest_cidrs: [\"127.0.0.0/8\"]\n      action: deny\n"))
	deadline := time.Now().Add(time.Second) // the destination pushes every 100 ms
	for len(recs.parse(t)) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	got := recs.parse(t)
	if len(got) != 1 {
		t.Fatal("the flow went on after a reload denied it: the destination's pushes kept it alive")
	}
	if rec := got[0]; rec.Action != "deny" || rec.Rule != "no-loopback" || rec.Result != "denied" ||
		!strings.Contains(rec.Error, "ended by a policy reload") || rec.BytesOut != int64(len("hello")) {
		t.Fatalf("record %+v; want the flow ended as denied by no-loopback after a reload", rec)
	}
	// What was relayed before the record may still sit in out: drain it,
	// then nothing more may come.
	time.Sleep(50 * time.Millisecond)
	for len(c.out) > 0 {
		<-c.out
	}
	select {
	case d := <-c.out:
		t.Fatalf("the client received %q after the reload ended its flow", d)
	case <-time.After(time.Second):
	}
	if c.isClosed() {
		t.Fatal("the flow's client end was closed, not held as a denied flow's")
	}
	if n := len(recs.parse(t)); n != 1 {
		t.Fatalf("%d records, want 1", n)
	}
}

// TestUDPIdleAfterReloadEndsAsIdle: an allowed flow that has gone quiet
// when a reload that would deny it comes, and carries no datagram after
// it, ends as it would have: at its idle timeout (a DNS flow with every
// query answered: at the end of its linger), recorded allowed and ok, its
// client end closed. It is decided again only on its next datagram, and
// there is none. The host loop decided it again on every wake, the idle
// deadline's too, so such a flow was recorded "denied, ended by a policy
// reload" and its client end held as a denied flow's.
func TestUDPIdleAfterReloadEndsAsIdle(t *testing.T) {
	cases := []struct {
		name    string
		dns     bool
		idle    time.Duration
		reload  string
		lasting time.Duration // how long the flow lasts after its answer, about
	}{
		{name: "udp", idle: 700 * time.Millisecond, reload: "policy:\n  default: allow\n  rules:\n    - name: no-loopback\n      dest_cidrs: [\"127.0.0.0/8\"]\n      action: deny\n", lasting: 700 * time.Millisecond},
		{name: "dns", dns: true, idle: time.Minute, reload: tightDNSPolicy, lasting: dnsLinger},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var dst netip.AddrPort
			first := []byte("hello")
			if tc.dns {
				dst = newDNSResolver(t, 0).addr()
				first = dnsQuery(1, "allowed.example", 1)
			} else {
				dst = newUDPSink(t, true).addr()
			}
			p, h, recs := udpProxy(t, "policy: {default: allow}\n", func(cfg *Config) {
				cfg.UDPIdleTimeout = tc.idle
				if tc.dns {
					cfg.DNSPorts = []uint16{dst.Port()}
				}
			})
			opened := h.Load().ID()
			c, _ := startFlow(p, quicClient, dst, first)
			select {
			case <-c.out:
			case <-time.After(3 * time.Second):
				t.Fatal("no answer")
			}
			h.Store(mustPolicy(t, tc.reload)) // while the flow is quiet, for good
			var flow []records.Record
			for deadline := time.Now().Add(tc.lasting + 3*time.Second); len(flow) == 0 && time.Now().Before(deadline); {
				time.Sleep(10 * time.Millisecond)
				flow = flow[:0]
				for _, r := range recs.parse(t) {
					if r.Kind != "dns" { // a DNS flow's query records
						flow = append(flow, r)
					}
				}
			}
			if len(flow) != 1 {
				t.Fatalf("%d flow records, want 1: %+v", len(flow), flow)
			}
			if r := flow[0]; r.Action != "allow" || r.Result != "ok" || r.Error != "" || r.BytesIn == 0 {
				t.Errorf("record action=%q rule=%q result=%q error=%q in=%d; want the flow allowed and ended ok by idling",
					r.Action, r.Rule, r.Result, r.Error, r.BytesIn)
			}
			// Decided before the reload, never since: the record is
			// written under the new policy but names the old.
			if r := flow[0]; opened == "" || r.Policy != opened {
				t.Errorf("record names policy %q, want %q: the one that decided the flow", r.Policy, opened)
			}
			if !c.isClosed() {
				t.Error("the flow's client end is held as a denied flow's, not closed")
			}
		})
	}
}

// TestUDPFlowCarryingQUICEndedByReload: under a policy where names do not
// matter, a client opens its flow with one datagram that is not QUIC (so
// it is decided as udp, with no name) and then a QUIC connection to a name.
// A reload to a policy that denies that name must end the flow, as it ends
// the same connection opened without the junk first (a quic flow with its
// SNI): the appliance never read the ClientHello, so it cannot tell the
// connection is not to a denied name.
func TestUDPFlowCarryingQUICEndedByReload(t *testing.T) {
	p, h, recs := udpProxy(t, "policy:\n  default: allow\n", func(c *Config) { c.UDPIdleTimeout = 5 * time.Second })
	dst := newUDPSink(t, false)
	first := append([][]byte{[]byte("junk")}, quicFirstFlight(t, "blocked.example.test")...)
	c, _ := startFlow(p, quicClient, dst.addr(), first...)
	waitReceived(t, dst, len(first))
	h.Store(mustPolicy(t, quicPolicy)) // now denies blocked.example.test
	c.inject([]byte{0x40, 1, 2, 3})    // a short-header packet of the connection
	rec := oneRecord(t, recs)
	if rec.Kind != "udp" || rec.Action != "deny" || rec.Result != "denied" || !strings.Contains(rec.Error, "ended by a policy reload") {
		t.Errorf("record kind %s action %s result %s error %q; want the udp flow ended by the reload", rec.Kind, rec.Action, rec.Result, rec.Error)
	}
	time.Sleep(100 * time.Millisecond)
	if n := len(dst.received()); n != len(first) {
		t.Errorf("the destination received %d datagrams, want the %d sent before the reload", n, len(first))
	}
}

// TestUDPFlowWithoutQUICSurvivesReload: a udp flow that never carried a
// QUIC Initial goes on after the same reload: only one that did is ended.
func TestUDPFlowWithoutQUICSurvivesReload(t *testing.T) {
	p, h, _ := udpProxy(t, "policy:\n  default: allow\n", func(c *Config) { c.UDPIdleTimeout = 5 * time.Second })
	dst := newUDPSink(t, false)
	c, _ := startFlow(p, quicClient, dst.addr(), []byte("junk"), []byte{0xc0, 0, 0, 0, 1}) // a long header, not an Initial
	waitReceived(t, dst, 2)
	h.Store(mustPolicy(t, quicPolicy))
	c.inject([]byte{0x40, 1, 2, 3})
	waitReceived(t, dst, 3)
}

// TestUDPFlowGuardsInitialsAfterReload: a udp flow opened under a policy
// that looks at no names lets QUIC Initials through (noted, see
// quicUnread); after a reload to one that looks at names, and still
// allows the flow, a QUIC Initial on it would start a connection to a name
// nobody decided on (here one the new policy denies), so it is dropped, as
// on a udp flow opened under that policy (TestQUICInitialAfterJunk),
// while the flow's other datagrams still pass. A reload the other way
// lifts the guard.
func TestUDPFlowGuardsInitialsAfterReload(t *testing.T) {
	p, h, _ := udpProxy(t, "policy:\n  default: allow\n", func(c *Config) { c.UDPIdleTimeout = 5 * time.Second })
	dst := newUDPSink(t, false)
	c, _ := startFlow(p, quicClient, dst.addr(), []byte("junk"))
	waitReceived(t, dst, 1)
	h.Store(mustPolicy(t, quicPolicy))
	c.inject([]byte{0x40, 1, 2, 3}) // passes: the reload let the flow go on
	waitReceived(t, dst, 2)
	for _, d := range quicFirstFlight(t, "blocked.example.test") {
		c.inject(d)
	}
	c.inject([]byte("more junk"))
	waitReceived(t, dst, 3)
	time.Sleep(100 * time.Millisecond)
	if got := dst.received(); len(got) != 3 || string(got[2]) != "more junk" {
		t.Fatalf("the destination received %d datagrams, want the 3 that are not QUIC", len(got))
	}
	if n := p.Stats().QUICSmuggled; n == 0 {
		t.Error("no smuggled datagram counted")
	}

	// And back: after a reload to a policy that looks at no names again,
	// the guard is lifted, as on a flow opened under that policy.
	t.Run("names no longer matter", func(t *testing.T) {
		p, h, _ := udpProxy(t, quicPolicy, func(c *Config) { c.UDPIdleTimeout = 5 * time.Second })
		dst := newUDPSink(t, false)
		c, _ := startFlow(p, quicClient, dst.addr(), []byte("junk"))
		waitReceived(t, dst, 1)
		h.Store(mustPolicy(t, "policy:\n  default: allow\n"))
		c.inject([]byte{0x40, 1, 2, 3})
		waitReceived(t, dst, 2)
		flight := quicFirstFlight(t, "blocked.example.test")
		for _, d := range flight {
			c.inject(d)
		}
		waitReceived(t, dst, 2+len(flight))
	})
}

// TestDNSQueryRecordsAfterReload: the queries a DNS flow relays after a
// reload that decided it again, and still allows it by another rule, are
// recorded under that rule and that policy: their records used to name the
// rule and policy that opened the flow, which the reload had replaced. The
// query relayed before it keeps the first ones.
func TestDNSQueryRecordsAfterReload(t *testing.T) {
	res := newDNSResolver(t, 0)
	p, h, recs := udpProxy(t, "policy: {default: allow}\n", func(cfg *Config) {
		cfg.UDPIdleTimeout = 3 * time.Second
		cfg.DNSPorts = []uint16{res.addr().Port()}
	})
	old := h.Load()
	c, _ := startFlow(p, quicClient, res.addr(), dnsQuery(1, "one.example", 1))
	<-c.out
	nw := mustPolicy(t, "policy:\n  default: deny\n  rules:\n    - name: dns-only\n      protocols: [udp]\n      action: allow\n")
	h.Store(nw)
	c.inject(dnsQuery(2, "two.example", 1))
	<-c.out
	want := map[string][2]string{"one.example": {"default", old.ID()}, "two.example": {"dns-only", nw.ID()}}
	seen := 0
	for _, r := range recs.records(t, 2) {
		if r.Kind != "dns" {
			continue
		}
		seen++
		if w := want[r.QueryName]; r.Rule != w[0] || r.Policy != w[1] {
			t.Errorf("query %s recorded under rule %q of policy %s, want %q of %s", r.QueryName, r.Rule, r.Policy, w[0], w[1])
		}
	}
	if seen != 2 {
		t.Errorf("%d dns records, want 2", seen)
	}
}

// TestUDPDeniedHeldAcrossReloadThatStillDenies: a held denied flow is let
// go on a reload only if the new policy allows what it was denied on. A
// reload of the same bytes (a new policy, still denying it) keeps it held,
// its datagrams dropped without a record; one that allows it lets it go.
func TestUDPDeniedHeldAcrossReloadThatStillDenies(t *testing.T) {
	dst := newUDPSink(t, false)
	const denying = "policy:\n  default: allow\n  rules:\n    - name: no-loopback\n      dest_cidrs: [\"127.0.0.0/8\"]\n      action: deny\n"
	p, h, recs := udpProxy(t, denying, func(cfg *Config) { cfg.UDPIdleTimeout = time.Minute })
	c, done := startFlow(p, quicClient, dst.addr(), []byte("first"))
	<-done
	if got := recs.records(t, 1); len(got) != 1 || got[0].Action != "deny" {
		t.Fatalf("records %+v, want one deny", got)
	}
	h.Store(mustPolicy(t, denying)) // the same file, loaded again
	for range 5 {
		c.inject([]byte("after the same file"))
	}
	time.Sleep(200 * time.Millisecond)
	if c.isClosed() {
		t.Fatal("a reload that still denies the flow let it go: its next datagram would be decided afresh")
	}
	h.Store(mustPolicy(t, "policy: {default: allow}\n"))
	c.inject([]byte("after the allowing reload"))
	deadline := time.Now().Add(3 * time.Second)
	for !c.isClosed() {
		if time.Now().After(deadline) {
			t.Fatal("a reload that allows the flow did not let it go")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := len(dst.received()); n != 0 {
		t.Fatalf("%d datagrams of a denied flow reached the destination", n)
	}
	if n := len(recs.parse(t)); n != 1 {
		t.Fatalf("%d records, want 1", n)
	}
}

// quicShortHeader is a short-header (1-RTT) packet of a QUIC connection
// already under way: a flow decided afresh on it reads as plain udp, on
// its addresses alone, with no name.
var quicShortHeader = []byte{0x40, 1, 2, 3, 4, 5, 6, 7, 8}

// echFlight is the first flight of a QUIC client offering ECH: its real
// name, secret.example, hidden behind the cover name public.example.
func echFlight(t *testing.T) [][]byte {
	return quicFirstFlightWith(t, &tls.Config{ServerName: "secret.example", MinVersion: tls.VersionTLS13,
		NextProtos: []string{"h3"}, EncryptedClientHelloConfigList: clsECHConfigList(t, "public.example")})
}

// splicedThenReloaded relays flight under a policy that lets it through,
// reloads to doc, and sends a short-header packet of the connection: the
// flow is decided again on it. It returns the flow's records.
func splicedThenReloaded(t *testing.T, flight [][]byte, doc string) []records.Record {
	t.Helper()
	dst := newUDPSink(t, true)
	p, h, recs := udpProxy(t, "policy: {default: allow}\n", func(cfg *Config) { cfg.UDPIdleTimeout = time.Minute })
	c, _ := startFlow(p, quicClient, dst.addr(), flight...)
	for range flight {
		select {
		case <-c.out:
		case <-time.After(5 * time.Second):
			t.Fatal("the QUIC flow was not relayed under default: allow")
		}
	}
	h.Store(mustPolicy(t, doc))
	c.inject(quicShortHeader)
	return recs.records(t, 1)
}

// heldAcrossSameReload starts a QUIC flow that doc refuses with wantErr,
// reloads the same doc and sends a short-header packet of the connection:
// the flow must stay held. Let go, the packet would start a flow decided
// afresh as plain udp, on no name, and the refused connection would
// resume.
func heldAcrossSameReload(t *testing.T, doc string, flight [][]byte, wantErr string) {
	t.Helper()
	dst := newUDPSink(t, false)
	p, h, recs := udpProxy(t, doc, func(cfg *Config) { cfg.UDPIdleTimeout = time.Minute })
	c, done := startFlow(p, quicClient, dst.addr(), flight...)
	<-done
	if got := recs.records(t, 1); len(got) != 1 || got[0].Action != "deny" || got[0].Error != wantErr {
		t.Fatalf("records %+v, want one deny: %s", got, wantErr)
	}
	h.Store(mustPolicy(t, doc)) // the same file, loaded again
	c.inject(quicShortHeader)
	// Letting go closes the client end from a timer at once; nothing
	// signals that it was kept, so give a let-go the time to show.
	select {
	case <-c.ended:
		t.Fatal("a reload that still refuses the QUIC flow let it go: its next (short-header) datagram would be decided afresh as plain udp")
	case <-time.After(300 * time.Millisecond):
	}
	if n := len(dst.received()); n != 0 {
		t.Fatalf("%d datagrams of a refused QUIC flow reached the destination", n)
	}
}

// TestQUICECHFlowEndedByReloadToECHDeny: a spliced QUIC flow whose
// ClientHello offers ECH ends when a reload turns ech: deny on. Decided
// again on its cover name alone, it would go on: the very case ech: deny
// is for, the real name being hidden.
func TestQUICECHFlowEndedByReloadToECHDeny(t *testing.T) {
	got := splicedThenReloaded(t, echFlight(t), "policy: {default: allow, ech: deny}\n")
	if len(got) != 1 || got[0].Action != "deny" || got[0].Result != "denied" || !got[0].ECH {
		t.Fatalf("records %+v, want the ECH flow ended as denied by the reload to ech: deny", got)
	}
}

// TestQUICECHDeniedHeldAcrossSameReload: a QUIC flow refused for offering
// ECH stays held across a reload that still has ech: deny.
func TestQUICECHDeniedHeldAcrossSameReload(t *testing.T) {
	heldAcrossSameReload(t, "policy: {default: allow, ech: deny}\n", echFlight(t), "ClientHello offers ECH; policy ech: deny")
}

// TestQUICFlowEndedByReloadThatBumpsIt: a spliced QUIC flow ends when a
// reload has its name bumped. QUIC cannot be bumped: it is refused so that
// the client falls back to TLS over TCP, where the bump inspects it; let
// go on, it would stay uninspected.
func TestQUICFlowEndedByReloadThatBumpsIt(t *testing.T) {
	got := splicedThenReloaded(t, quicFirstFlight(t, "inspect.example.test"), quicPolicy)
	if len(got) != 1 || got[0].Action != "deny" || got[0].Result != "denied" || got[0].SNI != "inspect.example.test" {
		t.Fatalf("records %+v, want the flow ended as denied by the reload that bumps its name", got)
	}
}

// TestQUICBumpRefusedHeldAcrossSameReload: a QUIC flow refused because its
// name is bumped stays held across a reload that still bumps it.
func TestQUICBumpRefusedHeldAcrossSameReload(t *testing.T) {
	heldAcrossSameReload(t, quicPolicy, quicFirstFlight(t, "inspect.example.test"), quicBumpReason)
}
