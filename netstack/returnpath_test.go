package netstack

import (
	"bytes"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testenv"
)

// A GWLB source port that another socket holds is served from the
// listener's socket, and bound once it is free again after the retry wait.
func TestBoundReturnRetriesAFailedBind(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	listen := func() *net.UDPConn {
		c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(lo, 0)))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	listener, gwlb, holder := listen(), listen(), listen()
	defer listener.Close()
	defer gwlb.Close()
	port := holder.LocalAddr().(*net.UDPAddr).AddrPort().Port() // the flow's GWLB source port, taken
	var fallbacks atomic.Uint64
	r := newBoundReturn(lo, listener, gwlb.LocalAddr().(*net.UDPAddr).AddrPort().Port(), &fallbacks)
	r.retryWait = time.Hour // over only when the test says so, below
	defer r.close()

	sentFrom := func() uint16 {
		t.Helper()
		pkt := make([]byte, outerHeadroom+8)
		if err := r.send(pkt, netip.AddrPortFrom(lo, port)); err != nil {
			t.Fatal(err)
		}
		gwlb.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, from, err := gwlb.ReadFromUDPAddrPort(make([]byte, 64))
		if err != nil {
			t.Fatal(err)
		}
		return from.Port()
	}
	listenPort := listener.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	if p := sentFrom(); p != listenPort || fallbacks.Load() != 1 {
		t.Fatalf("port held: sent from %d (listener %d), %d fallbacks", p, listenPort, fallbacks.Load())
	}
	holder.Close()
	if p := sentFrom(); p != listenPort || fallbacks.Load() != 1 {
		t.Fatalf("within the retry wait: sent from %d, %d fallbacks; want the listener, no new bind attempt", p, fallbacks.Load())
	}
	// The retry wait ends, without a sleep a slow machine could outlast or
	// overshoot.
	r.mu.Lock()
	r.failed[port] = time.Now()
	r.mu.Unlock()
	if p := sentFrom(); p != port {
		t.Fatalf("after the retry wait: sent from %d, want the flow's port %d", p, port)
	}
}

// batchCase is a reply batch for the return path tests: runs to two GWLB
// source ports, sizes that make GSO runs (equal sizes, a shorter last one)
// and breaks (a longer datagram), each datagram's bytes its own.
func batchCase(ports [2]uint16, lo netip.Addr) (*replyBatch, [][]byte) {
	b := getReplyBatch()
	var want [][]byte
	sizes := []int{1400, 1400, 1400, 900, 1400, 8400, 8400, 8400, 8400, 8400, 8400, 8400, 8400, 100, 3000, 60}
	for i, size := range sizes {
		buf := b.buf()
		pkt := buf[:outerHeadroom+size]
		for j := range pkt[outerHeadroom:] {
			pkt[outerHeadroom+j] = byte(i*7 + j)
		}
		port := ports[0]
		if i >= 10 {
			port = ports[1]
		}
		b.add(pkt, netip.AddrPortFrom(lo, port))
		want = append(want, bytes.Clone(pkt[outerHeadroom:]))
	}
	return b, want
}

// readBatch reads n datagrams from c and checks them against want, in
// order, and that each left from the GWLB source port it was sent for.
func readBatch(t *testing.T, c *net.UDPConn, want [][]byte, ports [2]uint16) {
	t.Helper()
	buf := make([]byte, 65536)
	for i, w := range want {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("datagram %d of %d: %v", i, len(want), err)
		}
		if !bytes.Equal(buf[:n], w) {
			t.Fatalf("datagram %d: %d bytes, want %d (%x…, want %x…)", i, n, len(w), buf[:min(n, 8)], w[:min(len(w), 8)])
		}
		wantPort := ports[0]
		if i >= 10 {
			wantPort = ports[1]
		}
		if from.Port() != wantPort {
			t.Fatalf("datagram %d from port %d, want %d", i, from.Port(), wantPort)
		}
	}
}

