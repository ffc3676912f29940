package proxy

import (
	"context"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/destcheck"
)

// TestObservedAnswerVouchesForEndpoint pins what policy.md ("Who can vouch
// for a name") documents: an observed answer vouches for its endpoint, for
// every client behind it, whoever asked and whichever server answered. A
// lab client that a client_cidrs rule lets ask any DNS server makes its own
// server's answer (bank.example at the attacker's address) pass the check
// for the endpoint, so for a client in another subnet whose own query to
// that server the policy denies (found by review r1bypass F2, documented
// rather than changed: the check takes no client, and an answer keeps no
// resolver). Should answers come to count per client, this test changes
// with the docs.
func TestObservedAnswerVouchesForEndpoint(t *testing.T) {
	dns := newUDPSink(t, false) // the lab client's own DNS server
	lab := netip.MustParseAddrPort("198.18.0.5:40000")
	prod := netip.MustParseAddrPort("198.18.1.9:40001")
	doc := `
policy:
  default: deny
  rules:
    - name: lab-any-dns
      client_cidrs: ["198.18.0.0/24"]
      protocols: [udp]
      ports: [` + strconv.Itoa(int(dns.addr().Port())) + `]
      action: allow
    - name: dns
      dest_cidrs: ["10.0.0.2/32"]
      protocols: [udp]
      ports: [53]
      action: allow
    - name: bank
      domains: ["bank.example"]
      action: splice
`
	const ep = "vpce-00000000000000007"     // FlowInfo.Endpoint 7
	dc := destcheck.New(destcheck.Config{}) // no resolver: only observed answers vouch
	t.Cleanup(dc.Close)
	p, _, recs := udpProxy(t, doc, func(c *Config) {
		c.UDPIdleTimeout = 3 * time.Second
		c.DNSPorts = []uint16{dns.addr().Port()}
		c.DestinationCheck = dc.Check
		c.DNSAnswer = dc.ObserveAt
		c.DNSGeneration = dc.Generation
	})
	evil := netip.MustParseAddr("198.51.100.7")
	if err := dc.Check(context.Background(), ep, "bank.example", evil); err == nil {
		t.Fatal("bank.example vouched for before any answer")
	}
	startFlow(p, prod, dns.addr(), dnsQuery(0x1111, "bank.example", 1))
	if r := recs.records(t, 1)[0]; r.ClientIP != prod.Addr().String() || r.Action != "deny" {
		t.Fatalf("record %+v; want the prod client's query denied", r)
	}
	q := dnsQuery(0x2222, "bank.example", 1)
	c, _ := startFlow(p, lab, dns.addr(), q)
	waitReceived(t, dns, 1)
	dns.mu.Lock()
	from := dns.from[0]
	dns.mu.Unlock()
	dns.pc.WriteToUDPAddrPort(aResponse(q, evil), from)
	select {
	case <-c.out:
	case <-time.After(5 * time.Second):
		t.Fatal("the answer was not relayed")
	}
	if got := dns.received(); len(got) != 1 {
		t.Fatalf("the lab client's server got %d queries, want the lab client's only", len(got))
	}
	// The check takes the endpoint, not the client: the prod client's
	// splice to evil naming bank.example passes.
	if err := dc.Check(context.Background(), ep, "bank.example", evil); err != nil {
		t.Fatalf("the lab client's answer does not vouch for its endpoint: %v", err)
	}
	if err := dc.Check(context.Background(), "vpce-00000000000000008", "bank.example", evil); err == nil {
		t.Fatal("the answer vouches for another endpoint's clients")
	}
}
