package proxy

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// startFlowOn is startFlow behind GWLB endpoint ep.
func startFlowOn(p *Proxy, ep uint64, client, dest netip.AddrPort, first ...[]byte) *fakeUDPClient {
	c := newFakeUDPClient(client, dest)
	for _, d := range first {
		c.inject(d)
	}
	go p.HandleUDP(netstack.FlowInfo{Endpoint: ep, Client: client, Dest: dest}, c)
	return c
}

// allowOnlyWWW lets QUIC reach www.example.test and nothing else.
const allowOnlyWWW = `
policy:
  default: deny
  rules:
    - name: www
      domains: ["www.example.test"]
      action: allow
`

// TestQUICMemoryPerEndpoint: the same client address behind two GWLB
// endpoints (overlapping VPC ranges) is two hosts. The memory was keyed by
// the address alone (review r12s26 F1): one host's connection a reload
// denied denied the other's plain udp, recorded under a name it never
// sent, and one's allowed connection carried the other's plain udp
// through a policy that denies it.
func TestQUICMemoryPerEndpoint(t *testing.T) {
	other := netip.AddrPortFrom(quicClient.Addr(), 50000)
	t.Run("denied-not-shared", func(t *testing.T) {
		p, h, recs := udpProxy(t, migrateBefore, func(c *Config) { c.UDPIdleTimeout = 2 * time.Second })
		dst := newUDPSink(t, false)
		flight := quicFirstFlight(t, "blocked.example.test")
		a := startFlowOn(p, 7, quicClient, dst.addr(), flight...)
		defer a.Close()
		waitReceived(t, dst, len(flight))
		h.Store(mustPolicy(t, migrateAfter))
		a.inject(shortPacket('b'))
		recordOfPort(t, recs, quicClient.Port())
		b := startFlowOn(p, 9, other, dst.addr(), wgShaped('w'))
		defer b.Close()
		waitReceived(t, dst, len(flight)+1)
		if n := tagged(dst, 'w'); n != 1 {
			t.Errorf("the other endpoint's host had %d of 1 plain datagrams delivered", n)
		}
		if r := recordOfPort(t, recs, other.Port()); r.Kind != "udp" || r.SNI != "" {
			t.Errorf("its record: kind %s sni %q, want a udp flow of no name", r.Kind, r.SNI)
		}
	})
	t.Run("allowed-not-shared", func(t *testing.T) {
		p, _, recs := udpProxy(t, allowOnlyWWW, func(c *Config) { c.UDPIdleTimeout = 2 * time.Second })
		dst := newUDPSink(t, false)
		flight := quicFirstFlight(t, "www.example.test")
		a := startFlowOn(p, 7, quicClient, dst.addr(), flight...)
		defer a.Close()
		waitReceived(t, dst, len(flight))
		b := startFlowOn(p, 9, other, dst.addr(), wgShaped('w'))
		defer b.Close()
		r := recordOfPort(t, recs, other.Port())
		time.Sleep(100 * time.Millisecond)
		if n := tagged(dst, 'w'); n != 0 || r.Action != "deny" {
			t.Errorf("the other endpoint's plain udp under default deny: %d delivered, record %s %q, want denied", n, r.Action, r.SNI)
		}
	})
}

// TestQUICDecoysDoNotEvictDenied: after a reload denied a client's QUIC
// connection, four decoy Initials of other names to the same address and
// port, relayed and ended, pushed it out of the four connections
// remembered there, and it migrated through as a decoy (review r12s26 F3,
// 5 of 5). The allowed ones go first.
func TestQUICDecoysDoNotEvictDenied(t *testing.T) {
	p, h, recs := udpProxy(t, migrateBefore, func(c *Config) { c.UDPIdleTimeout = time.Second })
	dst := newUDPSink(t, false)
	flight := quicFirstFlight(t, "blocked.example.test")
	c1, _ := startFlow(p, quicClient, dst.addr(), flight...)
	defer c1.Close()
	waitReceived(t, dst, len(flight))
	h.Store(mustPolicy(t, migrateAfter))
	c1.inject(shortPacket('b')) // the reload ends it
	recordOfPort(t, recs, quicClient.Port())
	n := len(flight)
	for i := range maxQUICEndedPerPath {
		port := netip.AddrPortFrom(quicClient.Addr(), quicClient.Port()+10+uint16(i))
		decoy := quicFirstFlight(t, "decoy"+string(rune('a'+i))+".example.test")
		cd, _ := startFlow(p, port, dst.addr(), decoy...)
		defer cd.Close()
		n += len(decoy)
		waitReceived(t, dst, n)
	}
	for i := range maxQUICEndedPerPath {
		recordOfPort(t, recs, quicClient.Port()+10+uint16(i)) // each idles out
	}
	moved := netip.AddrPortFrom(quicClient.Addr(), quicClient.Port()+3)
	cm, _ := startFlow(p, moved, dst.addr(), shortPacket('m'))
	defer cm.Close()
	for range 4 {
		cm.inject(shortPacket('m'))
	}
	r := recordOfPort(t, recs, moved.Port())
	time.Sleep(100 * time.Millisecond)
	if got := tagged(dst, 'm'); got != 0 || r.Action != "deny" || r.SNI != "blocked.example.test" {
		t.Errorf("the denied connection's new path: %d of 5 delivered, record %s sni %q, want denied as blocked.example.test", got, r.Action, r.SNI)
	}
}

