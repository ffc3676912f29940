package proxy

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// answeringServer is a DNS server on loopback that answers each datagram
// it gets with answer(datagram), and not at all when that is nil.
func answeringServer(t *testing.T, answer func(q []byte) []byte) netip.AddrPort {
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
			if a := answer(bytes.Clone(buf[:n])); a != nil {
				_, _ = pc.WriteToUDPAddrPort(a, from)
			}
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

// TestDNSAnswerInAnotherCaseMatches: a server (or a middlebox) that answers
// with the question lower-cased answers the query (RFC 4343: names compare
// without regard to ASCII case; glibc's stub takes such an answer). Keyed by
// the name as spelled, the answer matched nothing: the query was recorded
// as a timeout, with no rcode, and the udp record counted the answer as one
// that answered no waiting query. A copy of the query sent again in another
// case (DNS 0x20 retries re-randomise) is the same query: one record.
func TestDNSAnswerInAnotherCaseMatches(t *testing.T) {
	q := dnsQuery(23, "WWW.Example.TEST", 1)
	again := dnsQuery(23, "www.EXAMPLE.test", 1)
	answered := 0
	res := runDNSFlow(t, func(b []byte) []byte {
		if answered++; answered < 2 {
			return nil // the first copy goes unanswered: the client sends it again
		}
		return dnsResponse(bytes.ToLower(b))
	}, 3*time.Second, 1, q, again)
	if len(res.got) != 1 {
		t.Fatalf("the client got %d datagrams, want the answer", len(res.got))
	}
	if len(res.dns) != 1 {
		t.Fatalf("%d dns records, want 1 (a copy in another case is the same query): %+v", len(res.dns), res.dns)
	}
	r := res.dns[0]
	if r.Result != "ok" || r.RCode != "NXDOMAIN" || r.QueryName != "www.example.test" || r.BytesIn != int64(len(q)) || r.BytesOut != int64(len(q)+len(again)) {
		t.Errorf("dns record %+v; want ok, NXDOMAIN, www.example.test, bytes_in %d, bytes_out %d", r, len(q), len(q)+len(again))
	}
	if res.udp.Error != "" {
		t.Errorf("udp record error %q; want none: the answer answered the query", res.udp.Error)
	}
	if res.afterIn > dnsLinger+time.Second {
		t.Errorf("the flow lasted %v after its answer; want the linger (%v)", res.afterIn, dnsLinger)
	}
}
