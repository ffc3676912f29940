package proxy

import (
	"sync/atomic"
	"testing"
	"time"
)

// tightDNSPolicy denies DNS to the loopback resolvers of these tests, as an
// operator does who allows DNS only to the resolvers they trust.
const tightDNSPolicy = "policy:\n  default: allow\n  rules:\n    - name: no-rogue-dns\n      dest_cidrs: [\"127.0.0.0/8\"]\n      action: deny\n"

// TestDNSAnswerAfterReloadNotObserved: a DNS flow allowed under a policy
// that let clients ask any DNS server (their own, which can say that
// allowed.example is at an address of theirs) must not hand answers to
// DNSAnswer once a reload has replaced that policy: the answer to a query
// asked before the reload is relayed to the client, and recorded, but
// vouches for nothing.
func TestDNSAnswerAfterReloadNotObserved(t *testing.T) {
	dst := newUDPSink(t, false)
	var seen atomic.Int32
	p, h, recs := udpProxy(t, "policy: {default: allow}\n", func(cfg *Config) {
		cfg.UDPIdleTimeout = 3 * time.Second
		cfg.DNSPorts = []uint16{dst.addr().Port()}
		cfg.DNSAnswer = func(string, []byte) { seen.Add(1) }
	})
	c, _ := startFlow(p, quicClient, dst.addr(), dnsQuery(1, "allowed.example", 1))
	waitReceived(t, dst, 1)
	dst.mu.Lock()
	from := dst.from[0]
	dst.mu.Unlock()
	dst.pc.WriteToUDPAddrPort(dnsResponse(dnsQuery(1, "allowed.example", 1)), from)
	<-c.out
	if n := seen.Load(); n != 1 {
		t.Fatalf("%d answers observed before the reload, want 1", n)
	}
	c.inject(dnsQuery(2, "allowed.example", 1))
	waitReceived(t, dst, 2)
	h.Store(mustPolicy(t, tightDNSPolicy))
	dst.pc.WriteToUDPAddrPort(dnsResponse(dnsQuery(2, "allowed.example", 1)), from)
	select {
	case <-c.out:
	case <-time.After(3 * time.Second):
		t.Fatal("the answer to a query asked before the reload was not relayed")
	}
	if n := seen.Load(); n != 1 {
		t.Fatalf("%d answers observed, want 1: an answer relayed after a reload that may deny the flow vouched for its name", n)
	}
	dns := 0
	for _, r := range recs.records(t, 3) {
		if r.Kind == "dns" && r.Result == "ok" {
			dns++
		}
	}
	if dns != 2 {
		t.Fatalf("%d dns records, want both queries recorded", dns)
	}
}
