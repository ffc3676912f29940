package proxy

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// TestDNSServerStreamDoesNotKeepFlow: a DNS-port flow whose one query is
// answered, its server then sending datagrams that answer nothing, ends a
// linger after the answer as policy.md says, not a linger after the
// server's last datagram; and its udp record counts what the server sent
// that answered no query. Before, each such datagram put the flow's end
// off by a linger, so a server could keep it (and its host port) as long
// as it liked, and the record said nothing of them.
func TestDNSServerStreamDoesNotKeepFlow(t *testing.T) {
	dst := newUDPSink(t, false)
	p, _, recs := udpProxy(t, "policy: {default: allow}\n", func(cfg *Config) {
		cfg.UDPIdleTimeout = time.Minute
		cfg.DNSPorts = []uint16{dst.addr().Port()}
	})
	q := dnsQuery(31, "push.example.test", 1)
	c, done := startFlow(p, quicClient, dst.addr(), q)
	waitUntil(t, 5*time.Second, func() bool { return len(dst.received()) == 1 }, "the query to be relayed")
	dst.mu.Lock()
	from := dst.from[0]
	dst.mu.Unlock()
	answered := time.Now()
	if _, err := dst.pc.WriteToUDPAddrPort(dnsResponse(q), from); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.out:
	case <-time.After(5 * time.Second):
		t.Fatal("the answer did not reach the client")
	}
	// A datagram every 200 ms for 3 s, or until the flow ends.
	if !serverPushes(c, dst, from, 200*time.Millisecond, 15) {
		select {
		case <-c.ended:
		case <-time.After(5 * time.Second):
			c.Close()
		}
	}
	ended := time.Since(answered)
	<-done
	// The linger is a second; the rest is slack for a loaded machine, far
	// below the 3 s and more that the server's datagrams kept it before.
	if ended > 2*time.Second {
		t.Errorf("the flow ended %v after its one answer, kept up by its server's datagrams; want a linger (%v) after the answer", ended.Round(time.Millisecond), dnsLinger)
	}
	var udp *records.Record
	for _, r := range recs.records(t, 2) {
		if r.Kind == "udp" {
			udp = &r
		}
	}
	if udp == nil {
		t.Fatal("no udp record")
	}
	var n int
	if _, err := fmt.Sscanf(udp.Error, "datagrams from the server that answered no waiting query: %d", &n); err != nil || n < 1 {
		t.Errorf("udp record error %q, want the count of the server's datagrams that answered no query", udp.Error)
	}
	if want := int64(len(dnsResponse(q)) + n*len(serverPush)); udp.BytesIn != want {
		t.Errorf("udp record bytes_in %d, want the answer and the %d datagrams counted, %d", udp.BytesIn, n, want)
	}
}

// TestDNSUnaskedCounted: what the server sends that answers no waiting
// query (not DNS, not a response, a response to nothing asked) is counted
// for the udp record and leaves the quiet flow's linger where its last
// answer put it. A server answering each copy of a query the client sent
// again is not counted: that is a lookup's ordinary traffic.
func TestDNSUnaskedCounted(t *testing.T) {
	p, _, _ := udpProxy(t, "policy: {default: allow}\n", nil)
	rec := &records.Record{Kind: "udp", Endpoint: "vpce-7", ClientIP: "10.0.0.5"}
	d := newDNSLog(p, rec, nil)
	q := dnsQuery(32, "again.example.test", 1)
	d.query(q)
	d.query(q) // a retransmission
	if !d.answer(dnsResponse(q)) {
		t.Fatal("the flow is not quiet once its query is answered")
	}
	since, _, quiet := d.lookupSince()
	if !quiet {
		t.Fatal("lookupSince: not quiet")
	}
	d.answer(dnsResponse(q)) // the server's answer to the copy
	if got := d.notQueries(); got != "" {
		t.Errorf("after the answer to a query's copy: note %q, want none", got)
	}
	time.Sleep(2 * time.Millisecond)                             // monoclock moves on
	d.answer(dnsResponse(q))                                     // a third answer: to nothing asked
	d.answer(q)                                                  // not a response
	d.answer([]byte("\x00\x01 no DNS message here"))             // not DNS
	d.answer(dnsResponse(dnsQuery(33, "never.example.test", 1))) // never asked
	if got, want := d.notQueries(), "datagrams from the server that answered no waiting query: 4"; got != want {
		t.Errorf("note %q, want %q", got, want)
	}
	if s, _, q := d.lookupSince(); !q || s != since {
		t.Errorf("after datagrams that answered nothing: quiet %v since %d, want still quiet since the answer, %d", q, s, since)
	}
	d.close(dnsTimedOut)
}

