package proxy

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// TestQUICResumedAllowedAfterOtherDenial: a client's allowed connection
// quiet past --idle-timeout resumes on its own 5-tuple after the same
// client was refused another name at the same address and port (a CDN's).
// The last memory there used to decide alone: the allowed connection was
// denied, its record naming the other connection's name and rule. Every
// connection remembered there is now decided, and one still allowed lets
// the flow through. (found by review r6s26 F3)
func TestQUICResumedAllowedAfterOtherDenial(t *testing.T) {
	p, _, recs := udpProxy(t, migrateAfter, func(c *Config) { c.UDPIdleTimeout = time.Second })
	dst := newUDPSink(t, false)
	allowed := quicFirstFlight(t, "www.example.test")
	c1, _ := startFlow(p, quicClient, dst.addr(), allowed...)
	waitReceived(t, dst, len(allowed))
	r1 := recordOfPort(t, recs, quicClient.Port()) // idles out
	c1.Close()
	port2 := netip.AddrPortFrom(quicClient.Addr(), quicClient.Port()+1)
	c2, _ := startFlow(p, port2, dst.addr(), quicFirstFlight(t, "blocked.example.test")...)
	defer c2.Close()
	if r := recordOfPort(t, recs, port2.Port()); r.Action != "deny" {
		t.Fatalf("the other name's record: %+v", r)
	}
	c3, _ := startFlow(p, quicClient, dst.addr(), shortPacket('r'))
	defer c3.Close()
	waitReceived(t, dst, len(allowed)+1)
	c3.Close()
	var r records.Record
	waitUntil(t, 5*time.Second, func() bool {
		for _, rr := range recs.parse(t) {
			if rr.ClientPort == quicClient.Port() && rr.Time.After(r1.Time) {
				r = rr
				return true
			}
		}
		return false
	}, "the resumed flow's record")
	if r.Kind != "quic" || r.Action != "splice" || r.SNI != "www.example.test" || r.Rule != "" && r.Rule != "default" {
		t.Fatalf("the resumed flow's record: %+v", r)
	}
}

// TestQUICBumpRefusalLeavesUDP: QUIC to a name the policy bumps is refused
// so that the client falls back to TLS over TCP. That refusal used to be
// remembered as a denied connection there, and the client's plain UDP to
// the same address and port (WireGuard-shaped) was denied as quic, under
// the bumped name, for 10 minutes. The refused connection reached no
// server, so no path of it can follow, and the policy denies QUIC to the
// name, not the destination: the udp flow is decided as udp. (found by
// review r6s26 F3)
func TestQUICBumpRefusalLeavesUDP(t *testing.T) {
	p, _, recs := udpProxy(t, quicPolicy, func(c *Config) { c.UDPIdleTimeout = 3 * time.Second })
	dst := newUDPSink(t, false)
	c1, _ := startFlow(p, quicClient, dst.addr(), quicFirstFlight(t, "inspect.example.test")...)
	defer c1.Close()
	if r := recordOfPort(t, recs, quicClient.Port()); r.Action != "deny" || !strings.Contains(r.Error, "QUIC cannot be bumped") {
		t.Fatalf("QUIC to a bumped name: %+v", r)
	}
	wg := append([]byte{0x01, 0, 0, 0}, make([]byte, 144)...) // a WireGuard handshake initiation's shape
	wg[9] = 'g'
	port := netip.AddrPortFrom(quicClient.Addr(), 39001)
	c2, _ := startFlow(p, port, dst.addr(), wg)
	defer c2.Close()
	waitReceived(t, dst, 1)
	c2.Close()
	if r := recordOfPort(t, recs, port.Port()); r.Kind != "udp" || r.Action != "allow" || r.SNI != "" {
		t.Fatalf("the udp flow's record: %+v", r)
	}
}

// TestQUICNewPathOfSeveralDenied: a new path that may be any of several
// denied connections is denied, its record naming none of them (it may be
// any, or none), its error each; held, it is let go by a reload that
// allows any of them, its next flow then denied as the one still denied
// (deny wins), and going through once a reload allows both. It used
// to be recorded, and held, as the last that ended alone. (found by review
// r6s26 F3)
func TestQUICNewPathOfSeveralDenied(t *testing.T) {
	const denyBoth = migrateAfter + `    - name: no-www
      domains: ["www.example.test"]
      action: deny
`
	p, h, recs := udpProxy(t, migrateBefore, func(c *Config) { c.UDPIdleTimeout = time.Second })
	dst := newUDPSink(t, false)
	n := 0
	for i, name := range []string{"www.example.test", "blocked.example.test"} {
		flight := quicFirstFlight(t, name)
		port := netip.AddrPortFrom(quicClient.Addr(), quicClient.Port()+uint16(i))
		c, _ := startFlow(p, port, dst.addr(), flight...)
		defer c.Close()
		n += len(flight)
		waitReceived(t, dst, n)
		recordOfPort(t, recs, port.Port()) // idles out
	}
	h.Store(mustPolicy(t, denyBoth))
	port3 := netip.AddrPortFrom(quicClient.Addr(), quicClient.Port()+2)
	c3, _ := startFlow(p, port3, dst.addr(), shortPacket('x'))
	defer c3.Close()
	r := recordOfPort(t, recs, port3.Port())
	if r.Kind != "quic" || r.Action != "deny" || r.SNI != "" || r.Rule != "" ||
		!strings.Contains(r.Error, "one of the client's 2 QUIC connections") ||
		!strings.Contains(r.Error, "www.example.test: denied by policy") || !strings.Contains(r.Error, "blocked.example.test: denied by policy") {
		t.Fatalf("the new path's record: %+v", r)
	}
	waitUntil(t, 2*time.Second, func() bool { return p.udp.held.Load() == 1 }, "the new path to be held")
	h.Store(mustPolicy(t, migrateAfter)) // allows www.example.test again
	c3.inject(shortPacket('x'))
	waitUntil(t, 2*time.Second, func() bool { return p.udp.held.Load() == 0 }, "the held path to be let go")
	// Decided afresh: blocked.example.test is still denied, and deny wins
	// (r10s26 F1), so it is denied as that one.
	c4, _ := startFlow(p, port3, dst.addr(), shortPacket('y'))
	defer c4.Close()
	waitUntil(t, 2*time.Second, func() bool {
		// Parsed once a look: a record written between two parses made
		// the second longer than the first's length said (an index out of
		// range in a loaded suite).
		all := recs.parse(t)
		if len(all) == 0 || all[len(all)-1].Rule != "no-blocked" {
			return false
		}
		r = all[len(all)-1]
		return true
	}, "the next flow's record")
	if r.ClientPort != port3.Port() || r.Action != "deny" || r.SNI != "blocked.example.test" {
		t.Fatalf("the next flow's record: %+v", r)
	}
	h.Store(mustPolicy(t, migrateBefore)) // allows both
	c4.inject(shortPacket('y'))
	waitUntil(t, 2*time.Second, func() bool { return p.udp.held.Load() == 0 }, "the held path to be let go")
	c5, _ := startFlow(p, port3, dst.addr(), shortPacket('z'))
	defer c5.Close()
	waitReceived(t, dst, n+1)
	if tagged(dst, 'x', 'y') != 0 {
		t.Fatal("a datagram of the denied path reached the destination")
	}
}
