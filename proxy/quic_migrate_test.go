package proxy

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// Policies of a deny-list appliance before and after an operator denies
// blocked.example.test by reload.
const (
	migrateBefore = `
policy:
  default: allow
  rules:
    - name: no-other
      domains: ["other.example.test"]
      action: deny
`
	migrateAfter = `
policy:
  default: allow
  rules:
    - name: no-blocked
      domains: ["blocked.example.test"]
      action: deny
`
)

// shortPacket is a 1-RTT packet of an established connection, as far as
// the appliance can see: a short header, the fixed bit set, and a tag
// byte after it to tell them apart at the destination.
func shortPacket(tag byte) []byte {
	return append([]byte{0x40, 1, 2, 3, 4, 5, 6, 7, 8, tag}, bytes.Repeat([]byte{tag}, 40)...)
}

// tagged counts the destination's datagrams that carry one of tags: of
// shortPacket's or wgShaped's shape alone, since a QUIC Initial's random
// bytes hold a tag at byte 9 once in 256 (two full -race runs counted
// one).
func tagged(dst *udpSink, tags ...byte) int {
	n := 0
	for _, d := range dst.received() {
		shaped := len(d) > 9 && (bytes.Equal(d[1:9], []byte{1, 2, 3, 4, 5, 6, 7, 8}) || bytes.Equal(d[:4], []byte{1, 0, 0, 0}))
		if shaped && bytes.IndexByte(tags, d[9]) >= 0 {
			n++
		}
	}
	return n
}

// recordOfPort waits for the record of the flow from client port port.
func recordOfPort(t *testing.T, recs *recordSink, port uint16) records.Record {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, r := range recs.parse(t) {
			if r.ClientPort == port {
				return r
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no record of client port %d in %+v", port, recs.parse(t))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestQUICMigrationAfterReloadDenied: a QUIC connection to a name a reload
// denies must not carry on by moving to a new client port (RFC 9000 §9):
// the new flow's short-header packets used to start a flow decided as udp,
// on no name, which the deny-list policy let through. The new flow now
// follows the connection's decision. Also when the client sends something
// other than a QUIC packet first, which a server ignores. (found by review
// r1bypass F5)
func TestQUICMigrationAfterReloadDenied(t *testing.T) {
	for _, tc := range []struct {
		name  string
		first []byte
	}{
		{"short header", shortPacket('c')},
		{"junk first", []byte{0xff, 0, 0, 0, 9}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, h, recs := udpProxy(t, migrateBefore, func(c *Config) { c.UDPIdleTimeout = 3 * time.Second })
			dst := newUDPSink(t, false)
			flight := quicFirstFlight(t, "blocked.example.test")
			c1, _ := startFlow(p, quicClient, dst.addr(), flight...)
			defer c1.Close()
			waitReceived(t, dst, len(flight))
			c1.inject(shortPacket('a'))
			waitReceived(t, dst, len(flight)+1)

			h.Store(mustPolicy(t, migrateAfter))
			// The client migrates at once, its old path silent: the old
			// flow has not been decided again yet.
			migrated := netip.AddrPortFrom(quicClient.Addr(), quicClient.Port()+1)
			c2, _ := startFlow(p, migrated, dst.addr(), tc.first)
			defer c2.Close()
			r := recordOfPort(t, recs, migrated.Port())
			c2.inject(shortPacket('d'))
			c1.inject(shortPacket('b'))
			time.Sleep(200 * time.Millisecond)
			if n := tagged(dst, 'b', 'c', 'd'); n != 0 {
				t.Fatalf("%d datagrams of the denied connection reached the destination after the reload", n)
			}
			if r.Kind != "quic" || r.Action != "deny" || r.Rule != "no-blocked" || r.SNI != "blocked.example.test" || r.Result != "denied" {
				t.Fatalf("the new path's record: %+v", r)
			}
			if p.udp.quicPaths.len() != 1 {
				t.Fatalf("%d paths remembered, want 1", p.udp.quicPaths.len())
			}
		})
	}
}

// TestQUICMigrationAllowed: a client's QUIC connection that the policy
// allows goes on from a new port, the new flow recorded as quic with the
// connection's name, and decided on it at the next reload; a flow from a
// client with no QUIC flow there is decided as udp, as before.
func TestQUICMigrationAllowed(t *testing.T) {
	p, h, recs := udpProxy(t, migrateBefore, func(c *Config) { c.UDPIdleTimeout = 3 * time.Second })
	dst := newUDPSink(t, false)
	flight := quicFirstFlight(t, "blocked.example.test")
	c1, _ := startFlow(p, quicClient, dst.addr(), flight...)
	defer c1.Close()
	waitReceived(t, dst, len(flight))

	port2 := netip.AddrPortFrom(quicClient.Addr(), quicClient.Port()+1)
	c2, _ := startFlow(p, port2, dst.addr(), shortPacket('c'))
	defer c2.Close()
	waitReceived(t, dst, len(flight)+1)

	other := netip.MustParseAddrPort("198.18.0.6:40000")
	c3, _ := startFlow(p, other, dst.addr(), shortPacket('o'))
	defer c3.Close()
	waitReceived(t, dst, len(flight)+2)

	h.Store(mustPolicy(t, migrateAfter))
	c2.inject(shortPacket('d')) // the new path is decided again on its name
	c3.inject(shortPacket('p')) // the other client's udp flow goes on
	time.Sleep(200 * time.Millisecond)
	if n := tagged(dst, 'd'); n != 0 {
		t.Fatal("the new path went on after a reload denied its connection's name")
	}
	if n := tagged(dst, 'p'); n != 1 {
		t.Fatal("a udp flow of another client was stopped")
	}
	r2 := recordOfPort(t, recs, port2.Port())
	if r2.Kind != "quic" || r2.SNI != "blocked.example.test" || r2.Action != "deny" || r2.Rule != "no-blocked" || r2.BytesOut == 0 {
		t.Fatalf("the new path's record: %+v", r2)
	}
	c3.Close()
	r3 := recordOfPort(t, recs, other.Port())
	if r3.Kind != "udp" || r3.Action != "allow" || r3.SNI != "" {
		t.Fatalf("the other client's record: %+v", r3)
	}
}

// TestQUICPathsBounded: the memory of ended QUIC flows keeps a client to
// its share, forgetting its own oldest, and forgets what is older than
// quicPathMemory. A denial of a connection not remembered (one refused at
// its Initial) remembers nothing.
func TestQUICPathsBounded(t *testing.T) {
	p, _, _ := udpProxy(t, migrateAfter, nil)
	q := &p.udp.quicPaths
	flow := func(client string, port uint16) *udpFlow {
		f := &udpFlow{p: p, rec: &records.Record{Kind: "quic", SNI: "blocked.example.test"}}
		f.info.Client = netip.MustParseAddrPort(client + ":1000")
		f.info.Dest = netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), port)
		return f
	}
	ended := func(f *udpFlow) {
		q.opened(f)
		q.closed(f)
	}
	pol := p.cfg.Policy.Load()
	f := flow("198.18.0.9", 1)
	q.denied(f.quicPathKey(), f.subject(), pol, "denied by policy", "no-blocked", nil)
	if n := q.len(); n != 0 {
		t.Fatalf("%d remembered of a connection refused at its Initial", n)
	}
	for i := range maxQUICPathsPerClient + 10 {
		ended(flow("198.18.0.5", uint16(1+i)))
	}
	ended(flow("198.18.0.6", 1))
	if n := q.len(); n != maxQUICPathsPerClient+1 {
		t.Fatalf("%d remembered, want %d", n, maxQUICPathsPerClient+1)
	}
	if _, ok := q.history(flow("198.18.0.5", 1).quicPathKey()); ok {
		t.Fatal("a client's oldest was kept past its share")
	}
	if _, ok := q.history(flow("198.18.0.6", 1).quicPathKey()); !ok {
		t.Fatal("another client's was forgotten")
	}
	q.mu.Lock()
	q.memory = time.Millisecond
	q.mu.Unlock()
	time.Sleep(5 * time.Millisecond)
	if _, ok := q.history(flow("198.18.0.6", 1).quicPathKey()); ok {
		t.Fatal("remembered past quicPathMemory")
	}
	ended(flow("198.18.0.7", 1))
	if n := q.len(); n != 1 {
		t.Fatalf("%d remembered after they expired, want 1", n)
	}
}