// TestDNSPendingQueryServerStreamDoesNotKeepFlow: a DNS-port flow whose one
// query goes unanswered, its server sending datagrams that answer nothing
// every 300 ms, ends at the idle timeout after the query, not after the
// server's last datagram. Before, each such datagram put the flow's end
// off by an idle timeout, so a server could keep a lookup's flow (and its
// host port) as long as it liked by leaving one query unanswered.
func TestDNSPendingQueryServerStreamDoesNotKeepFlow(t *testing.T) {
	const idle = 2 * time.Second
	dst := newUDPSink(t, false)
	p, _, recs := udpProxy(t, "policy: {default: allow}\n", func(cfg *Config) {
		cfg.UDPIdleTimeout = idle
		cfg.DNSPorts = []uint16{dst.addr().Port()}
	})
	q := dnsQuery(41, "never-answered.example.test", 1)
	asked := time.Now()
	c, done := startFlow(p, quicClient, dst.addr(), q)
	waitUntil(t, 5*time.Second, func() bool { return len(dst.received()) == 1 }, "the query to be relayed")
	dst.mu.Lock()
	from := dst.from[0]
	dst.mu.Unlock()
	if !serverPushes(c, dst, from, 300*time.Millisecond, 20) { // 6 s, three idle timeouts
		c.Close()
	}
	ended := time.Since(asked)
	<-done
	// The idle timeout is 2 s; the rest is slack for a loaded machine, well
	// below the 6 s the server's datagrams kept it up before.
	if ended > idle+1500*time.Millisecond {
		t.Errorf("the flow ended %v after its one query, kept up by its server's datagrams; want the idle timeout (%v) after the query", ended.Round(time.Millisecond), idle)
	}
	var udp, dns *records.Record
	for _, r := range recs.records(t, 2) {
		switch r.Kind {
		case "udp":
			udp = &r
		case "dns":
			dns = &r
		}
	}
	if udp == nil || dns == nil {
		t.Fatalf("want a udp and a dns record, got udp %v dns %v", udp != nil, dns != nil)
	}
	if dns.Result != "timeout" {
		t.Errorf("the unanswered query's record says %q, want timeout", dns.Result)
	}
	var n int
	if _, err := fmt.Sscanf(udp.Error, "datagrams from the server that answered no waiting query: %d", &n); err != nil || n < 1 {
		t.Errorf("udp record error %q, want the count of the server's datagrams that answered no query", udp.Error)
	}
}

// TestDNSPendingLookupKeptByItsQueries: a lookup whose query waits is kept
// by the client's queries: a query sent again before the idle timeout puts
// the flow's end off, as any client datagram does for a flow, the timeout
// counting from the last query.
func TestDNSPendingLookupKeptByItsQueries(t *testing.T) {
	const idle = 2 * time.Second
	dst := newUDPSink(t, false)
	p, _, _ := udpProxy(t, "policy: {default: allow}\n", func(cfg *Config) {
		cfg.UDPIdleTimeout = idle
		cfg.DNSPorts = []uint16{dst.addr().Port()}
	})
	q := dnsQuery(42, "slow.example.test", 1)
	c, done := startFlow(p, quicClient, dst.addr(), q)
	defer func() { c.Close(); <-done }()
	waitUntil(t, 5*time.Second, func() bool { return len(dst.received()) == 1 }, "the query to be relayed")
	dst.mu.Lock()
	from := dst.from[0]
	dst.mu.Unlock()
	dst.pc.WriteToUDPAddrPort([]byte("not an answer"), from) // bytes in: the idle timeout, not the unanswered one
	for i := range 3 {                                       // 4.5 s of queries, 1.5 s apart
		select {
		case <-c.ended:
			t.Fatalf("the flow ended after %d of its client's queries, %v apart (idle timeout %v)", i+1, 1500*time.Millisecond, idle)
		case <-time.After(1500 * time.Millisecond):
		}
		c.inject(dnsQuery(uint16(43+i), "slow.example.test", 1))
	}
	select {
	case <-c.ended:
		t.Fatal("the flow ended before the idle timeout after its last query")
	case <-time.After(500 * time.Millisecond):
	}
}

