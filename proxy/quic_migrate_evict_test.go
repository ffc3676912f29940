package proxy

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// TestQUICRefusalsDoNotEvictRelayed: a client's connection that a reload
// denied was forgotten when the client sent 256 Initials of a denied name
// to other ports (one datagram each, no server needed), or 4 of other
// names to the same port: the connection then moved on as udp. Refusals
// at an Initial were then forgotten first (found by review r6s26 F5); they
// are now not remembered at all (r10s26), so they forget nothing.
func TestQUICRefusalsDoNotEvictRelayed(t *testing.T) {
	const denyOthers = migrateAfter + `    - name: no-n
      domains: ["*.n.example.test"]
      action: deny
`
	p, h, recs := udpProxy(t, migrateBefore, func(c *Config) { c.UDPIdleTimeout = 30 * time.Second })
	dst := newUDPSink(t, false)
	flight := quicFirstFlight(t, "blocked.example.test")
	c1, _ := startFlow(p, quicClient, dst.addr(), flight...)
	defer c1.Close()
	waitReceived(t, dst, len(flight))
	h.Store(mustPolicy(t, denyOthers))
	c1.inject(shortPacket('a'))
	if r := recordOfPort(t, recs, quicClient.Port()); r.Action != "deny" || r.Result != "denied" {
		t.Fatalf("the connection's record after the reload: %+v", r)
	}

	other := netip.MustParseAddr("127.0.0.2")
	for i := range maxQUICEndedPerPath + 4 {
		// other names, the same address and port; then the name, to other ports
		dest, name := dst.addr(), fmt.Sprintf("x%d.n.example.test", i)
		if i >= maxQUICEndedPerPath {
			dest, name = netip.AddrPortFrom(other, uint16(1000+i)), "blocked.example.test"
		}
		port := netip.AddrPortFrom(quicClient.Addr(), quicClient.Port()+1+uint16(i))
		c, _ := startFlow(p, port, dest, quicFirstFlight(t, name)...)
		defer c.Close()
		if r := recordOfPort(t, recs, port.Port()); r.Action != "deny" {
			t.Fatalf("the refusal's record: %+v", r)
		}
	}
	if n := p.udp.quicPaths.len(); n != 1 {
		t.Fatalf("%d remembered, want the relayed connection's alone", n)
	}

	pm := netip.AddrPortFrom(quicClient.Addr(), 41001)
	cm, _ := startFlow(p, pm, dst.addr(), shortPacket('m'))
	defer cm.Close()
	for range 4 {
		cm.inject(shortPacket('m'))
	}
	r := recordOfPort(t, recs, pm.Port())
	time.Sleep(200 * time.Millisecond)
	if n := tagged(dst, 'a', 'm'); n != 0 {
		t.Fatalf("%d datagrams of the denied connection reached the destination after the refusals", n)
	}
	if r.Kind != "quic" || r.Action != "deny" || r.SNI != "blocked.example.test" {
		t.Fatalf("the connection's new path: %+v", r)
	}
}
