package proxy

import (
	"net/netip"
	"testing"
	"time"
)

// aOnlyPolicy allows www.example.test to one IPv6 client address only; its
// neighbours in the same /80 (one share: --ipv6-client-prefix 80) are
// denied.
const aOnlyPolicy = `
policy:
  default: deny
  rules:
    - name: a-only
      client_cidrs: ["2001:db8::a/128"]
      domains: ["www.example.test"]
      action: allow
`

// TestQUICNewPathDecidedOnOwnAddress: a new path used to be decided on the
// remembered QUIC flow's subject, client address included: a neighbour in
// the same IPv6 /80 as an allowed client passed a client_cidrs rule that
// does not match it, by sending short-header packets to where the allowed
// client had a QUIC flow. It is now decided on its own address, and is
// denied. (found by review r6s26 F2)
func TestQUICNewPathDecidedOnOwnAddress(t *testing.T) {
	p, _, recs := udpProxy(t, aOnlyPolicy, func(c *Config) { c.UDPIdleTimeout = 3 * time.Second })
	dst := newUDPSink(t, false)
	flight := quicFirstFlight(t, "www.example.test")
	a := netip.MustParseAddrPort("[2001:db8::a]:40000")
	b := netip.MustParseAddrPort("[2001:db8::b]:40000")
	ca, _ := startFlow(p, a, dst.addr(), flight...)
	defer ca.Close()
	waitReceived(t, dst, len(flight))
	cb, _ := startFlow(p, b, dst.addr(), shortPacket('b'))
	defer cb.Close()
	for range 4 {
		cb.inject(shortPacket('b'))
	}
	r := recordOfPort(t, recs, b.Port())
	time.Sleep(200 * time.Millisecond)
	if n := tagged(dst, 'b'); n != 0 {
		t.Fatalf("%d datagrams of a client that no rule allows reached the destination", n)
	}
	if r.ClientIP != b.Addr().String() || r.Action != "deny" || r.Rule != "" && r.Rule != "default" {
		t.Fatalf("the neighbour's record: %+v", r)
	}
}

// TestQUICNewPathNotDeniedByNeighbour: the reverse of
// TestQUICNewPathDecidedOnOwnAddress: a neighbour's denial, the newest
// memory of the share there, used to decide an allowed client's next path
// (denied under the policy in force: taken as it was). The allowed
// client's path is decided on its own address, and goes through.
// (found by review r6s26 F2)
func TestQUICNewPathNotDeniedByNeighbour(t *testing.T) {
	p, _, recs := udpProxy(t, aOnlyPolicy, func(c *Config) { c.UDPIdleTimeout = time.Second })
	dst := newUDPSink(t, false)
	flight := quicFirstFlight(t, "www.example.test")
	a := netip.MustParseAddrPort("[2001:db8::a]:40000")
	b := netip.MustParseAddrPort("[2001:db8::b]:40100")
	ca, _ := startFlow(p, a, dst.addr(), flight...)
	defer ca.Close()
	waitReceived(t, dst, len(flight))
	if r := recordOfPort(t, recs, a.Port()); r.Action != "splice" { // ends idle
		t.Fatalf("the allowed client's record: %+v", r)
	}
	cb, _ := startFlow(p, b, dst.addr(), flight...)
	defer cb.Close()
	if r := recordOfPort(t, recs, b.Port()); r.Action != "deny" || r.ClientIP != b.Addr().String() {
		t.Fatalf("the neighbour's record: %+v", r)
	}
	a2 := netip.AddrPortFrom(a.Addr(), a.Port()+1)
	ca2, _ := startFlow(p, a2, dst.addr(), shortPacket('a'))
	defer ca2.Close()
	waitReceived(t, dst, len(flight)+1)
	ca2.Close()
	if r := recordOfPort(t, recs, a2.Port()); r.Kind != "quic" || r.Action != "splice" || r.Rule != "a-only" || r.SNI != "www.example.test" {
		t.Fatalf("the allowed client's new path's record: %+v", r)
	}
}
