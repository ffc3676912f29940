package proxy

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// wgShaped is a WireGuard handshake initiation's shape, tagged at byte 9.
func wgShaped(tag byte) []byte {
	wg := append([]byte{0x01, 0, 0, 0}, make([]byte, 144)...)
	wg[9] = tag
	return wg
}

// TestQUICDecoyDoesNotCoverDenied: under a deny-list policy, after a
// reload denied a client's QUIC connection, one Initial of any other name
// to the same address and port (allowed by default, its server free to
// ignore it) let the denied connection migrate through, as "allowed if any
// remembered connection is allowed", whether the decoy was still open or
// had ended. A denied connection of the client's there now wins. (found
// by review r10s26 F1)
func TestQUICDecoyDoesNotCoverDenied(t *testing.T) {
	for _, live := range []bool{true, false} {
		t.Run(map[bool]string{true: "decoy open", false: "decoy ended"}[live], func(t *testing.T) {
			p, h, recs := udpProxy(t, migrateBefore, func(c *Config) { c.UDPIdleTimeout = time.Second })
			dst := newUDPSink(t, false)
			flight := quicFirstFlight(t, "blocked.example.test")
			c1, _ := startFlow(p, quicClient, dst.addr(), flight...)
			defer c1.Close()
			waitReceived(t, dst, len(flight))
			h.Store(mustPolicy(t, migrateAfter))
			c1.inject(shortPacket('b')) // ended by the reload
			if r := recordOfPort(t, recs, quicClient.Port()); r.Result != "denied" {
				t.Fatalf("the connection's record after the reload: %+v", r)
			}
			pd := netip.AddrPortFrom(quicClient.Addr(), quicClient.Port()+2)
			decoy := quicFirstFlight(t, "anything-else.example.test")
			cd, _ := startFlow(p, pd, dst.addr(), decoy...)
			defer cd.Close()
			waitReceived(t, dst, len(flight)+len(decoy))
			if !live {
				recordOfPort(t, recs, pd.Port()) // idles out
			}
			pm := netip.AddrPortFrom(quicClient.Addr(), quicClient.Port()+3)
			cm, _ := startFlow(p, pm, dst.addr(), shortPacket('m'))
			defer cm.Close()
			for range 4 {
				cm.inject(shortPacket('m'))
			}
			r := recordOfPort(t, recs, pm.Port())
			time.Sleep(200 * time.Millisecond)
			if n := tagged(dst, 'b', 'm'); n != 0 {
				t.Fatalf("%d datagrams of the denied connection reached the destination behind a decoy", n)
			}
			if r.Kind != "quic" || r.Action != "deny" || r.Rule != "no-blocked" || r.SNI != "blocked.example.test" {
				t.Fatalf("the migrated path's record: %+v", r)
			}
		})
	}
}

// TestQUICNeighbourDecidesNothing: the memory was per share (an IPv6 /80),
// and a neighbour's connections decided another address's new flows: a
// neighbour's allowed connection let a client's denied one migrate
// through, and a neighbour's denied one denied a client's plain udp under
// a name it never sent. Only the flow's own address's connections decide
// now. (found by review r10s26 F2)
func TestQUICNeighbourDecidesNothing(t *testing.T) {
	a := netip.MustParseAddrPort("[2001:db8::a]:40000")
	b := netip.MustParseAddrPort("[2001:db8::b]:40000")
	// Relayed under migrateBefore; then migrateAfter is loaded, and the
	// connection to blocked.example.test ended by it.
	for _, tc := range []struct {
		name        string
		aName       string // a's connection, relayed
		bName       string // b's connection, relayed
		aNext       []byte // a's new flow
		wantKind    string // its record
		wantAction  string
		delivered   int
		wantSNI     string
		tag         byte
		aConnection bool
	}{
		{"neighbour's allowed does not cover", "blocked.example.test", "www.example.test", shortPacket('m'), "quic", "deny", 0, "blocked.example.test", 'm', true},
		{"neighbour's denied does not deny", "", "blocked.example.test", wgShaped('m'), "udp", "allow", 1, "", 'm', false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, h, recs := udpProxy(t, migrateBefore, func(c *Config) { c.UDPIdleTimeout = 3 * time.Second })
			dst := newUDPSink(t, false)
			n := 0
			var ca *fakeUDPClient
			if tc.aConnection {
				fa := quicFirstFlight(t, tc.aName)
				ca, _ = startFlow(p, a, dst.addr(), fa...)
				defer ca.Close()
				n += len(fa)
				waitReceived(t, dst, n)
			}
			fb := quicFirstFlight(t, tc.bName)
			cb, _ := startFlow(p, b, dst.addr(), fb...)
			defer cb.Close()
			n += len(fb)
			waitReceived(t, dst, n)
			h.Store(mustPolicy(t, migrateAfter))
			if ca != nil {
				ca.inject(shortPacket('x'))
			} else {
				cb.inject(shortPacket('x'))
			}
			time.Sleep(100 * time.Millisecond)
			a2 := netip.AddrPortFrom(a.Addr(), a.Port()+1)
			c2, _ := startFlow(p, a2, dst.addr(), tc.aNext)
			defer c2.Close()
			time.Sleep(200 * time.Millisecond)
			c2.Close()
			r := recordOfPort(t, recs, a2.Port())
			if got := tagged(dst, tc.tag); got != tc.delivered {
				t.Fatalf("%d of a's datagrams delivered, want %d; record %+v", got, tc.delivered, r)
			}
			if r.ClientIP != a.Addr().String() || r.Kind != tc.wantKind || r.Action != tc.wantAction || r.SNI != tc.wantSNI {
				t.Fatalf("a's new flow's record: %+v", r)
			}
		})
	}
}

