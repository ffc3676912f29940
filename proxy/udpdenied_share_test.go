package proxy

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// lightDeniedConn is a client end for HandleUDP that costs little (the
// fake client's buffers are MiBs): its first datagram queued, then idle
// until end, which closes it and announces that, as the stack does when
// the flow's endpoint goes.
type lightDeniedConn struct {
	mu       sync.Mutex
	first    []byte
	notify   func()
	closed   bool
	src, dst netip.AddrPort
}

func (c *lightDeniedConn) Read(b []byte) (int, error) { return c.TryRead(b) }

func (c *lightDeniedConn) TryRead(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.closed:
		return 0, net.ErrClosed
	case c.first != nil:
		n := copy(b, c.first)
		c.first = nil
		return n, nil
	}
	return 0, netstack.ErrWouldBlock
}

func (c *lightDeniedConn) OnReadable(fn func())        { c.mu.Lock(); c.notify = fn; c.mu.Unlock() }
func (c *lightDeniedConn) Write(b []byte) (int, error) { return len(b), nil }
func (c *lightDeniedConn) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	return nil
}

func (c *lightDeniedConn) end() {
	c.mu.Lock()
	c.closed = true
	fn := c.notify
	c.mu.Unlock()
	if fn != nil {
		fn()
	}
}

func (c *lightDeniedConn) isClosed() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.closed }

func (c *lightDeniedConn) LocalAddr() net.Addr              { return net.UDPAddrFromAddrPort(c.dst) }
func (c *lightDeniedConn) RemoteAddr() net.Addr             { return net.UDPAddrFromAddrPort(c.src) }
func (c *lightDeniedConn) SetDeadline(time.Time) error      { return nil }
func (c *lightDeniedConn) SetReadDeadline(time.Time) error  { return nil }
func (c *lightDeniedConn) SetWriteDeadline(time.Time) error { return nil }

// TestUDPDeniedHeldClientShare: a client opening as many denied flows as
// the whole hold takes (fresh source ports, one datagram each) has only
// its share held, the rest closed and counted; another client's denied
// flow is then still held, one record however many datagrams it sends.
// Without the share the first client filled the hold, and each of the
// other's datagrams was decided, and recorded, again.
func TestUDPDeniedHeldClientShare(t *testing.T) {
	p, _, recs := udpProxy(t, "policy: {default: deny}\n", func(cfg *Config) { cfg.UDPIdleTimeout = time.Minute })
	dest := netip.MustParseAddrPort("127.0.0.1:9")
	flooder := netip.MustParseAddr("198.18.0.66")
	conns := make([]*lightDeniedConn, 0, maxDeniedUDP)
	t.Cleanup(func() {
		for _, c := range conns {
			c.end()
		}
		waitUntil(t, 10*time.Second, func() bool { return p.udp.held.Load() == 0 }, "the held denied flows to be let go")
		p.udp.heldShares.mu.Lock()
		left := len(p.udp.heldShares.m)
		p.udp.heldShares.mu.Unlock()
		if left != 0 {
			t.Errorf("%d clients still counted in the hold's shares once every held flow was let go", left)
		}
	})
	for i := range maxDeniedUDP {
		src := netip.AddrPortFrom(flooder, uint16(1024+i))
		c := &lightDeniedConn{first: []byte("x"), src: src, dst: dest}
		conns = append(conns, c)
		p.HandleUDP(netstack.FlowInfo{Endpoint: 7, Client: src, Dest: dest}, c)
	}
	if n := p.udp.held.Load(); n != maxDeniedUDPPerClient {
		t.Errorf("one client's %d denied flows: %d held, want its share, %d", maxDeniedUDP, n, maxDeniedUDPPerClient)
	}
	if conns[maxDeniedUDPPerClient-1].isClosed() || !conns[maxDeniedUDPPerClient].isClosed() {
		t.Errorf("the flows within the client's share are to be held, the next closed: last within closed %v, first past closed %v",
			conns[maxDeniedUDPPerClient-1].isClosed(), conns[maxDeniedUDPPerClient].isClosed())
	}
	if got, want := p.Stats().UDPDeniedUnheld, uint64(maxDeniedUDP-maxDeniedUDPPerClient); got != want {
		t.Errorf("udp_denied_unheld %d, want %d", got, want)
	}

	// The other client's denied flow: its first datagram and 4 more.
	checkDeniedHeld(t, p, recs, netip.MustParseAddrPort("198.18.0.5:5555"), dest, maxDeniedUDPPerClient+1, "one client's flood")
}

