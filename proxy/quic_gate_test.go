package proxy

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// TestQUICGateFirstDatagramBounded: the gate's byte bound applies to the
// first datagram too. A client's Initials padded past quicGateBytes (IP
// fragments are reassembled, so a datagram may reach 64 KB) are not read:
// the ClientHello is unreadable, refused under a policy with names.
func TestQUICGateFirstDatagramBounded(t *testing.T) {
	flight := quicFirstFlight(t, "www.example.test")
	p, _, recs := udpProxy(t, quicPolicy, nil)
	dst := newUDPSink(t, false)
	// The whole flight coalesced in one datagram, so that it alone
	// completes the ClientHello, then zero bytes: padding after the
	// packets.
	big := append(bytes.Join(flight, nil), make([]byte, quicGateBytes)...)
	startFlow(p, quicClient, dst.addr(), big)
	got := recs.records(t, 1)[0]
	if got.Kind != "quic" || got.Action != "deny" || got.Rule != "" || !strings.Contains(got.Error, "bytes") {
		t.Errorf("record kind %s action %s rule %q error %q; want the flow refused for its size", got.Kind, got.Action, got.Rule, got.Error)
	}
	time.Sleep(100 * time.Millisecond)
	if n := len(dst.received()); n != 0 {
		t.Errorf("the destination received %d datagrams", n)
	}
}

// TestQUICGateBoundsLaterDatagrams: the gate's byte bound covers the
// datagrams after the first too. A client that sends its first Initial,
// then large datagrams that do not complete the ClientHello, is refused
// once it has sent quicGateBytes, not held up to the Assembler's own
// limits (16 datagrams, 64 KiB of CRYPTO data) or the gate's wait: one
// client may hold --max-udp-flows-per-client flows at the gate.
func TestQUICGateBoundsLaterDatagrams(t *testing.T) {
	flight := quicFirstFlight(t, "www.example.test")
	if len(flight) < 2 {
		t.Skip("quic-go's ClientHello fits one datagram here: the gate reads no second one")
	}
	p, _, recs := udpProxy(t, quicPolicy, nil)
	dst := newUDPSink(t, false)
	// Retransmissions of the first Initial, padded with zeros after the
	// packet: the Assembler takes them without complaint, and the
	// ClientHello stays incomplete. Two of them take the flow over the
	// bound; left to the Assembler, it would wait out quicGateWait.
	big := append(append([]byte(nil), flight[0]...), make([]byte, quicGateBytes/2)...)
	startFlow(p, quicClient, dst.addr(), flight[0], big, big)
	got := recs.records(t, 1)
	want := fmt.Sprintf("no complete ClientHello in %d bytes", quicGateBytes)
	if len(got) != 1 || got[0].Kind != "quic" || got[0].Action != "deny" || !strings.Contains(got[0].Error, want) {
		t.Fatalf("records %+v, want a deny at the gate's byte bound: %s", got, want)
	}
	time.Sleep(100 * time.Millisecond) // a datagram relayed would have arrived
	if n := len(dst.received()); n != 0 {
		t.Fatalf("the destination received %d datagrams", n)
	}
}

// TestQUICGateHoldsNoBufferWhileWaiting: a flow waiting at the gate for the
// rest of its ClientHello holds what it was sent, not a 64 KiB read buffer:
// one client may hold --max-udp-flows-per-client flows at the gate.
func TestQUICGateHoldsNoBufferWhileWaiting(t *testing.T) {
	defer func(w time.Duration) { quicGateWait = w }(quicGateWait)
	quicGateWait = 10 * time.Second
	flight := quicFirstFlight(t, "www.example.test")
	if len(flight) < 2 {
		t.Skip("quic-go's ClientHello fits one datagram here: nothing to hold back")
	}
	p, _, _ := udpProxy(t, quicPolicy, func(c *Config) { c.UDPIdleTimeout = 20 * time.Second })
	dst := newUDPSink(t, false)
	const flows = 200
	clients := make([]*fakeUDPClient, flows)
	for i := range clients {
		c := newFakeUDPClient(netip.AddrPortFrom(quicClient.Addr(), uint16(20000+i)), dst.addr())
		c.outBufs = nil // 4 MiB for datagrams to the client, which a gated flow never writes
		c.inject(flight[0])
		clients[i] = c
	}
	runtime.GC()
	runtime.GC() // and the pool's victim cache
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for _, c := range clients {
		go p.HandleUDP(netstack.FlowInfo{Endpoint: 7, Client: c.client, Dest: c.dest}, c)
	}
	time.Sleep(500 * time.Millisecond) // every flow at the gate, waiting for its second datagram
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := (int64(after.HeapAlloc) - int64(before.HeapAlloc)) / flows
	for _, c := range clients {
		c.Close()
	}
	t.Logf("heap per gated flow: %d bytes (first datagram %d)", per, len(flight[0]))
	if per > 16<<10 {
		t.Errorf("a flow waiting at the gate holds %d bytes of heap, want under 16 KiB", per)
	}
}

// TestQUICGateWaitsForTheRest: the gate waits for the rest of a ClientHello
// that arrives later, with a client that announces its datagrams and with
// one that can only be read, then relays the held datagrams in order.
func TestQUICGateWaitsForTheRest(t *testing.T) {
	flight := quicFirstFlight(t, "www.example.test")
	if len(flight) < 2 {
		t.Skip("quic-go's ClientHello fits one datagram here: nothing to hold back")
	}
	for _, blocking := range []bool{false, true} {
		t.Run(map[bool]string{false: "readiness", true: "blocking"}[blocking], func(t *testing.T) {
			p, _, recs := udpProxy(t, quicPolicy, nil)
			dst := newUDPSink(t, false)
			c := newFakeUDPClient(quicClient, dst.addr())
			c.inject(flight[0])
			var conn net.Conn = c
			if blocking {
				conn = blockingOnly{c}
			}
			go p.HandleUDP(netstack.FlowInfo{Endpoint: 7, Client: quicClient, Dest: dst.addr()}, conn)
			time.Sleep(200 * time.Millisecond) // the gate waits
			if n := len(dst.received()); n != 0 {
				t.Fatalf("the destination received %d datagrams before the ClientHello was complete", n)
			}
			for _, d := range flight[1:] {
				c.inject(d)
			}
			waitReceived(t, dst, len(flight))
			for i, d := range dst.received() {
				if !bytes.Equal(d, flight[i]) {
					t.Fatalf("datagram %d out of order", i)
				}
			}
			c.Close()
			if r := recs.records(t, 1)[0]; r.Kind != "quic" || r.SNI != "www.example.test" || r.Action != "splice" {
				t.Errorf("record kind %s sni %s action %s", r.Kind, r.SNI, r.Action)
			}
		})
	}
}
