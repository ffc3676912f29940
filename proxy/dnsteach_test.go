package proxy

import (
	"bytes"
	"context"
	"net"
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
			q := bytes.Clone(buf[:n])
			go serve(q, func(b []byte) { _, _ = pc.WriteToUDPAddrPort(b, from) })
		}
	}()
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// teachResult is what a DNS flow through a proxy with a real destination
// check gave: its records, what the client got, what the proxy handed to
// Config.DNSAnswer, and the check, to ask what it learned.
type teachResult struct {
	dns    []records.Record
	udp    records.Record
	got    [][]byte
	handed [][]byte
	dc     *destcheck.Checker
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
	c, done := startFlow(p, quicClient, dst, query...)
	limit := time.After(idle + 5*time.Second)
wait:
	for {
		select {
		case b := <-c.out:
			res.got = append(res.got, b)
		case <-c.ended:
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
