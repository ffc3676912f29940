package proxy

import (
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// tightDNSPolicy denies DNS to the loopback resolvers of these tests, as an
// operator does who allows DNS only to the resolvers they trust.
const tightDNSPolicy = "policy:\n  default: allow\n  rules:\n    - name: no-rogue-dns\n      dest_cidrs: [\"127.0.0.0/8\"]\n      action: deny\n"

// TestDNSAnswerAfterReloadNotObserved: a DNS flow allowed under a policy
// that let clients ask any DNS server (their own, which can say that
// allowed.example is at an address of theirs) must not hand answers to
// DNSAnswer once a reload has replaced that policy with one that denies
// the flow. The answer to a query asked before the reload is the flow's
// next datagram from the destination: the flow is decided again before it
// is relayed, and ends, so the answer neither reaches the client nor
// vouches for anything. Both queries are recorded.
func TestDNSAnswerAfterReloadNotObserved(t *testing.T) {
	dst := newUDPSink(t, false)
	var seen atomic.Int32
	p, h, recs := udpProxy(t, "policy: {default: allow}\n", func(cfg *Config) {
		cfg.UDPIdleTimeout = 3 * time.Second
		cfg.DNSPorts = []uint16{dst.addr().Port()}
		cfg.DNSAnswer = func(uint64, string, netip.Addr, []byte) { seen.Add(1) }
	})
	c, _ := startFlow(p, quicClient, dst.addr(), dnsQuery(1, "allowed.example", 1))
	waitReceived(t, dst, 1)
	dst.mu.Lock()
	from := dst.from[0]
	dst.mu.Unlock()
	dst.pc.WriteToUDPAddrPort(dnsNoError(dnsQuery(1, "allowed.example", 1)), from)
	<-c.out
	if n := seen.Load(); n != 1 {
		t.Fatalf("%d answers observed before the reload, want 1", n)
	}
	c.inject(dnsQuery(2, "allowed.example", 1))
	waitReceived(t, dst, 2)
	h.Store(mustPolicy(t, tightDNSPolicy))
	dst.pc.WriteToUDPAddrPort(dnsNoError(dnsQuery(2, "allowed.example", 1)), from)
	select {
	case <-c.out:
		t.Fatal("the answer to a query asked before the reload was relayed after the reload denied the flow")
	case <-time.After(500 * time.Millisecond):
	}
	if n := seen.Load(); n != 1 {
		t.Fatalf("%d answers observed, want 1: an answer after a reload that denies the flow vouched for its name", n)
	}
	dns, ended := 0, false
	for _, r := range recs.records(t, 3) {
		switch {
		case r.Kind == "dns":
			dns++
		case r.Kind == "udp" && r.Result == "denied" && strings.Contains(r.Error, "ended by a policy reload"):
			ended = true
		}
	}
	if dns != 2 || !ended {
		t.Fatalf("%d dns records, flow ended by the reload %v; want both queries recorded and the flow ended", dns, ended)
	}
}

// TestDNSGenerationReadBeforePolicyCheck: the proxy reads DNSGeneration
// before it compares the flow's policy with the one in force, and hands
// what it read to DNSAnswer. Read after, a reload that came between the
// compare and the read (it stores its policy, then advances the
// generation) would give DNSAnswer the new generation with an answer only
// the old policy allowed, and the checker would keep it. The hook here
// plays that reload at the moment of the read: the compare, made after,
// must see the new policy and keep the answer from DNSAnswer.
func TestDNSGenerationReadBeforePolicyCheck(t *testing.T) {
	dst := newUDPSink(t, false)
	var gens []uint64
	var mu sync.Mutex
	var reloadOnRead atomic.Bool
	var h *policy.Holder
	tight := mustPolicy(t, tightDNSPolicy)
	p, h, _ := udpProxy(t, "policy: {default: allow}\n", func(cfg *Config) {
		cfg.UDPIdleTimeout = 3 * time.Second
		cfg.DNSPorts = []uint16{dst.addr().Port()}
		cfg.DNSGeneration = func() uint64 {
			if reloadOnRead.Load() {
				h.Store(tight) // a reload lands right after the read
				return 42
			}
			return 41
		}
		cfg.DNSAnswer = func(gen uint64, _ string, _ netip.Addr, _ []byte) {
			mu.Lock()
			defer mu.Unlock()
			gens = append(gens, gen)
		}
	})
	c, _ := startFlow(p, quicClient, dst.addr(), dnsQuery(1, "allowed.example", 1))
	waitReceived(t, dst, 1)
	dst.mu.Lock()
	from := dst.from[0]
	dst.mu.Unlock()
	dst.pc.WriteToUDPAddrPort(dnsNoError(dnsQuery(1, "allowed.example", 1)), from)
	<-c.out
	c.inject(dnsQuery(2, "allowed.example", 1))
	waitReceived(t, dst, 2)
	reloadOnRead.Store(true)
	dst.pc.WriteToUDPAddrPort(dnsNoError(dnsQuery(2, "allowed.example", 1)), from)
	select {
	case <-c.out:
	case <-time.After(3 * time.Second):
		t.Fatal("the answer to the second query was not relayed")
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(gens, []uint64{41}) {
		t.Fatalf("DNSAnswer saw generations %v, want [41]: the first answer with the generation read, the second not at all (the reload came before the policy compare)", gens)
	}
}