// A reply batch on the bound return path leaves whole and in order, each
// datagram from its flow's GWLB source port, whether in a UDP GSO send or
// a sendmmsg.
func TestBoundReturnBatch(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	listen := func() *net.UDPConn {
		c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(lo, 0)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	listener, other, gwlb := listen(), listen(), listen()
	ports := [2]uint16{listener.LocalAddr().(*net.UDPAddr).AddrPort().Port(), other.LocalAddr().(*net.UDPAddr).AddrPort().Port()}
	other.Close() // its port is free again, for the return path to bind
	var fallbacks atomic.Uint64
	for _, gso := range []bool{true, false} {
		r := newBoundReturn(lo, listener, gwlb.LocalAddr().(*net.UDPAddr).AddrPort().Port(), &fallbacks)
		if !gso {
			r.fallback.noGSO.Store(true)
			r.socket(ports[1]).noGSO.Store(true)
		}
		b, want := batchCase(ports, lo)
		failed, err := r.sendBatch(b)
		if failed != 0 || err != nil || b.failedBytes != 0 {
			t.Fatalf("gso %v: %d failed (%d bytes): %v", gso, failed, b.failedBytes, err)
		}
		b.release()
		readBatch(t, gwlb, want, ports)
		if gso && r.fallback.noGSO.Load() {
			t.Errorf("UDP GSO failed on loopback and was turned off")
		}
		r.close()
	}
	if fallbacks.Load() != 0 {
		t.Fatalf("%d fallbacks: port %d could not be bound", fallbacks.Load(), ports[1])
	}
}

// gsoRun cuts runs where one UDP GSO send must end.
func TestGSORun(t *testing.T) {
	b := &replyBatch{}
	for _, size := range []int{1000, 1000, 1000, 500, 1000, 2000, 2000, 10} {
		b.add(make([]byte, outerHeadroom+size), netip.AddrPort{})
	}
	for _, c := range []struct {
		from, to, end int
		gso           bool
	}{
		{0, 8, 4, true},  // three equal, then a shorter one ends it
		{4, 8, 5, false}, // a longer one follows: nothing to gain
		{5, 8, 8, true},
		{7, 8, 8, false},
		{0, 2, 2, true},
	} {
		end, gso := gsoRun(b, c.from, c.to)
		if end != c.end || gso != c.gso {
			t.Errorf("gsoRun(%d, %d) = %d, %v; want %d, %v", c.from, c.to, end, gso, c.end, c.gso)
		}
	}
	// At most 64 KiB in one send.
	b = &replyBatch{}
	for range 20 {
		b.add(make([]byte, outerHeadroom+8400), netip.AddrPort{})
	}
	if end, _ := gsoRun(b, 0, 20); end != 7 {
		t.Errorf("jumbo datagrams: a GSO send of %d, want 7 (7×8,400 ≤ %d)", end, maxGSOBytes)
	}
}

// newRawReturnRig opens a raw return path on 127.0.0.1 replying to a UDP
// socket there, the GWLB's, both closed when the test ends; without
// CAP_NET_RAW the test is skipped (r is nil) unless it must run as root.
func newRawReturnRig(t *testing.T) (r *rawReturn, gwlb *net.UDPConn, lo netip.Addr) {
	t.Helper()
	lo = netip.MustParseAddr("127.0.0.1")
	r, err := newRawReturn(lo, 0)
	if err != nil {
		testenv.RequireRoot(t, "the raw return path needs CAP_NET_RAW: "+err.Error())
		return nil, nil, lo
	}
	t.Cleanup(func() { r.close() })
	gwlb, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(lo, 0)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gwlb.Close() })
	r.replyPort = gwlb.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	return r, gwlb, lo
}

// A reply batch on the raw return path leaves whole and in order in one
// sendmmsg, each datagram with its outer header: from the flow's GWLB source
// port, with a UDP checksum the receiving kernel accepts.
func TestRawReturnBatch(t *testing.T) {
	r, gwlb, lo := newRawReturnRig(t)
	if r == nil {
		return
	}
	ports := [2]uint16{40001, 40002} // no socket needed: the raw path writes any source port
	b, want := batchCase(ports, lo)
	if failed, err := r.sendBatch(b); failed != 0 || err != nil {
		t.Fatalf("%d failed: %v", failed, err)
	}
	b.release()
	readBatch(t, gwlb, want, ports)
}