// TestQUICRefusalAtInitialRemembersNothing: a QUIC connection refused at
// its Initial reached no server, so no path of it can follow; it used to
// be remembered as a denied connection there, and the client's plain udp
// to the same address and port was denied under its name for 10 minutes
// (browsing a blocked name on a shared CDN address). It is not remembered
// now: plain udp is decided as udp, and an allowed connection's new path
// follows it. (brief of quicmig3, decision 1; r10s26 F2(b))
func TestQUICRefusalAtInitialRemembersNothing(t *testing.T) {
	p, _, recs := udpProxy(t, migrateAfter, func(c *Config) { c.UDPIdleTimeout = 3 * time.Second })
	dst := newUDPSink(t, false)
	c1, _ := startFlow(p, quicClient, dst.addr(), quicFirstFlight(t, "blocked.example.test")...)
	defer c1.Close()
	if r := recordOfPort(t, recs, quicClient.Port()); r.Action != "deny" {
		t.Fatalf("the refused connection's record: %+v", r)
	}
	pw := netip.AddrPortFrom(quicClient.Addr(), quicClient.Port()+1)
	cw, _ := startFlow(p, pw, dst.addr(), wgShaped('w'))
	defer cw.Close()
	waitReceived(t, dst, 1)
	cw.Close()
	if r := recordOfPort(t, recs, pw.Port()); r.Kind != "udp" || r.Action != "allow" || r.SNI != "" {
		t.Fatalf("the plain udp flow's record: %+v", r)
	}

	flight := quicFirstFlight(t, "www.example.test")
	pa := netip.AddrPortFrom(quicClient.Addr(), quicClient.Port()+2)
	ca, _ := startFlow(p, pa, dst.addr(), flight...)
	defer ca.Close()
	waitReceived(t, dst, 1+len(flight))
	pm := netip.AddrPortFrom(quicClient.Addr(), quicClient.Port()+3)
	cm, _ := startFlow(p, pm, dst.addr(), shortPacket('m'))
	defer cm.Close()
	waitReceived(t, dst, 2+len(flight))
	cm.Close()
	if r := recordOfPort(t, recs, pm.Port()); r.Kind != "quic" || r.Action != "splice" || r.SNI != "www.example.test" || !strings.Contains(r.Error, "new path") {
		t.Fatalf("the allowed connection's new path's record: %+v", r)
	}
}

// TestQUICDenyWinsCost: what policy.md says deny wins costs: an allowed
// connection of the same client address to the same address and port
// that migrates after a reload denied another of its connections there is
// denied too, as the denied one; it reconnects with a new Initial, which
// is decided on its own name and let through.
func TestQUICDenyWinsCost(t *testing.T) {
	p, h, recs := udpProxy(t, migrateBefore, func(c *Config) { c.UDPIdleTimeout = 3 * time.Second })
	dst := newUDPSink(t, false)
	n := 0
	var conns []*fakeUDPClient
	for i, name := range []string{"www.example.test", "blocked.example.test"} {
		flight := quicFirstFlight(t, name)
		c, _ := startFlow(p, netip.AddrPortFrom(quicClient.Addr(), quicClient.Port()+uint16(i)), dst.addr(), flight...)
		defer c.Close()
		conns = append(conns, c)
		n += len(flight)
		waitReceived(t, dst, n)
	}
	h.Store(mustPolicy(t, migrateAfter))
	conns[1].inject(shortPacket('b')) // ended by the reload
	if r := recordOfPort(t, recs, quicClient.Port()+1); r.Result != "denied" {
		t.Fatalf("the denied connection's record: %+v", r)
	}
	pm := netip.AddrPortFrom(quicClient.Addr(), quicClient.Port()+2)
	cm, _ := startFlow(p, pm, dst.addr(), shortPacket('w')) // www's migration
	defer cm.Close()
	if r := recordOfPort(t, recs, pm.Port()); r.Action != "deny" || r.SNI != "blocked.example.test" {
		t.Fatalf("the allowed connection's migration: %+v", r)
	}
	pn := netip.AddrPortFrom(quicClient.Addr(), quicClient.Port()+3)
	flight := quicFirstFlight(t, "www.example.test")
	cn, _ := startFlow(p, pn, dst.addr(), flight...)
	defer cn.Close()
	waitReceived(t, dst, n+len(flight))
	if tagged(dst, 'b', 'w') != 0 {
		t.Fatal("a datagram of a denied path reached the destination")
	}
}