// TestQUICMigrationUnreadAfterReload: a QUIC connection that a udp flow
// carried unread, under a policy that looked at no names, is denied by a
// reload to one that does (TestUDPFlowGuardsInitialsAfterReload's
// quicUnread); moving to a new client port must not carry it on either.
func TestQUICMigrationUnreadAfterReload(t *testing.T) {
	p, h, recs := udpProxy(t, "policy:\n  default: allow\n", func(c *Config) { c.UDPIdleTimeout = 3 * time.Second })
	dst := newUDPSink(t, false)
	flight := quicFirstFlight(t, "blocked.example.test")
	c1, _ := startFlow(p, quicClient, dst.addr(), []byte("junk"))
	defer c1.Close()
	waitReceived(t, dst, 1)
	for _, d := range flight {
		c1.inject(d)
	}
	waitReceived(t, dst, 1+len(flight))

	h.Store(mustPolicy(t, migrateAfter))
	migrated := netip.AddrPortFrom(quicClient.Addr(), quicClient.Port()+1)
	c2, _ := startFlow(p, migrated, dst.addr(), shortPacket('c'))
	defer c2.Close()
	r := recordOfPort(t, recs, migrated.Port())
	time.Sleep(100 * time.Millisecond)
	if n := tagged(dst, 'c'); n != 0 {
		t.Fatal("the unread connection went on from a new port after the reload")
	}
	if r.Kind != "quic" || r.Action != "deny" || r.SNI != "" || !strings.Contains(r.Error, "ClientHello was not read") {
		t.Fatalf("the new path's record: %+v", r)
	}
}
