package proxy

import (
	"bytes"
	"testing"
	"time"
)

// waitReceived waits until dst has received n datagrams.
func waitReceived(t *testing.T, dst *udpSink, n int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for len(dst.received()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("the destination received %d datagrams, want %d", len(dst.received()), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestQUICSecondConnectionSmuggled plays a client that opens a QUIC
// connection to an allowed name and then, on the same 5-tuple (quic-go
// multiplexes connections on one socket), a second one to a denied name.
// The second ClientHello must never reach the destination.
func TestQUICSecondConnectionSmuggled(t *testing.T) {
	p, _, _ := udpProxy(t, quicPolicy, nil)
	dst := newUDPSink(t, false)
	allowed := quicFirstFlight(t, "www.example.test")
	c, _ := startFlow(p, quicClient, dst.addr(), allowed...)
	waitReceived(t, dst, len(allowed))

	for _, d := range quicFirstFlight(t, "blocked.example.test") {
		c.inject(d)
	}
	// The first connection's own traffic still passes: a retransmission of
	// its Initial, and a short-header packet.
	c.inject(allowed[0])
	c.inject([]byte{0x40, 1, 2, 3})
	waitReceived(t, dst, len(allowed)+2)
	time.Sleep(100 * time.Millisecond)
	got := dst.received()
	if len(got) != len(allowed)+2 || !bytes.Equal(got[len(allowed)], allowed[0]) {
		t.Fatalf("the destination received %d datagrams, want the %d of the allowed connection and its 2 later ones", len(got), len(allowed))
	}
	if n := p.Stats().QUICSmuggled; n == 0 {
		t.Error("no smuggled datagram counted")
	}
}

// TestQUICInitialAfterJunk plays a client that opens its flow with a
// datagram that is not QUIC, so the flow is decided as plain UDP, and then
// sends a QUIC Initial for a denied name on it.
func TestQUICInitialAfterJunk(t *testing.T) {
	p, _, recs := udpProxy(t, quicPolicy, nil)
	dst := newUDPSink(t, false)
	c, _ := startFlow(p, quicClient, dst.addr(), []byte("not quic"))
	waitReceived(t, dst, 1)
	for _, d := range quicFirstFlight(t, "blocked.example.test") {
		c.inject(d)
	}
	c.inject([]byte("more udp"))
	waitReceived(t, dst, 2)
	time.Sleep(100 * time.Millisecond)
	if got := dst.received(); len(got) != 2 || string(got[1]) != "more udp" {
		t.Fatalf("the destination received %d datagrams, want the 2 that are not QUIC", len(got))
	}
	if n := p.Stats().QUICSmuggled; n == 0 {
		t.Error("no smuggled datagram counted")
	}
	<-c.ended
	if rec := recs.records(t, 1)[0]; rec.Kind != "udp" || rec.Action != "allow" {
		t.Fatalf("record %+v", rec)
	}
}
