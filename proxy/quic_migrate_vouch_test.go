package proxy

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/destcheck"
)

// TestQUICMigratedPathKeepsVouch: a QUIC connection whose destination
// check passed on an observed DNS answer only (the client's own server's,
// say) moves to a new client port; a reload then forgets that answer. The
// new path used to carry the connection's dest_check "ok" without what it
// rested on (a zero vouch: a pass that holds), so it went on after the
// reload, and its memory let the connection's next paths through as well.
// Now it ends with the connection's first flow, and so is a later path.
// (found by review r6s26 F1)
func TestQUICMigratedPathKeepsVouch(t *testing.T) {
	const web = "policy:\n  default: deny\n  rules:\n    - name: web\n      domains: [\"www.example.test\"]\n      action: allow\n"
	flight := quicFirstFlight(t, "www.example.test")
	dst := newUDPSink(t, false)
	dc := destcheck.New(destcheck.Config{})
	t.Cleanup(dc.Close)
	dc.Observe("vpce-00000000000000007", aResponse(dnsQuery(7, "www.example.test", 1), dst.addr().Addr()))
	p, h, recs := udpProxy(t, web, func(c *Config) {
		wireChecker(dc)(c)
		c.UDPIdleTimeout = time.Minute
	})
	c1, _ := startFlow(p, quicClient, dst.addr(), flight...)
	defer c1.Close()
	waitReceived(t, dst, len(flight))
	port2 := netip.AddrPortFrom(quicClient.Addr(), quicClient.Port()+1)
	c2, _ := startFlow(p, port2, dst.addr(), shortPacket('m'))
	defer c2.Close()
	waitReceived(t, dst, len(flight)+1)

	dc.ForgetObserved()
	after := mustPolicy(t, web)
	h.Store(after)
	c1.inject(shortPacket('a'))
	c2.inject(shortPacket('b'))
	r2 := recordOfPort(t, recs, port2.Port())
	c2.inject(shortPacket('b'))
	port3 := netip.AddrPortFrom(quicClient.Addr(), quicClient.Port()+2)
	c3, _ := startFlow(p, port3, dst.addr(), shortPacket('c'))
	defer c3.Close()
	r3 := recordOfPort(t, recs, port3.Port())
	time.Sleep(200 * time.Millisecond)
	if n := tagged(dst, 'a', 'b', 'c'); n != 0 {
		t.Fatalf("%d datagrams of the connection reached the destination after the reload forgot its answer", n)
	}
	if r2.Kind != "quic" || r2.Action != "deny" || r2.Result != "denied" || r2.Policy != after.ID() ||
		!strings.Contains(r2.Error, "the DNS answer its destination check passed on was forgotten") {
		t.Fatalf("the migrated path's record: %+v", r2)
	}
	if r3.Kind != "quic" || r3.Action != "deny" || r3.SNI != "www.example.test" || !strings.Contains(r3.Error, "which is denied") {
		t.Fatalf("a later path's record: %+v", r3)
	}
}
