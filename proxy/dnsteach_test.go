package proxy

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/destcheck"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// teachEP is the GWLB endpoint of the flows startFlow opens.
const teachEP = "vpce-00000000000000007"

// sendingServer is a DNS server on loopback that hands each datagram it
// gets, with a way to answer it (as often as it likes), to serve, on a
// goroutine of its own.
func sendingServer(t *testing.T, serve func(q []byte, send func([]byte))) netip.AddrPort {
	t.Helper()
	return loopbackDNS(t, func(q []byte, reply func([]byte)) { go serve(q, reply) })
}

// teachResult is what a DNS flow through a proxy with a real destination
// check gave: its records, what the client got, what the proxy handed to
// Config.DNSAnswer, the check, to ask what it learned, and how long the
// flow lasted from its queries.
type teachResult struct {
	dns    []records.Record
	udp    records.Record
	got    [][]byte
	handed [][]byte
	dc     *destcheck.Checker
	lasted time.Duration
}

// runTeachFlow sends query to a server that answers with serve, through a
// proxy whose DNSAnswer is a destination check's (no resolver: only what
// it is handed vouches), under an idle timeout of idle; it waits for the
// flow to end and for its udp record and wantDNS dns records.
func runTeachFlow(t *testing.T, serve func(q []byte, send func([]byte)), idle time.Duration, wantDNS int, query ...[]byte) *teachResult {
	t.Helper()
	dst := sendingServer(t, serve)
	res := &teachResult{dc: destcheck.New(destcheck.Config{})}
	t.Cleanup(res.dc.Close)
	var mu sync.Mutex
	p, _, recs := udpProxy(t, "policy: {default: allow}\n", func(c *Config) {
		c.UDPIdleTimeout = idle
		c.UDPUnansweredTimeout = idle
		c.DNSPorts = []uint16{dst.Port()}
		c.DNSAnswer = func(gen uint64, ep string, cl netip.Addr, msg []byte) {
			mu.Lock()
			res.handed = append(res.handed, bytes.Clone(msg))
			mu.Unlock()
			res.dc.ObserveAt(gen, ep, cl, msg)
		}
		c.DNSGeneration = res.dc.Generation
	})
	start := time.Now()
	c, done := startFlow(p, quicClient, dst, query...)
	limit := time.After(idle + 5*time.Second)
wait:
	for {
		select {
		case b := <-c.out:
			res.got = append(res.got, b)
		case <-c.ended:
			res.lasted = time.Since(start)
			break wait
		case <-limit:
			t.Fatalf("the flow did not end within its idle timeout (%v) and 5 s", idle)
		}
	}
	<-done
	for _, r := range recs.records(t, 1+wantDNS) {
		switch r.Kind {
		case "dns":
			res.dns = append(res.dns, r)
		case "udp":
			res.udp = r
		}
	}
	mu.Lock()
	defer mu.Unlock()
	return res
}

// vouches reports whether the flow's destination check now vouches for
// addr as name.
func (r *teachResult) vouches(name string, addr netip.Addr) bool {
	return r.dc.Check(context.Background(), teachEP, name, addr) == nil
}

// TestDNSExtendedRCodeTeachesNothing plays review rev30c's F1: a
// destination answers with a NOERROR header, an A record for
// bank.example.test at a rogue address, and an OPT whose extended rcode
// is 1 (BADVERS). The record says the lookup failed; the answer was still
// handed to the destination check, which (reading the header's 4 bits)
// vouched for the rogue address, while glibc, reading the header alone,
// used it. Only an answer whose whole rcode is NOERROR is handed on, and
// the check reads the whole rcode too.
func TestDNSExtendedRCodeTeachesNothing(t *testing.T) {
	evil := netip.MustParseAddr("203.0.113.66")
	res := runTeachFlow(t, func(q []byte, send func([]byte)) {
		send(withAdditional(aResponse(q, evil), optRR(1, 0)))
	}, 5*time.Second, 1, dnsQuery(0x5151, "bank.example.test", 1))
	if len(res.got) != 1 {
		t.Fatalf("the client got %d datagrams, want the answer", len(res.got))
	}
	if len(res.dns) != 1 || res.dns[0].Result != "ok" || res.dns[0].RCode != "BADVERS" {
		t.Errorf("dns records %+v; want one, ok, BADVERS", res.dns)
	}
	if len(res.handed) != 0 {
		t.Errorf("a BADVERS answer was handed to DNSAnswer: % x", res.handed)
	}
	if res.vouches("bank.example.test", evil) {
		t.Errorf("the destination check vouches for %s from an answer recorded as a failed lookup", evil)
	}
}

