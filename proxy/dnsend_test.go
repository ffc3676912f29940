package proxy

import (
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// flowRecords waits for a flow's udp record and its n dns records.
func flowRecords(t *testing.T, recs *recordSink, n int) (udp records.Record, dns []records.Record) {
	t.Helper()
	for _, r := range recs.records(t, 1+n) {
		switch r.Kind {
		case "udp":
			udp = r
		case "dns":
			dns = append(dns, r)
		}
	}
	if udp.Kind == "" || len(dns) != n {
		t.Fatalf("a udp record %v and %d dns records %+v; want one and %d", udp.Kind != "", len(dns), dns, n)
	}
	return udp, dns
}

// TestDNSPendingDeniedByReload plays the reviewer's reload: a query waits
// for its answer, a reload denies the flow, and the answer, which comes
// after, is dropped: the client never gets it. The query's record said
// `allow`, `timeout`, though the appliance itself ended the query; it says
// now what the flow's record says: denied, by the new policy's rule.
func TestDNSPendingDeniedByReload(t *testing.T) {
	dst := newUDPSink(t, false)
	p, h, recs := udpProxy(t, "policy: {default: allow}\n", func(cfg *Config) {
		cfg.UDPIdleTimeout = 3 * time.Second
		cfg.DNSPorts = []uint16{dst.addr().Port()}
	})
	c, _ := startFlow(p, quicClient, dst.addr(), dnsQuery(2, "pending.example", 1))
	waitReceived(t, dst, 1)
	dst.mu.Lock()
	from := dst.from[0]
	dst.mu.Unlock()
	tight := mustPolicy(t, tightDNSPolicy)
	h.Store(tight)
	if _, err := dst.pc.WriteToUDPAddrPort(dnsResponse(dnsQuery(2, "pending.example", 1)), from); err != nil {
		t.Fatal(err)
	}
	udp, dns := flowRecords(t, recs, 1)
	select {
	case <-c.out:
		t.Error("the answer reached the client after the reload denied the flow")
	default:
	}
	if udp.Result != "denied" || strings.Contains(udp.Error, silentNote) {
		t.Fatalf("udp record %+v; want the flow denied by the reload, not said to have had nothing from its destination (its answer met the deny)", udp)
	}
	r := dns[0]
	const why = "ended by a policy reload before its answer: "
	if r.Result != "denied" || r.Action != "deny" || r.Rule != "no-rogue-dns" || r.Policy != tight.ID() || !strings.HasPrefix(r.Error, why) || r.RCode != "" {
		t.Errorf("dns record %+v; want denied, deny, rule no-rogue-dns, policy %s, error %q…", r, tight.ID(), why)
	}
}

// TestDNSPendingRefusedDestination: a query to a port that answers ICMP
// port unreachable was recorded as a timeout 0.2 ms in; it is `refused`,
// as the flow's record is, with the error.
func TestDNSPendingRefusedDestination(t *testing.T) {
	l, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	dst := l.LocalAddr().(*net.UDPAddr).AddrPort()
	l.Close() // closed: the kernel answers port unreachable
	p, _, recs := udpProxy(t, "policy: {default: allow}\n", func(cfg *Config) {
		cfg.UDPIdleTimeout = 3 * time.Second
		cfg.DNSPorts = []uint16{dst.Port()}
	})
	c, _ := startFlow(p, quicClient, dst, dnsQuery(25, "d.example.test", 1))
	<-c.ended
	udp, dns := flowRecords(t, recs, 1)
	if udp.Result != "refused" {
		t.Fatalf("udp record %+v; want refused", udp)
	}
	r := dns[0]
	if r.Result != "refused" || !strings.HasPrefix(r.Error, "the flow ended before its answer: ") || !strings.Contains(r.Error, "connection refused") {
		t.Errorf("dns record %+v; want refused, error naming the refusal", r)
	}
}

// TestUDPShutdownRecorded: flows the appliance's shutdown ends (the packet
// stacks close their client sides once StacksClosing is called) say so, in
// errShutdown's words and `reset`, as the TCP flows the shutdown ends do: a
// UDP flow whose destination was answering, and a QUIC one, were recorded
// `ok` with no error, like flows that idled out; and a DNS query still
// waiting says the shutdown ended it, not a timeout.
func TestUDPShutdownRecorded(t *testing.T) {
	dns, echo := newUDPSink(t, false), newUDPSink(t, true)
	p, _, recs := udpProxy(t, "policy: {default: allow}\n", func(cfg *Config) {
		cfg.UDPIdleTimeout = 30 * time.Second
		cfg.DNSPorts = []uint16{dns.addr().Port()}
	})
	dc, _ := startFlow(p, quicClient, dns.addr(), dnsQuery(3, "shut.example", 1))
	uc, _ := startFlow(p, netip.MustParseAddrPort("198.18.0.6:40001"), echo.addr(), []byte("stream please"))
	qc, _ := startFlow(p, netip.MustParseAddrPort("198.18.0.7:40002"), echo.addr(), quicFirstFlight(t, "www.example.test")...)
	waitReceived(t, dns, 1)
	<-uc.out // the destination answers: the flow is live
	<-qc.out
	p.StacksClosing()
	for _, c := range []*fakeUDPClient{dc, uc, qc} {
		c.Close() // the stacks' close closes the flows' client sides
	}
	kinds := map[string]int{}
	for _, r := range recs.records(t, 4) {
		kinds[r.Kind]++
		want, wantErr := "reset", errShutdown.Error()
		switch {
		case r.Kind == "dns":
			wantErr += " before its answer"
		case r.BytesIn == 0: // the DNS flow: its server never answered
			wantErr += "; " + silentNote
		}
		if r.Result != want || r.Error != wantErr {
			t.Errorf("%s record %+v; want %s, error %q", r.Kind, r, want, wantErr)
		}
	}
	if kinds["udp"] != 2 || kinds["quic"] != 1 || kinds["dns"] != 1 {
		t.Errorf("records by kind %v; want 2 udp, 1 quic, 1 dns", kinds)
	}
}

// TestDNSPendingClientGone: a client whose port answers unreachable closed
// its socket: its queries still waiting went unanswered for as long as it
// waited, and their records say `timeout`, noting that the client's side
// closed; the flow's record says `ok`, the client having ended it (and
// that the server sent nothing).
func TestDNSPendingClientGone(t *testing.T) {
	dst := newUDPSink(t, false)
	p, _, recs := udpProxy(t, "policy: {default: allow}\n", func(cfg *Config) {
		cfg.UDPIdleTimeout = 30 * time.Second
		cfg.DNSPorts = []uint16{dst.addr().Port()}
	})
	c, _ := startFlow(p, quicClient, dst.addr(), dnsQuery(4, "gone.example", 1))
	waitReceived(t, dst, 1)
	c.failRead(syscall.ECONNREFUSED)
	udp, dns := flowRecords(t, recs, 1)
	if udp.Result != "ok" || udp.Error != silentNote {
		t.Errorf("udp record %+v; want ok, error %q (the server never answered)", udp, silentNote)
	}
	if r := dns[0]; r.Result != "timeout" || !strings.HasPrefix(r.Error, "the client's side of the flow closed before its answer: ") {
		t.Errorf("dns record %+v; want timeout, noting the client's side closed", r)
	}
}

// TestDNSPendingTimedOut: a query the flow's deadline ended is `timeout`,
// with no error: it waited as long as the flow would.
func TestDNSPendingTimedOut(t *testing.T) {
	dst := newUDPSink(t, false)
	p, _, recs := udpProxy(t, "policy: {default: allow}\n", func(cfg *Config) {
		cfg.UDPIdleTimeout = 300 * time.Millisecond
		cfg.DNSPorts = []uint16{dst.addr().Port()}
	})
	startFlow(p, quicClient, dst.addr(), dnsQuery(5, "slow.example", 1))
	_, dns := flowRecords(t, recs, 1)
	if r := dns[0]; r.Result != "timeout" || r.Error != "" || r.DurationMS < 250 {
		t.Errorf("dns record %+v; want timeout after the flow's 300 ms, no error", r)
	}
}

// TestUDPSilentDestinationNoted: a relayed flow whose destination sent
// nothing back (a QUIC server that never answered, a DNS server that
// answered nothing, a one-way stream) was recorded `ok` with nothing to
// tell it from an answered one; its error now says so, its result still
// `ok` (much UDP is one-way by design). A flow that was answered has no
// such note.
func TestUDPSilentDestinationNoted(t *testing.T) {
	sink, echo := newUDPSink(t, false), newUDPSink(t, true)
	p, _, recs := udpProxy(t, "policy: {default: allow}\n", func(cfg *Config) {
		cfg.UDPIdleTimeout = 300 * time.Millisecond
	})
	startFlow(p, quicClient, sink.addr(), []byte("anyone there?"))
	c, _ := startFlow(p, netip.MustParseAddrPort("198.18.0.6:40001"), echo.addr(), []byte("echo"))
	<-c.out
	got := map[uint16]string{}
	for _, r := range recs.records(t, 2) {
		got[r.DestPort] = r.Result + ": " + r.Error
	}
	if got[sink.addr().Port()] != "ok: "+silentNote || got[echo.addr().Port()] != "ok: " {
		t.Errorf("records (result: error) %q to the silent destination, %q to the answering one; want %q and %q",
			got[sink.addr().Port()], got[echo.addr().Port()], "ok: "+silentNote, "ok: ")
	}
}
