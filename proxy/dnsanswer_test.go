package proxy

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// answeringServer is a DNS server on loopback that answers each datagram
// it gets with answer(datagram), and not at all when that is nil.
func answeringServer(t *testing.T, answer func(q []byte) []byte) netip.AddrPort {
	t.Helper()
	return loopbackDNS(t, func(q []byte, reply func([]byte)) {
		if a := answer(q); a != nil {
			reply(a)
		}
	})
}

// loopbackDNS listens on a UDP port of 127.0.0.1 until the test ends and
// hands each datagram it gets (a copy of its own), with a way to answer
// its sender, to handle, one after another; it returns the port.
func loopbackDNS(t *testing.T, handle func(q []byte, reply func([]byte))) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			handle(bytes.Clone(buf[:n]), func(b []byte) { _, _ = pc.WriteToUDPAddrPort(b, from) })
		}
	}()
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// dnsFlowResult is what one DNS flow through the proxy gave: its records,
// what the client got, and how long the flow lasted after the client's
// last datagram from the server.
type dnsFlowResult struct {
	dns     []records.Record
	udp     records.Record
	got     [][]byte
	afterIn time.Duration
}

// runDNSFlow sends query on a flow to a DNS server that answers with
// answer, under an idle timeout of idle, waits for the flow to end (within
// idle and 5 s more), and for its udp record and wantDNS dns records.
func runDNSFlow(t *testing.T, answer func(q []byte) []byte, idle time.Duration, wantDNS int, query ...[]byte) dnsFlowResult {
	t.Helper()
	dst := answeringServer(t, answer)
	p, _, recs := udpProxy(t, "policy: {default: allow}\n", func(cfg *Config) {
		cfg.UDPIdleTimeout = idle
		cfg.UDPUnansweredTimeout = idle
		cfg.DNSPorts = []uint16{dst.Port()}
	})
	c, done := startFlow(p, quicClient, dst, query...)
	var res dnsFlowResult
	var last time.Time
	limit := time.After(idle + 5*time.Second)
wait:
	for {
		select {
		case b := <-c.out:
			res.got = append(res.got, b)
			last = time.Now()
		case <-c.ended:
			break wait
		case <-limit:
			t.Fatalf("the flow did not end within its idle timeout (%v) and 5 s", idle)
		}
	}
	<-done
	if !last.IsZero() {
		res.afterIn = time.Since(last)
	}
	for _, r := range recs.records(t, 1+wantDNS) {
		switch r.Kind {
		case "dns":
			res.dns = append(res.dns, r)
		case "udp":
			res.udp = r
		}
	}
	return res
}

// TestDNSAnswerInAnotherCaseNoted: a server (or a middlebox) that answers
// with the question lower-cased answers the query for glibc's stub (RFC
// 4343: names compare without regard to ASCII case), but not for one that
// randomises case (DNS 0x20), which drops it as a forgery. Keyed by the
// name as spelled, the answer matched nothing: the query was recorded as a
// timeout, with no rcode. It is noted on the query, which waits on for an
// answer in its own case (the flow lasts to its idle timeout, as before
// such answers matched) and, none coming, is recorded as answered by it:
// ok, its rcode and size, "answered in another case"; and the answer is
// handed to no destination check. A copy of the query sent again in
// another case (DNS 0x20 retries re-randomise) is the same query: one
// record.
func TestDNSAnswerInAnotherCaseNoted(t *testing.T) {
	q := dnsQuery(23, "WWW.Example.TEST", 1)
	again := dnsQuery(23, "www.EXAMPLE.test", 1)
	var answered atomic.Int32 // the server serves each datagram on a goroutine of its own
	const idle = 3 * time.Second
	res := runTeachFlow(t, func(b []byte, send func([]byte)) {
		if answered.Add(1) < 2 {
			return // the first copy goes unanswered: the client sends it again
		}
		send(dnsNoError(bytes.ToLower(b)))
	}, idle, 1, q, again)
	if len(res.got) != 1 {
		t.Fatalf("the client got %d datagrams, want the answer", len(res.got))
	}
	if len(res.dns) != 1 {
		t.Fatalf("%d dns records, want 1 (a copy in another case is the same query): %+v", len(res.dns), res.dns)
	}
	r := res.dns[0]
	if r.Result != "ok" || r.RCode != "NOERROR" || r.QueryName != "www.example.test" || r.BytesIn != int64(len(q)) ||
		r.BytesOut != int64(len(q)+len(again)) || r.Error != caseNote {
		t.Errorf("dns record %+v; want ok, NOERROR, www.example.test, bytes_in %d, bytes_out %d, error %q", r, len(q), len(q)+len(again), caseNote)
	}
	if res.udp.Error != "" {
		t.Errorf("udp record error %q; want none: the answer answered the query", res.udp.Error)
	}
	if len(res.handed) != 0 {
		t.Errorf("an answer in another case was handed to DNSAnswer: %q", res.handed)
	}
	if res.lasted < idle-500*time.Millisecond {
		t.Errorf("the flow lasted %v after its query; want its idle timeout (%v): a 0x20 client may still wait for an answer in its case", res.lasted, idle)
	}
}