// TestQUICPathBehindDecoyEndsAtReload: a connection that migrated before
// a reload, while a decoy Initial of another name to the same address and
// port was open, was followed as the decoy, and the reload that denied the
// connection decided the path on the decoy's name alone: 10 of 10 went on
// (review r12s26 F2). A reload decides every connection a path may be.
func TestQUICPathBehindDecoyEndsAtReload(t *testing.T) {
	_, h, recs, dst, moved, cm := migratedBehindDecoy(t, 3*time.Second)
	h.Store(mustPolicy(t, migrateAfter))
	for range 10 {
		cm.inject(shortPacket('n'))
	}
	r := recordOfPort(t, recs, moved.Port())
	time.Sleep(100 * time.Millisecond)
	if got := tagged(dst, 'n'); got != 0 || r.Action != "deny" || !strings.Contains(r.Error, `"blocked.example.test"`) {
		t.Errorf("after the reload denied the connection: %d of 10 delivered, record %s %q %q, want ended", got, r.Action, r.SNI, r.Error)
	}
}

// TestQUICPathEndedForAConnectionLeavesNoPhantom: a path ended at a reload
// for a connection it may be (its name cleared, since which it is nothing
// can tell) was remembered as a connection of no name, denied, which then
// denied the client's next paths there and counted one connection twice
// (review r14s26 F3). Only the connections themselves are remembered.
func TestQUICPathEndedForAConnectionLeavesNoPhantom(t *testing.T) {
	p, h, recs, dst, moved, cm := migratedBehindDecoy(t, 2*time.Second)
	h.Store(mustPolicy(t, migrateAfter))
	cm.inject(shortPacket('n'))
	if r := recordOfPort(t, recs, moved.Port()); r.Action != "deny" {
		t.Fatalf("the path was not ended at the reload: %s", r.Action)
	}
	hist, _ := p.udp.quicPaths.history(quicPathKey{endpoint: 7, client: quicClient.Addr(), dest: dst.addr()})
	for _, m := range hist.ended {
		if m.s.name == "" {
			t.Errorf("a connection of no name is remembered (%q, denied %v): the ended path itself", m.why, m.deniedBy != nil)
		}
	}
}

// migratedBehindDecoy opens a decoy QUIC connection of an allowed name,
// then one to blocked.example.test, from the same client to one
// destination, and moves the second to a new port (moved, its client cm)
// before any reload: the path is followed as the decoy.
func migratedBehindDecoy(t *testing.T, idle time.Duration) (*Proxy, *policy.Holder, *recordSink, *udpSink, netip.AddrPort, *fakeUDPClient) {
	t.Helper()
	p, h, recs := udpProxy(t, migrateBefore, func(c *Config) { c.UDPIdleTimeout = idle })
	dst := newUDPSink(t, false)
	decoy := quicFirstFlight(t, "anything-else.example.test")
	cd, _ := startFlow(p, netip.AddrPortFrom(quicClient.Addr(), quicClient.Port()+2), dst.addr(), decoy...)
	t.Cleanup(func() { cd.Close() })
	waitReceived(t, dst, len(decoy))
	flight := quicFirstFlight(t, "blocked.example.test")
	c1, _ := startFlow(p, quicClient, dst.addr(), flight...)
	t.Cleanup(func() { c1.Close() })
	waitReceived(t, dst, len(decoy)+len(flight))
	moved := netip.AddrPortFrom(quicClient.Addr(), quicClient.Port()+3)
	cm, _ := startFlow(p, moved, dst.addr(), shortPacket('m'))
	t.Cleanup(func() { cm.Close() })
	waitReceived(t, dst, len(decoy)+len(flight)+1) // followed, before any reload
	return p, h, recs, dst, moved, cm
}
