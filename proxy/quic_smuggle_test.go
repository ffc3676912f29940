package proxy

import (
	"bytes"
	"fmt"
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
	recs, c := smuggleOnUDPFlow(t, quicFirstFlight(t, "blocked.example.test")...)
	<-c.ended
	if rec := recs.records(t, 1)[0]; rec.Kind != "udp" || rec.Action != "allow" {
		t.Fatalf("record %+v", rec)
	}
}

// behindLongPacket puts a long-header packet of type typ (0x10 0-RTT,
// 0x20 Handshake, version 1) with a junk body in front of the Initial that
// begins initial, under the same version and connection IDs, as one
// datagram. A server reads on past a packet it cannot use (RFC 9000
// §12.2), so the Initial still starts a connection.
func behindLongPacket(t *testing.T, typ byte, initial []byte) []byte {
	t.Helper()
	dcidEnd := 6 + int(initial[5])
	scidEnd := dcidEnd + 1 + int(initial[dcidEnd])
	body := bytes.Repeat([]byte{0xee}, 64)
	p := []byte{0xc1 | typ}
	p = append(p, initial[1:scidEnd]...) // version, both connection IDs
	p = append(p, 0x40, byte(len(body)))
	p = append(p, body...)
	return append(p, initial...)
}

// TestQUICInitialBehindOtherPackets plays a client that hides a denied
// name's Initial behind a 0-RTT or Handshake packet in the same datagram:
// as a flow's first datagram, and on a flow already decided as plain UDP.
// Seen only as the packet in front, the first was relayed as udp on
// addresses alone, and the second passed the guard.
func TestQUICInitialBehindOtherPackets(t *testing.T) {
	flight := quicFirstFlight(t, "blocked.example.test")
	for _, typ := range []byte{0x10, 0x20} {
		hidden := behindLongPacket(t, typ, flight[0])
		t.Run(fmt.Sprintf("first datagram, type %#x", typ), func(t *testing.T) {
			p, _, recs := udpProxy(t, quicPolicy, nil)
			dst := newUDPSink(t, false)
			startFlow(p, quicClient, dst.addr(), append([][]byte{hidden}, flight[1:]...)...)
			got := recs.records(t, 1)[0]
			if got.Kind != "quic" || got.Action != "deny" || got.SNI != "blocked.example.test" {
				t.Fatalf("record %+v", got)
			}
			time.Sleep(100 * time.Millisecond)
			if n := len(dst.received()); n != 0 {
				t.Fatalf("the destination received %d datagrams of a denied QUIC flow", n)
			}
		})
		t.Run(fmt.Sprintf("on a udp flow, type %#x", typ), func(t *testing.T) {
			smuggleOnUDPFlow(t, hidden)
		})
	}
}

// smuggleOnUDPFlow opens a flow with a datagram that is not QUIC, so that it
// is decided as plain UDP, then sends initials (QUIC Initials for a denied
// name, however packed) and one more plain datagram on it. Only the two
// plain datagrams may reach the destination, and the Initials must be
// counted as smuggled.
func smuggleOnUDPFlow(t *testing.T, initials ...[]byte) (*recordSink, *fakeUDPClient) {
	t.Helper()
	p, _, recs := udpProxy(t, quicPolicy, nil)
	dst := newUDPSink(t, false)
	c, _ := startFlow(p, quicClient, dst.addr(), []byte("not quic"))
	waitReceived(t, dst, 1)
	for _, d := range initials {
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
	return recs, c
}

// longJunk builds an unprotected long-header packet (version 1, typ 0x10
// 0-RTT or 0x20 Handshake) for dcid with a junk body.
func longJunk(typ byte, dcid []byte) []byte {
	body := bytes.Repeat([]byte{0xee}, 64)
	p := []byte{0xc1 | typ, 0, 0, 0, 1, byte(len(dcid))}
	p = append(p, dcid...)
	p = append(p, 0) // no source connection ID
	p = append(p, 0x40, byte(len(body)))
	return append(p, body...)
}

// TestQUICSecondConnectionBehindForeignPacket plays a client that, on a
// flow decided for an allowed name, hides a denied name's Initials behind
// a 0-RTT packet of the first connection and a Handshake packet of another
// connection ID. A server that skips only the mismatched packet (RFC 9000
// §12.2) reads the Initial behind it: it must never reach the destination.
func TestQUICSecondConnectionBehindForeignPacket(t *testing.T) {
	p, _, recs := udpProxy(t, quicPolicy, nil)
	dst := newUDPSink(t, false)
	allowed := quicFirstFlight(t, "www.example.test")
	c, _ := startFlow(p, quicClient, dst.addr(), allowed...)
	waitReceived(t, dst, len(allowed))
	dcid := allowed[0][6 : 6+int(allowed[0][5])]
	blocked := quicFirstFlight(t, "blocked.example.test")
	for _, d := range blocked {
		c.inject(bytes.Join([][]byte{longJunk(0x10, dcid), longJunk(0x20, []byte{0xaa, 0xbb, 0xcc, 0xdd}), d}, nil))
	}
	c.inject([]byte{0x40, 1, 2, 3}) // the first connection's own traffic still passes
	waitReceived(t, dst, len(allowed)+1)
	time.Sleep(100 * time.Millisecond)
	if got := dst.received(); len(got) != len(allowed)+1 {
		t.Errorf("the destination received %d datagrams, want the %d of the allowed connection and its short-header one", len(got), len(allowed)+1)
	}
	if n := p.Stats().QUICSmuggled; n != uint64(len(blocked)) {
		t.Errorf("smuggled datagrams counted: %d, want %d", n, len(blocked))
	}
	c.Close()
	if r := recs.records(t, 1)[0]; r.Kind != "quic" || r.SNI != "www.example.test" {
		t.Errorf("record kind %s sni %s", r.Kind, r.SNI)
	}
}

// TestQUICCoalescedInitialsDropped plays a client that, on a flow decided
// for an allowed name, packs its own Initials, each of which belongs on its
// own, many to a datagram. Every Initial is opened under each key of the
// flow, inline on the reader that delivered the datagram, so such datagrams
// stalled every client behind that reader. A client coalesces at most an
// Initial, a 0-RTT and a Handshake packet, and a 1-RTT one after them: that
// still passes, while more long-header packets are dropped and counted.
func TestQUICCoalescedInitialsDropped(t *testing.T) {
	p, _, _ := udpProxy(t, quicPolicy, nil)
	dst := newUDPSink(t, false)
	allowed := quicFirstFlight(t, "www.example.test")
	c, _ := startFlow(p, quicClient, dst.addr(), allowed...)
	waitReceived(t, dst, len(allowed))
	dcid := allowed[0][6 : 6+int(allowed[0][5])]

	flood := bytes.Join([][]byte{allowed[0], allowed[1], allowed[0], allowed[1]}, nil)
	c.inject(flood)
	legit := bytes.Join([][]byte{allowed[0], longJunk(0x10, dcid), longJunk(0x20, dcid), {0x40, 1, 2, 3}}, nil)
	c.inject(legit)
	waitReceived(t, dst, len(allowed)+1)
	time.Sleep(100 * time.Millisecond)
	got := dst.received()
	if len(got) != len(allowed)+1 || !bytes.Equal(got[len(allowed)], legit) {
		t.Errorf("the destination received %d datagrams, want the %d of the allowed connection and its coalesced Initial, 0-RTT, Handshake and 1-RTT one", len(got), len(allowed))
	}
	if n := p.Stats().QUICSmuggled; n != 1 {
		t.Errorf("smuggled datagrams counted: %d, want the one of 4 coalesced Initials", n)
	}
}