// bareAnswer answers a query with its header alone: its ID, QR and RD, the
// rcode, and no question, as servers answer FORMERR (RFC 6891 §7) or
// REFUSED.
func bareAnswer(rcode byte) func(q []byte) []byte {
	return func(q []byte) []byte {
		r := bytes.Clone(q[:dnsHeaderLen])
		r[2], r[3] = 0x81, rcode
		r[4], r[5] = 0, 0
		return r
	}
}

// TestDNSBareAnswerMatched plays the reviewer's servers that answer a
// query with a 12-byte header, FORMERR or REFUSED and no question: glibc's
// stub takes it (it matches by ID and source), so the query's record says
// ok with the rcode and the answer's 12 bytes, and notes the missing
// question. Read as no DNS message, the query was recorded as a timeout
// and the udp record counted the answer as answering no waiting query.
// Go's resolver and musl drop such an answer and wait on, so the flow
// does too, to its idle timeout, as it did before such answers matched:
// ended a linger after it, it cut off their real answer. An answer with no
// question names no address: it is not handed to DNSAnswer.
func TestDNSBareAnswerMatched(t *testing.T) {
	for _, c := range []struct {
		rcode byte
		want  string
	}{{1, "FORMERR"}, {5, "REFUSED"}} {
		const idle = 3 * time.Second
		res := runTeachFlow(t, func(q []byte, send func([]byte)) { send(bareAnswer(c.rcode)(q)) },
			idle, 1, dnsQuery(21, "a.example.test", 1))
		if len(res.got) != 1 || len(res.got[0]) != dnsHeaderLen {
			t.Fatalf("%s: the client got %d datagrams, want the 12-byte answer", c.want, len(res.got))
		}
		if len(res.dns) != 1 || res.dns[0].Result != "ok" || res.dns[0].RCode != c.want || res.dns[0].BytesIn != dnsHeaderLen || res.dns[0].Error != bareNote {
			t.Errorf("dns records %+v; want one, ok, %s, bytes_in 12, error %q", res.dns, c.want, bareNote)
		}
		if res.udp.Error != "" {
			t.Errorf("%s: udp record error %q; want none: the answer answered the query", c.want, res.udp.Error)
		}
		if len(res.handed) != 0 {
			t.Errorf("%s: an answer with no question was handed to DNSAnswer: % x", c.want, res.handed)
		}
		if res.lasted < idle-500*time.Millisecond {
			t.Errorf("%s: the flow lasted %v after its query; want its idle timeout (%v): Go's and musl's stubs wait on after such an answer", c.want, res.lasted, idle)
		}
	}
}

// TestDNSBareAnswerThenRealAnswer plays review rev30c's F3: a server (or
// an injector) sends a bare REFUSED, and the real answer 1.5 s later. Go's
// resolver and musl drop the bare answer and take the real one; but the
// bare answer ended the query, the flow was quiet and ended a linger (1 s)
// later, and the real answer never reached the client. The flow now waits
// for it, the record is the real answer's, as for any answer, noting the
// bare one that came first (the one glibc's stub took), and only it is
// handed to DNSAnswer.
func TestDNSBareAnswerThenRealAnswer(t *testing.T) {
	real := netip.MustParseAddr("192.0.2.10")
	q := dnsQuery(0x6161, "a.example.test", 1)
	const delay = 1500 * time.Millisecond
	res := runTeachFlow(t, func(q []byte, send func([]byte)) {
		send(bareAnswer(5)(q))
		time.Sleep(delay)
		send(aResponse(q, real))
	}, 10*time.Second, 1, q)
	if len(res.got) != 2 {
		t.Fatalf("the client got %d datagrams, want the bare answer and the real one", len(res.got))
	}
	want := int64(len(aResponse(q, real)))
	const first = "an answer without its question came first (REFUSED, 12 bytes)"
	if len(res.dns) != 1 || res.dns[0].Result != "ok" || res.dns[0].RCode != "NOERROR" || res.dns[0].BytesIn != want || res.dns[0].Error != first {
		t.Errorf("dns records %+v; want one, ok, NOERROR, bytes_in %d, error %q", res.dns, want, first)
	}
	if len(res.handed) != 1 || !res.vouches("a.example.test", real) {
		t.Errorf("DNSAnswer was handed %d answers, and the check vouches for %s: %v; want the real answer", len(res.handed), real, res.vouches("a.example.test", real))
	}
	if res.lasted > delay+dnsLinger+2*time.Second {
		t.Errorf("the flow lasted %v; want it to end a linger after the real answer", res.lasted)
	}
}

