package proxy

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// udpEchoServer answers every datagram with itself, without allocating.
func udpEchoServer(tb testing.TB) netip.AddrPort {
	tb.Helper()
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// BenchmarkUDPRelay is one datagram's round trip through HandleUDP: client
// to host socket, a loopback echo server, and back to the client. The
// client is a fake that allocates nothing, so allocs/op is the relay's own
// (and the kernel socket calls'): none in steady state.
func BenchmarkUDPRelay(b *testing.B) {
	srv := udpEchoServer(b)
	p := New(Config{AllowLoopback: true, UDPIdleTimeout: time.Minute})
	c := newFakeUDPClient(netip.MustParseAddrPort("198.18.0.5:40000"), srv)
	done := make(chan struct{})
	go func() {
		p.HandleUDP(netstack.FlowInfo{Client: c.client, Dest: srv}, c)
		close(done)
	}()
	msg := make([]byte, 64)
	timeout := time.NewTimer(time.Hour) // reset, not allocated, per round trip
	roundTrip := func() {
		c.inject(msg)
		timeout.Reset(5 * time.Second)
		select {
		case <-c.out:
		case <-timeout.C:
			b.Fatal("no echo")
		}
	}
	for range 100 { // warm up: the flow is open, the pools are filled
		roundTrip()
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	b.ResetTimer()
	for range b.N {
		roundTrip()
	}
	b.StopTimer()
	c.Close()
	<-done
}
