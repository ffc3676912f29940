package quic

import (
	"bytes"
	"testing"
)

// TestBelongs plays a client that, once its first connection on a flow has
// been decided, tries to start another on the same flow: the relay must be
// able to tell those datagrams from the first connection's own.
func TestBelongs(t *testing.T) {
	ch := bigClientHello(t, 1500)
	frames := splitCrypto(ch, 1000)
	serverCID := []byte{0xaa, 0xbb, 0xcc, 0xdd}
	otherDCID := []byte{9, 10, 11, 12, 13, 14, 15, 16}
	d1 := packet{dcid: testDCID, pn: 0, payload: frames[0], padTo: 1200}.seal(t)
	d2 := packet{dcid: testDCID, pn: 1, payload: frames[1], padTo: 1200}.seal(t)

	var a Assembler
	if a.Belongs(d1) {
		t.Fatal("Belongs before the ClientHello is complete")
	}
	if i, hello := feed(t, &a, [][]byte{d1, d2}); i != 1 || hello.ServerName != "example.com" {
		t.Fatalf("done at %d, %q", i, hello.ServerName)
	}
	other := bigClientHello(t, 1600)
	tests := []struct {
		name string
		d    []byte
		want bool
	}{
		{"retransmitted first datagram", d1, true},
		{"retransmission under a new packet number", packet{dcid: testDCID, pn: 7, payload: frames[0], padTo: 1200}.seal(t), true},
		{"ACK to the server's connection ID, original keys", packet{dcid: serverCID, keyDCID: testDCID, pn: 2, payload: ackFrame(0, 0, 0, false), padTo: 1200}.seal(t), true},
		{"short header", append([]byte{0x40}, serverCID...), true},
		{"handshake packet", packet{typ: typeHandshake, dcid: serverCID, keyDCID: testDCID, pn: 0, payload: pingFrame(), padTo: 1200}.seal(t), true},
		{"new connection: its own DCID and keys", packet{dcid: otherDCID, pn: 0, payload: cryptoFrameBytes(0, other), padTo: 1200}.seal(t), false},
		{"after a Retry: the same ClientHello under the Retry's keys", packet{dcid: serverCID, token: []byte("retry token"), pn: 2, payload: frames[0], padTo: 1200}.seal(t), true},
		{"new connection: the server's CID as its own DCID", packet{dcid: serverCID, pn: 0, payload: cryptoFrameBytes(0, other), padTo: 1200}.seal(t), false},
		{"another ClientHello under the old keys", packet{dcid: testDCID, pn: 3, payload: cryptoFrameBytes(0, other[:1000]), padTo: 1200}.seal(t), false},
		{"CRYPTO data past the ClientHello", packet{dcid: testDCID, pn: 4, payload: cryptoFrameBytes(uint64(len(ch)), []byte("more")), padTo: 1200}.seal(t), false},
		{"new connection coalesced behind an ACK", concat(
			packet{dcid: testDCID, pn: 5, payload: ackFrame(0, 0, 0, false)}.seal(t),
			packet{dcid: otherDCID, pn: 0, payload: cryptoFrameBytes(0, other[:1000]), padTo: 1200}.seal(t)), false},
		{"unparsable long header", []byte{0xc0, 0, 0, 0, 1, 200}, false},
		{"unknown version", concat([]byte{0xc0, 0x1a, 0x2a, 0x3a, 0x4a, 8}, otherDCID, []byte{0}, bytes.Repeat([]byte{0}, 1200)), false},
	}
	for _, tc := range tests {
		if got := a.Belongs(tc.d); got != tc.want {
			t.Errorf("%s: Belongs = %v, want %v", tc.name, got, tc.want)
		}
	}
	// A refused datagram changes nothing: the connection's own still pass.
	if !a.Belongs(d2) {
		t.Error("the connection's own datagram refused after refusals")
	}
}

// TestBelongsKeepsNoLargeScratch: a decided flow keeps its Assembler for
// its lifetime, so Belongs must not keep scratch space the size of the
// largest datagram it ever read: one 60 KB Initial (a datagram reassembled
// from IP fragments) would otherwise stay with an idle flow.
func TestBelongsKeepsNoLargeScratch(t *testing.T) {
	ch := rfcClientHello(t)
	var a Assembler
	if _, done, err := a.Add(initialDatagram(t, 0, cryptoFrameBytes(0, ch))); !done || err != nil {
		t.Fatal(done, err)
	}
	// Its first byte, retransmitted 10,000 times over: many frames.
	big := packet{dcid: testDCID, pn: 1, payload: bytes.Repeat(cryptoFrameBytes(0, ch[:1]), 10000), padTo: 60000}.seal(t)
	if !a.Belongs(big) {
		t.Fatal("the connection's own retransmission does not belong")
	}
	if c := cap(a.buf); c > maxKeptScratch {
		t.Errorf("after one %d-byte datagram, Belongs keeps a %d-byte scratch buffer", len(big), c)
	}
	if c := cap(a.frames); c > maxKeptFrames {
		t.Errorf("after one %d-byte datagram, Belongs keeps room for %d frames", len(big), c)
	}
	// A usual one still belongs, its scratch space kept for the next.
	small := packet{dcid: testDCID, pn: 2, payload: ackFrame(1, 0, 1, false), padTo: 1200}.seal(t)
	if !a.Belongs(small) || cap(a.buf) == 0 {
		t.Errorf("after a 1,200-byte Initial: scratch space of %d bytes kept", cap(a.buf))
	}
}

// TestBelongsAfterRetry: after a Retry, the client protects its Initials
// with keys of the Retry's connection ID (RFC 9001 §5.2), also once it
// addresses the server's own connection ID. Its ACK to the server, with its
// Handshake packets (its Finished) coalesced, belongs: dropping it would
// stall the handshake until the client retransmits.
func TestBelongsAfterRetry(t *testing.T) {
	ch := rfcClientHello(t)
	var a Assembler
	if _, done, err := a.Add(initialDatagram(t, 0, cryptoFrameBytes(0, ch))); !done || err != nil {
		t.Fatal(done, err)
	}
	retryCID := []byte{0xaa, 0xbb, 0xcc, 0xdd, 1, 2, 3, 4}
	serverCID := []byte{0x55, 0x66, 0x77, 0x88}
	if !a.Belongs(packet{dcid: retryCID, token: []byte("token"), pn: 1, payload: cryptoFrameBytes(0, ch), padTo: 1200}.seal(t)) {
		t.Fatal("the ClientHello again under the Retry's keys does not belong")
	}
	ack := concat(
		packet{dcid: serverCID, keyDCID: retryCID, token: []byte("token"), pn: 2, payload: ackFrame(0, 0, 0, false)}.seal(t),
		rawLong(t, Version1, typeHandshake, serverCID, bytes.Repeat([]byte{0xee}, 1200)))
	if !a.Belongs(ack) {
		t.Error("the ACK to the server's connection ID under the Retry's keys does not belong")
	}
	// Keys it opens with do not make another ClientHello belong.
	other := bigClientHello(t, 1600)
	if a.Belongs(packet{dcid: serverCID, keyDCID: retryCID, pn: 3, payload: cryptoFrameBytes(0, other[:1000]), padTo: 1200}.seal(t)) {
		t.Error("another ClientHello under the Retry's keys belongs")
	}
}
