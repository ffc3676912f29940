package proxy

import (
	"context"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/destcheck"
)

// aResponse is a NOERROR response to q carrying one A record for the
// question's name (a compression pointer to it) with addr and a 1 h TTL.
func aResponse(q []byte, addr netip.Addr) []byte {
	r := append([]byte(nil), q...)
	r[2], r[3] = 0x81, 0x80
	r[6], r[7] = 0, 1 // ANCOUNT 1
	r = append(r, 0xc0, 12, 0, 1, 0, 1)
	r = binary.BigEndian.AppendUint32(r, 3600)
	a := addr.As4()
	r = append(r, 0, 4)
	return append(r, a[:]...)
}

// TestQUICFlowToDNSPortVouchesForNothing: a flow the policy let out as
// QUIC, by its ClientHello's name, to a DNS port of a server of the
// client's own, carries after its ClientHello any datagram whose first byte
// reads as a short header, a DNS query among them. Its server's answers
// used to be read as DNS and vouch, for everyone behind the endpoint, for
// any name the client asked about, at any address: a policy that lets DNS
// reach a trusted resolver only was walked around. Only flows the policy
// let out as UDP to a DNS port are read as DNS.
func TestQUICFlowToDNSPortVouchesForNothing(t *testing.T) {
	const doc = `
policy:
  default: deny
  rules:
    - name: dns
      dest_cidrs: ["10.0.0.2/32"]
      protocols: [udp]
      ports: [53]
      action: allow
    - name: cdn
      domains: ["*.cdn.example"]
      protocols: [quic]
      action: allow
    - name: bank
      domains: ["bank.example"]
      action: splice
`
	const ep = "vpce-00000000000000007"
	dc := destcheck.New(destcheck.Config{}) // no resolver: only observed answers vouch
	t.Cleanup(dc.Close)
	dst := newUDPSink(t, false)
	// The trusted resolver said that a.cdn.example (a name the attacker
	// may own under a shared suffix) is at the attacker's server.
	dc.Observe(ep, aResponse(dnsQuery(9, "a.cdn.example", 1), dst.addr().Addr()))
	p, _, _ := udpProxy(t, doc, func(c *Config) {
		c.UDPIdleTimeout = 3 * time.Second
		c.DNSPorts = []uint16{dst.addr().Port()}
		c.DestinationCheck = dc.Check
		c.DNSAnswer = dc.ObserveAt
		c.DNSGeneration = dc.Generation
	})
	evil := netip.MustParseAddr("198.51.100.7")
	flight := quicFirstFlight(t, "a.cdn.example")
	c, _ := startFlow(p, quicClient, dst.addr(), flight...)
	waitReceived(t, dst, len(flight))
	q := dnsQuery(0x1234, "bank.example", 1) // an ID below 0x8000: a short header's first bit
	c.inject(q)
	waitReceived(t, dst, len(flight)+1)
	dst.mu.Lock()
	from := dst.from[0]
	dst.mu.Unlock()
	dst.pc.WriteToUDPAddrPort(aResponse(q, evil), from)
	select {
	case <-c.out: // relayed: the flow is allowed, only not read as DNS
	case <-time.After(2 * time.Second):
		t.Fatal("the destination's datagram was not relayed")
	}
	if err := dc.Check(context.Background(), ep, "bank.example", evil); err == nil {
		t.Fatalf("an answer read on a flow decided as QUIC vouches for bank.example at %s", evil)
	}
}
