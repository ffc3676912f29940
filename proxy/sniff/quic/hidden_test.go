package quic

import (
	"bytes"
	"testing"
)

// sniWith returns ch, the RFC ClientHello, with its SNI example.com
// replaced by name, of the same length.
func sniWith(tb testing.TB, ch []byte, name string) []byte {
	tb.Helper()
	out := bytes.Clone(ch)
	i := bytes.Index(out, []byte("example.com"))
	if i < 0 || len(name) != len("example.com") {
		tb.Fatal("no SNI example.com, or a name of another length")
	}
	copy(out[i:], name)
	return out
}

// TestInitialBehindForeignPacketIsRead: in the gate, an Initial of the
// flow's own connection that sits behind a packet of another connection ID
// (or version) is read like any other. A server that skips only the
// mismatched packet (RFC 9000 §12.2) reads it, so the ClientHello it
// carries is the one the flow must be decided on.
func TestInitialBehindForeignPacketIsRead(t *testing.T) {
	good := rfcClientHello(t)
	evil := sniWith(t, good, "evil.exampl")
	serverCID := []byte{0xaa, 0xbb, 0xcc, 0xdd}
	for name, foreign := range map[string][]byte{
		"another DCID":    rawLong(t, Version1, typeHandshake, serverCID, bytes.Repeat([]byte{0xee}, 40)),
		"another version": rawLong(t, Version2, typeHandshake, testDCID, bytes.Repeat([]byte{0xee}, 40)),
	} {
		t.Run(name, func(t *testing.T) {
			// The evil ClientHello rides behind the foreign packet; the
			// good one follows in a datagram of its own.
			d1 := concat(
				packet{dcid: testDCID, pn: 0, payload: pingFrame()}.seal(t),
				foreign,
				packet{dcid: testDCID, pn: 1, payload: cryptoFrameBytes(0, evil), padTo: 1200}.seal(t),
			)
			var a Assembler
			hello, done, err := a.Add(d1)
			if err != nil || !done || hello.ServerName != "evil.exampl" {
				t.Fatalf("Add(PING | foreign packet | Initial with evil.exampl) = %q, done %v, %v; want evil.exampl, done", hello.ServerName, done, err)
			}
			// And the good ClientHello, arriving later, does not replace it.
			var b Assembler
			if _, _, err := b.Add(d1); err != nil {
				t.Fatal(err)
			}
			d2 := packet{dcid: testDCID, pn: 2, payload: cryptoFrameBytes(0, good), padTo: 1200}.seal(t)
			if hello, _, _ := b.Add(d2); hello.ServerName != "evil.exampl" {
				t.Errorf("after a later example.com ClientHello: decided on %q, want evil.exampl", hello.ServerName)
			}
		})
	}
}

// TestInitialOfAnotherConnectionAnywhereRefused: an Initial of another
// connection ID or version is refused wherever it sits in the datagram,
// not only directly behind the first packet; packets of other connections
// that are not Initials are skipped.
func TestInitialOfAnotherConnectionAnywhereRefused(t *testing.T) {
	ch := rfcClientHello(t)
	evil := sniWith(t, ch, "evil.exampl")
	otherDCID := []byte{9, 10, 11, 12, 13, 14, 15, 16}
	junk := bytes.Repeat([]byte{0xee}, 40)
	newConn := packet{dcid: otherDCID, pn: 0, payload: cryptoFrameBytes(0, evil), padTo: 1200}.seal(t)

	// In the gate.
	var g Assembler
	_, done, err := g.Add(concat(
		packet{dcid: testDCID, pn: 0, payload: cryptoFrameBytes(0, ch)}.seal(t),
		rawLong(t, Version1, typeHandshake, []byte{1, 2, 3, 4}, junk),
		newConn))
	if err == nil || done {
		t.Errorf("gate: a ClientHello with another connection's Initial two packets behind it: done %v, err %v; want refused", done, err)
	}

	// After the decision.
	var a Assembler
	if _, done, err := a.Add(initialDatagram(t, 0, cryptoFrameBytes(0, ch))); !done || err != nil {
		t.Fatal(done, err)
	}
	tests := []struct {
		name string
		d    []byte
		want bool
	}{
		{"behind an ACK and a Handshake of another DCID", concat(
			packet{dcid: testDCID, pn: 6, payload: ackFrame(0, 0, 0, false)}.seal(t),
			rawLong(t, Version1, typeHandshake, []byte{1, 2, 3, 4}, junk), newConn), false},
		{"behind a 0-RTT and a v2 Handshake", concat(
			rawLong(t, Version1, typeZeroRTT, testDCID, junk),
			rawLong(t, Version2, typeHandshake, testDCID, junk), newConn), false},
		{"behind a 0-RTT of its own and one of another DCID", concat(
			rawLong(t, Version1, typeZeroRTT, testDCID, junk),
			rawLong(t, Version1, typeZeroRTT, otherDCID, junk), newConn), false},
		{"the connection's own ACK behind a Handshake of another DCID", concat(
			rawLong(t, Version1, typeZeroRTT, testDCID, junk),
			rawLong(t, Version1, typeHandshake, []byte{1, 2, 3, 4}, junk),
			packet{dcid: testDCID, pn: 7, payload: ackFrame(0, 0, 0, false), padTo: 1200}.seal(t)), true},
	}
	for _, tc := range tests {
		if got := a.Belongs(tc.d); got != tc.want {
			t.Errorf("%s: Belongs = %v, want %v (IsInitial %v)", tc.name, got, tc.want, IsInitial(tc.d))
		}
	}
}

// TestCryptoPastClientHelloRefused: CRYPTO data past the ClientHello (a
// second ClientHello where the one after a HelloRetryRequest would go) is
// refused in the datagram that completes the ClientHello, whatever the
// order it came in, and so is a later retransmission of it.
func TestCryptoPastClientHelloRefused(t *testing.T) {
	good := rfcClientHello(t)
	evil := sniWith(t, good, "evil.exampl")
	l := uint64(len(good))

	var a Assembler
	if hello, done, err := a.Add(initialDatagram(t, 0, cryptoFrameBytes(0, good), cryptoFrameBytes(l, evil))); err == nil || done {
		t.Errorf("both ClientHellos in one Initial: %q, done %v, %v; want refused", hello.ServerName, done, err)
	}

	// The second one first, the first completing it later.
	var b Assembler
	if _, done, err := b.Add(initialDatagram(t, 0, cryptoFrameBytes(l, evil))); done || err != nil {
		t.Fatalf("data past the ClientHello before its header: done %v, %v", done, err)
	}
	if hello, done, err := b.Add(initialDatagram(t, 1, cryptoFrameBytes(0, good))); err == nil || done {
		t.Errorf("ClientHello completing a stream with data past it: %q, done %v, %v; want refused", hello.ServerName, done, err)
	}

	// After the decision on the first alone, the second does not belong.
	var c Assembler
	if _, done, err := c.Add(initialDatagram(t, 0, cryptoFrameBytes(0, good))); !done || err != nil {
		t.Fatal(done, err)
	}
	if c.Belongs(initialDatagram(t, 3, cryptoFrameBytes(l, evil))) {
		t.Error("a second ClientHello past the first belongs")
	}
}