// TestDNSCaseForgeryTeachesNothing plays review rev30c's F2: a client
// that randomises case (DNS 0x20, as Unbound's use-caps-for-id) asks for
// WwW.BaNk.ExAmPlE.tEsT. A first answer that repeats the name in another
// case (a forgery that did not know the case, which the client drops)
// carries 203.0.113.66; the destination's answer in the client's case
// carries 192.0.2.10 a moment later. The forgery took the query: the check
// learned the forged address and not the real one, which it then refused,
// and the real answer counted as answering no waiting query. Only an
// answer that repeats the name byte for byte teaches, whatever came
// before it; the record is the real answer's, and notes the forgery that
// came first (the answer glibc's stub took), which it said nothing of.
func TestDNSCaseForgeryTeachesNothing(t *testing.T) {
	forged, real := netip.MustParseAddr("203.0.113.66"), netip.MustParseAddr("192.0.2.10")
	q := dnsQuery(0x7777, "WwW.BaNk.ExAmPlE.tEsT", 1)
	res := runTeachFlow(t, func(q []byte, send func([]byte)) {
		send(aResponse(bytes.ToLower(q), forged))
		time.Sleep(100 * time.Millisecond)
		send(aResponse(q, real))
	}, 5*time.Second, 1, q)
	if len(res.got) != 2 {
		t.Fatalf("the client got %d datagrams, want both answers", len(res.got))
	}
	if len(res.handed) != 1 || !bytes.Equal(res.handed[0], aResponse(q, real)) {
		t.Errorf("DNSAnswer was handed %d answers (% x); want the one in the client's case alone", len(res.handed), res.handed)
	}
	if res.vouches("www.bank.example.test", forged) || !res.vouches("www.bank.example.test", real) {
		t.Errorf("the check vouches for the forged %s: %v, for the real %s: %v; want only the real one",
			forged, res.vouches("www.bank.example.test", forged), real, res.vouches("www.bank.example.test", real))
	}
	want := int64(len(aResponse(q, real)))
	first := fmt.Sprintf("an answer in another case came first (NOERROR, %d bytes)", len(aResponse(q, forged)))
	if len(res.dns) != 1 || res.dns[0].Result != "ok" || res.dns[0].RCode != "NOERROR" || res.dns[0].BytesIn != want || res.dns[0].Error != first {
		t.Errorf("dns records %+v; want one, ok, NOERROR, bytes_in %d, error %q", res.dns, want, first)
	}
	if res.udp.Error != "" {
		t.Errorf("udp record error %q; want none: both answers found the query", res.udp.Error)
	}
}

// TestDNSEarlyAnswersCounted: a query the client sent twice may have two
// answers from the server. Answers in another case are noted on it (the
// first) or taken for its copy's (the second); a third answers no waiting
// query. The same holds once an answer in its own case comes after one in
// another: of the two answers to its two copies, both have come, and a
// third is counted.
func TestDNSEarlyAnswersCounted(t *testing.T) {
	p, _, recs := udpProxy(t, "policy: {default: allow}\n", nil)
	rec := &records.Record{Kind: "udp", Endpoint: "vpce-7", ClientIP: "10.0.0.5"}
	d := newDNSLog(p, rec, nil)
	a := dnsQuery(3, "A.example.test", 1)
	d.query(a)
	d.query(a)
	for range 3 {
		if d.answer(dnsNoError(bytes.ToLower(a))) {
			t.Fatal("an answer in another case made the flow quiet")
		}
	}
	if note := d.notQueries(); note != "datagrams from the server that answered no waiting query: 1" {
		t.Errorf("udp note %q; want the third answer counted", note)
	}
	b := dnsQuery(4, "B.example.test", 1)
	d.query(b)
	d.query(b)
	d.answer(dnsResponse(bytes.ToLower(b)))
	d.answer(dnsNoError(b))
	d.mu.Lock()
	pending := len(d.pending)
	d.mu.Unlock()
	if pending != 1 {
		t.Errorf("%d queries pending; want 1: a's, answered in another case only, and not b's, answered in its own", pending)
	}
	d.answer(dnsNoError(b))
	if note := d.notQueries(); note != "datagrams from the server that answered no waiting query: 2" {
		t.Errorf("udp note %q; want the answer after both copies' counted", note)
	}
	d.close(dnsTimedOut)
	got := map[string]string{}
	for _, r := range recs.records(t, 2) {
		got[r.QueryName] = r.Result + " " + r.RCode + " " + r.Error
	}
	bFirst := fmt.Sprintf("an answer in another case came first (NXDOMAIN, %d bytes)", len(dnsResponse(b)))
	want := map[string]string{"a.example.test": "ok NOERROR " + caseNote, "b.example.test": "ok NOERROR " + bFirst}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("records (name: result rcode error) %v, want %v", got, want)
	}
}
