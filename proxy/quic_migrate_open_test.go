package proxy

import (
	"net/netip"
	"testing"
	"time"
)

// TestQUICPathOpenedTwice: a flow let through as a new path of a QUIC
// connection is live in the memory once it relays; a reload to a policy
// that looks at no names clears its guard on Initials, and its next
// Initial notes it as carrying a connection unread, which opened it again.
// Closed once, it left a live entry behind that never expired (in no
// list, past every bound), and that denied the client's later paths
// there, as unread, for ever. A flow is now live once. (found by review r6s26 F4)
func TestQUICPathOpenedTwice(t *testing.T) {
	const noNames = "policy:\n  default: allow\n"
	p, h, recs := udpProxy(t, migrateBefore, func(c *Config) { c.UDPIdleTimeout = time.Second })
	dst := newUDPSink(t, false)
	flight := quicFirstFlight(t, "www.example.test")
	c1, _ := startFlow(p, quicClient, dst.addr(), flight...)
	defer c1.Close()
	waitReceived(t, dst, len(flight))
	port2 := netip.AddrPortFrom(quicClient.Addr(), quicClient.Port()+1)
	c2, _ := startFlow(p, port2, dst.addr(), shortPacket('m'))
	defer c2.Close()
	waitReceived(t, dst, len(flight)+1)
	h.Store(mustPolicy(t, noNames))
	c2.inject(quicFirstFlight(t, "another.example.test")[0])
	waitReceived(t, dst, len(flight)+2)
	key := quicPathKey{endpoint: 7, client: quicClient.Addr(), dest: dst.addr()}
	live := func() int {
		q := &p.udp.quicPaths
		q.mu.Lock()
		defer q.mu.Unlock()
		if e := q.m[key]; e != nil {
			return len(e.live)
		}
		return 0
	}
	if n := live(); n != 2 {
		t.Fatalf("%d live entries for 2 flows", n)
	}
	recordOfPort(t, recs, quicClient.Port()) // both idle out
	recordOfPort(t, recs, port2.Port())
	deadline := time.Now().Add(2 * time.Second)
	for live() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := live(); n != 0 {
		t.Fatalf("%d live entries left after both flows ended", n)
	}
	q := &p.udp.quicPaths
	q.mu.Lock()
	q.memory = time.Millisecond
	q.mu.Unlock()
	time.Sleep(5 * time.Millisecond)
	if _, ok := q.history(key); ok || q.len() != 0 {
		t.Fatalf("still remembered past the memory: %d", q.len())
	}
}