// TestDNSBareMeansHeaderAlone: only a response with no question, answer or
// authority is answered by its ID alone, as records.md has it ("its header
// alone"); an OPT record in its additional section is read for its rcode.
// One with no question that carries an A record (no server's FORMERR or
// REFUSED; clients that match by question drop it) answered its query by
// ID, and the A record went unseen by the check: it now answers no waiting
// query.
func TestDNSBareMeansHeaderAlone(t *testing.T) {
	p, _, recs := udpProxy(t, "policy: {default: allow}\n", nil)
	d := newDNSLog(p, &records.Record{Kind: "udp", Endpoint: "vpce-7", ClientIP: "10.0.0.5"}, nil)
	withA, withOPT := dnsQuery(44, "x.example.test", 1), dnsQuery(45, "y.example.test", 1)
	d.query(withA)
	d.query(withOPT)
	b := bareAnswer(0)(withA)
	b[7] = 1 // ANCOUNT 1: a root-owned A record
	b = append(b, 0, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 203, 0, 113, 66)
	d.answer(b)
	opt := withAdditional(bareAnswer(0)(withOPT), optRR(1, 0))
	d.answer(opt)
	if note := d.notQueries(); note != "datagrams from the server that answered no waiting query: 1" {
		t.Errorf("udp note %q; want the answer with an A record and no question counted", note)
	}
	d.close(dnsTimedOut)
	got := map[string]string{}
	for _, r := range recs.records(t, 2) {
		got[r.QueryName] = fmt.Sprintf("%s %s %d %s", r.Result, r.RCode, r.BytesIn, r.Error)
	}
	want := map[string]string{"x.example.test": "timeout  0 ", "y.example.test": fmt.Sprintf("ok BADVERS %d %s", len(opt), bareNote)}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("records (name: result rcode bytes_in error) %v, want %v", got, want)
	}
}

// TestDNSBareAnswerIDReused: an answer with no question names only an ID;
// when two pending queries share it, it could be either's, and taking one
// would let a client hide a query behind an innocent one of the same ID (a
// bare answer closing the hidden one's record). Neither is taken: both
// wait on (here to their timeout), and the answer counts among those that
// answered no waiting query. One pending query of another ID is no
// ambiguity, nor is a bare answer's ID that no query has.
func TestDNSBareAnswerIDReused(t *testing.T) {
	p, _, recs := udpProxy(t, "policy: {default: allow}\n", nil)
	rec := &records.Record{Kind: "udp", Endpoint: "vpce-7", ClientIP: "10.0.0.5"}
	d := newDNSLog(p, rec, nil)
	hidden, innocent, other := dnsQuery(5, "hidden.exfil.test", 16), dnsQuery(5, "www.example.com", 1), dnsQuery(6, "x.example.com", 1)
	again := dnsQuery(7, "again.example.com", 1)
	d.query(again)
	d.query(again) // sent again: the server may answer each copy
	d.answer(dnsResponse(again))
	d.query(hidden)
	d.query(innocent)
	d.query(other)
	if d.answer(bareAnswer(1)(hidden)) {
		t.Fatal("an ambiguous bare answer made the flow quiet")
	}
	d.mu.Lock()
	repeats := d.repeats
	d.mu.Unlock()
	if repeats != 1 {
		t.Errorf("an ambiguous bare answer was taken for the answer to a copy sent again (%d such answers left, want 1)", repeats)
	}
	d.answer(dnsResponse(again))                // the answer to the copy
	d.answer(bareAnswer(3)(dnsQuery(9, "", 1))) // an ID no query has
	d.answer(bareAnswer(2)(other))
	if note := d.notQueries(); note != "datagrams from the server that answered no waiting query: 2" {
		t.Errorf("udp note %q; want the ambiguous and the unmatched answers counted", note)
	}
	d.close(dnsTimedOut)
	got := map[string]string{}
	for _, r := range recs.records(t, 4) {
		got[r.QueryName] = r.Result + " " + r.RCode
	}
	want := map[string]string{"again.example.com": "ok NXDOMAIN", "hidden.exfil.test": "timeout ", "www.example.com": "timeout ", "x.example.com": "ok SERVFAIL"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("records (name: result rcode) %v, want %v", got, want)
	}
}

// TestDNSTruncatedAnswerNoted: an answer cut to fit (TC set) is the
// query's answer, but the client asks again over TCP, and that lookup has
// only a tcp record: the query's record says the answer was truncated,
// else the name finally resolved would be in no dns record and nothing
// would say so.
func TestDNSTruncatedAnswerNoted(t *testing.T) {
	q := dnsQuery(24, "c.example.test", 1)
	res := runDNSFlow(t, func(b []byte) []byte {
		r := bytes.Clone(b)
		r[2], r[3] = 0x83, 0x80 // QR, TC, RD; RA, NOERROR
		return r
	}, 3*time.Second, 1, q)
	if len(res.dns) != 1 || res.dns[0].Result != "ok" || res.dns[0].RCode != "NOERROR" || res.dns[0].Error != truncatedNote {
		t.Errorf("dns records %+v; want one, ok, NOERROR, error %q", res.dns, truncatedNote)
	}
}