// TestUDPDeniedHeldIPv4PrefixLeavesRoom: the 16 addresses of one delegated
// IPv4 /28, each a client of its own, each opening a 16th of the hold's
// worth of denied flows, hold only their shares, a quarter of the hold;
// another client's denied flow is then still held, one record however
// many datagrams it sends. With a 16th of the hold as the share, one
// instance's /28 filled it.
func TestUDPDeniedHeldIPv4PrefixLeavesRoom(t *testing.T) {
	p, _, recs := udpProxy(t, "policy: {default: deny}\n", func(cfg *Config) { cfg.UDPIdleTimeout = time.Minute })
	dest := netip.MustParseAddrPort("127.0.0.1:9")
	const addrs, each = 16, maxDeniedUDP / 16
	conns := make([]*lightDeniedConn, 0, addrs*each)
	t.Cleanup(func() {
		for _, c := range conns {
			c.end()
		}
		waitUntil(t, 10*time.Second, func() bool { return p.udp.held.Load() == 0 }, "the held denied flows to be let go")
	})
	for a := range addrs {
		addr := netip.AddrFrom4([4]byte{198, 18, 0, byte(16 + a)}) // 198.18.0.16/28
		for i := range each {
			src := netip.AddrPortFrom(addr, uint16(1024+i))
			c := &lightDeniedConn{first: []byte("x"), src: src, dst: dest}
			conns = append(conns, c)
			p.HandleUDP(netstack.FlowInfo{Endpoint: 7, Client: src, Dest: dest}, c)
		}
	}
	if n, want := p.udp.held.Load(), int64(addrs*maxDeniedUDPPerClient); n != want {
		t.Errorf("a /28's denied flows: %d held, want its %d addresses' shares, %d", n, addrs, want)
	}
	if n := p.udp.held.Load(); n >= maxDeniedUDP {
		t.Fatalf("one /28 filled the hold: %d of %d held", n, maxDeniedUDP)
	}

	checkDeniedHeld(t, p, recs, netip.MustParseAddrPort("198.18.1.5:5555"), dest, int64(addrs*maxDeniedUDPPerClient+1), "one /28's flood")
}

// checkDeniedHeld has victim, a client of its own, send a denied flow's
// first datagram and 4 more to dest after another's flood (what), and
// fails t unless the flow is held (held places taken in all then) and
// recorded once.
func checkDeniedHeld(t *testing.T, p *Proxy, recs *recordSink, victim, dest netip.AddrPort, held int64, what string) {
	t.Helper()
	before := len(recs.records(t, 0))
	c, done := startFlow(p, victim, dest, []byte("x"))
	<-done
	for range 4 {
		c.inject([]byte("x"))
	}
	t.Cleanup(func() { c.Close() })
	waitUntil(t, 5*time.Second, func() bool { return p.udp.held.Load() == held }, "the other client's denied flow to be held")
	if c.isClosed() {
		t.Errorf("another client's denied flow was closed, not held, after %s", what)
	}
	var mine int
	for _, r := range recs.records(t, before+1)[before:] {
		if r.ClientIP == victim.Addr().String() {
			mine++
		}
	}
	if mine != 1 {
		t.Errorf("another client's denied flow of 5 datagrams got %d records, want 1", mine)
	}
}
