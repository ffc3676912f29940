package proxy

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// TestQUICRefusalsDoNotEvictRelayed: a client's connection that a reload
// denied was forgotten when the client sent 256 Initials of a denied name
// to other ports (one datagram each, no server needed), or 4 of other
// names to the same port: the connection then moved on as udp. Refusals
// at an Initial are now forgotten before a connection that was relayed,
// so they only forget one another. (found by review r6s26 F5)
func TestQUICRefusalsDoNotEvictRelayed(t *testing.T) {
	p, h, recs := udpProxy(t, migrateBefore, func(c *Config) { c.UDPIdleTimeout = 30 * time.Second })
	dst := newUDPSink(t, false)
	flight := quicFirstFlight(t, "blocked.example.test")
	c1, _ := startFlow(p, quicClient, dst.addr(), flight...)
	defer c1.Close()
	waitReceived(t, dst, len(flight))
	h.Store(mustPolicy(t, migrateAfter))
	c1.inject(shortPacket('a'))
	if r := recordOfPort(t, recs, quicClient.Port()); r.Action != "deny" || r.Result != "denied" {
		t.Fatalf("the connection's record after the reload: %+v", r)
	}

	q := &p.udp.quicPaths
	pol := h.Load()
	refused := func(name string, dest netip.AddrPort) {
		f := &udpFlow{p: p, rec: &records.Record{Kind: "quic", SNI: name, Rule: "no-blocked"}}
		f.info.Endpoint, f.info.Client, f.info.Dest = 7, quicClient, dest
		f.rec.Endpoint = "vpce-00000000000000007"
		q.denied(f, pol, "denied by policy")
	}
	for i := range 4 { // other names, the same address and port
		refused(fmt.Sprintf("n%d.example.test", i), dst.addr())
	}
	other := netip.MustParseAddr("127.0.0.2")
	for i := range maxQUICPathsPerClient + 10 { // other ports
		refused("blocked.example.test", netip.AddrPortFrom(other, uint16(1000+i)))
	}
	if n := q.len(); n != maxQUICPathsPerClient {
		t.Fatalf("%d remembered, want the client's share, %d", n, maxQUICPathsPerClient)
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
	if r.Kind != "quic" || r.Action != "deny" {
		t.Fatalf("the connection's new path: %+v", r)
	}
}
