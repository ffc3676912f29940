package netstack

import (
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
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