// TestDNSUntrackedAnswersNotCounted: a query past the flow's 1,024
// waiting, or past its client's 4,096 across its flows, is relayed and
// recorded untracked; its answer, though it matches nothing, answers a
// query the client asked and is not counted in the udp record as a
// datagram that answered no waiting query, which reads as a server's
// stream or a tunnel on the port. A response beyond those is counted.
func TestDNSUntrackedAnswersNotCounted(t *testing.T) {
	p, _, _ := udpProxy(t, "policy: {default: allow}\n", nil)
	t.Run("flow", func(t *testing.T) {
		rec := &records.Record{Kind: "udp", Endpoint: "vpce-7", ClientIP: "10.0.0.5"}
		d := newDNSLog(p, rec, nil)
		defer d.close(dnsTimedOut)
		qs := make([][]byte, 0, maxPendingDNS+2)
		for i := range maxPendingDNS + 2 {
			q := dnsQuery(uint16(i), "busy.example.test", 1)
			qs = append(qs, q)
			d.query(q)
		}
		if n := pendingOf([]*dnsLog{d}); n != maxPendingDNS {
			t.Fatalf("%d queries waiting, want the flow's %d, the 2 past them untracked", n, maxPendingDNS)
		}
		for _, q := range qs {
			d.answer(dnsResponse(q))
		}
		if got := d.notQueries(); got != "" {
			t.Errorf("every datagram from the server answered a query the client asked; note %q, want none", got)
		}
		d.answer(dnsResponse(dnsQuery(9999, "never.example.test", 1)))
		if got, want := d.notQueries(), "datagrams from the server that answered no waiting query: 1"; got != want {
			t.Errorf("after a response to nothing asked: note %q, want %q", got, want)
		}
	})
	t.Run("client", func(t *testing.T) {
		rec := &records.Record{Kind: "udp", Endpoint: "vpce-7", ClientIP: "10.0.0.6"}
		full := make([]*dnsLog, maxPendingDNSPerClient/maxPendingDNS)
		for i := range full {
			full[i] = newDNSLog(p, rec, nil)
			defer full[i].close(dnsTimedOut)
			for id := range maxPendingDNS {
				full[i].query(dnsQuery(uint16(id), "fill.example.test", 1))
			}
		}
		d := newDNSLog(p, rec, nil)
		defer d.close(dnsTimedOut)
		q := dnsQuery(7, "one-more.example.test", 1)
		d.query(q)
		if n := pendingOf([]*dnsLog{d}); n != 0 {
			t.Fatalf("%d queries waiting, want none: the query is past the client's %d, untracked", n, maxPendingDNSPerClient)
		}
		d.answer(dnsResponse(q))
		if got := d.notQueries(); got != "" {
			t.Errorf("the server answered the one query the client asked; note %q, want none", got)
		}
	})
}

// serverPush is what a server sends that answers nothing.
var serverPush = []byte("not an answer to anything")

// serverPushes has dst send the flow's client end, from, a datagram that
// answers nothing every interval, rounds times or until c's flow ends; it
// reports whether the flow ended.
func serverPushes(c *fakeUDPClient, dst *udpSink, from netip.AddrPort, every time.Duration, rounds int) bool {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for range rounds {
		select {
		case <-c.ended:
			return true
		case <-tick.C:
			dst.pc.WriteToUDPAddrPort(serverPush, from)
		}
	}
	return false
}
