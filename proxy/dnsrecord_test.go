package proxy

import (
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// TestDNSRetransmissionBytesCounted: a retransmitted question (same name,
// ID and type) is one record whose bytes_out counts every copy (records.md),
// whatever the copies carry after the question (EDNS options, additional
// records: the server's business, not read); and its bytes_in is the
// answer's size. Otherwise a client could move bytes in the sections after
// a repeated question while its record says it sent one small datagram.
func TestDNSRetransmissionBytesCounted(t *testing.T) {
	p, _, recs := udpProxy(t, "policy: {default: allow}\n", nil)
	rec := &records.Record{Kind: "udp", Endpoint: "vpce-7", ClientIP: "10.0.0.5"}
	d := newDNSLog(p, rec, nil)
	q := dnsQuery(9, "x.example.test", 1)
	big := append(append([]byte{}, q...), make([]byte, 3000)...) // bytes after the question
	d.query(q)
	d.query(big)
	d.query(big)
	ans := append([]byte{}, q...)
	ans[2] = 0x81
	d.answer(ans)
	d.close(dnsTimedOut)
	var got []records.Record
	for _, r := range recs.records(t, 1) {
		if r.Kind == "dns" {
			got = append(got, r)
		}
	}
	if len(got) != 1 {
		t.Fatalf("%d dns records, want 1: %+v", len(got), got)
	}
	if want := int64(len(q) + 2*len(big)); got[0].BytesOut != want {
		t.Fatalf("bytes_out %d, want every copy counted, %d", got[0].BytesOut, want)
	}
	// bytes_in is the answer's size.
	if got[0].BytesIn != int64(len(ans)) || got[0].Result != "ok" || got[0].RCode != "NOERROR" {
		t.Fatalf("bytes_in %d result %q rcode %q, want the answer's %d bytes, ok, NOERROR", got[0].BytesIn, got[0].Result, got[0].RCode, len(ans))
	}
}

// TestDNSServerQueryIsNoAnswer: a datagram from the server that repeats a
// query's ID, name and type but is not a response (QR clear) is no answer,
// as the client's stub drops it: the query stays pending and is recorded
// as a timeout, not as answered ok.
func TestDNSServerQueryIsNoAnswer(t *testing.T) {
	p, _, recs := udpProxy(t, "policy: {default: allow}\n", nil)
	rec := &records.Record{Kind: "udp", Endpoint: "vpce-7", ClientIP: "10.0.0.5"}
	d := newDNSLog(p, rec, nil)
	q := dnsQuery(11, "y.example.test", 1)
	d.query(q)
	if d.answer(q) {
		t.Fatal("a query echoed back by the server made the flow quiet")
	}
	d.close(dnsTimedOut)
	var got []records.Record
	for _, r := range recs.records(t, 1) {
		if r.Kind == "dns" {
			got = append(got, r)
		}
	}
	if len(got) != 1 || got[0].Result != "timeout" || got[0].RCode != "" {
		t.Fatalf("dns records %+v, want one timeout without an rcode", got)
	}
}

// TestDNSOpaqueFlowNotQuiet: a DNS-port flow that carried datagrams that
// are not DNS queries is never quiet once its queries are answered: it
// idles out as any other flow (records.md, DNS records) rather than ending
// a second after its last answer under the other traffic.
func TestDNSOpaqueFlowNotQuiet(t *testing.T) {
	p, _, _ := udpProxy(t, "policy: {default: allow}\n", nil)
	rec := &records.Record{Kind: "udp", Endpoint: "vpce-7", ClientIP: "10.0.0.5"}
	d := newDNSLog(p, rec, nil)
	defer d.close(dnsTimedOut)
	d.query([]byte("not a dns message at all"))
	q := dnsQuery(12, "z.example.test", 1)
	d.query(q)
	ans := append([]byte{}, q...)
	ans[2] = 0x81
	if d.answer(ans) || d.quiet() {
		t.Fatal("a flow that carried a datagram that is not a DNS query is quiet once its queries are answered")
	}
}

// TestDNSOneUnrecordedQueryNamed: when exactly one of a client's queries
// went unrecorded (its bucket was empty), its next dns record says so
// (records.md: "the client's next dns record says in its error how many of
// its queries went before it unrecorded"): a single query must not vanish
// from the client's records without a trace.
func TestDNSOneUnrecordedQueryNamed(t *testing.T) {
	p, _, recs := udpProxy(t, "policy: {default: allow}\n", nil)
	rec := &records.Record{Kind: "udp", Endpoint: "vpce-7", ClientIP: "10.0.0.5"}
	d := newDNSLog(p, rec, nil)
	defer d.close(dnsTimedOut)
	ask := func(id uint16) {
		q := dnsQuery(id, "w.example.test", 1)
		d.query(q)
		ans := append([]byte{}, q...)
		ans[2] = 0x81
		d.answer(ans)
	}
	ask(1) // makes the client's bucket
	l := &p.denies.dns
	l.mu.Lock()
	b := l.m[d.client]
	b.tokens, b.last = 0, time.Now().Add(time.Hour) // empty, and no refill
	l.mu.Unlock()
	ask(2) // unrecorded
	l.mu.Lock()
	b.tokens = 1
	l.mu.Unlock()
	ask(3)
	var got []records.Record
	for _, r := range recs.records(t, 2) {
		if r.Kind == "dns" {
			got = append(got, r)
		}
	}
	if len(got) != 2 || !strings.Contains(got[1].Error, "1 more DNS queries") {
		t.Fatalf("dns records %+v; want two, the second saying 1 more query went unrecorded", got)
	}
	if n := p.denies.dnsUnrecorded.Load(); n != 1 {
		t.Fatalf("dns_unrecorded %d, want 1", n)
	}
}
