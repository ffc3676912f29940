package quic

import "testing"

// These tests hold the length checks that stand between a client's
// datagram and an index past the end of a slice. Add runs at the gate on
// every new QUIC flow and Belongs on every datagram of a decided one, and
// nothing in the proxy recovers a panic: one of these checks off by one
// would let any client end the whole appliance. The fuzz targets reach
// these edges only when run as fuzzers; `go test` runs these.

// A CRYPTO stream that holds only 1 to 3 bytes at offset 0 has not yet
// given the handshake header (type and 3-byte length): the Assembler waits
// for more rather than reading the length from bytes it does not have, and
// reads the hello once the rest arrives.
func TestPartialHandshakeHeaderWaitsForMore(t *testing.T) {
	ch := rfcClientHello(t)
	for n := 1; n < handshakeHeaderLen; n++ {
		var a Assembler
		if _, done, err := a.Add(initialDatagram(t, 0, cryptoFrameBytes(0, ch[:n]))); done || err != nil {
			t.Fatalf("%d header bytes: done %v, err %v; want more needed", n, done, err)
		}
		h, done, err := a.Add(initialDatagram(t, 1, cryptoFrameBytes(uint64(n), ch[n:])))
		if !done || err != nil || h.ServerName != "example.com" {
			t.Fatalf("rest after %d header bytes: %q, done %v, err %v; want example.com", n, h.ServerName, done, err)
		}
	}
}

// A CONNECTION_CLOSE whose reason phrase is said to be one byte longer than
// what is left of the packet is malformed. The packet is sealed, so the
// length check is all that keeps the frame parser inside the plaintext.
func TestConnectionCloseReasonPastPacketRefused(t *testing.T) {
	for _, extra := range []int{1, 2, 1 << 20} {
		reason := make([]byte, 1200)
		f := []byte{frameConnectionClose, 0, 0}
		f = appendVarint(f, uint64(len(reason)+extra))
		f = append(f, reason...)
		d := packet{dcid: testDCID, payload: f}.seal(t)
		var a Assembler
		wantErr(t, &a, d, ErrMalformed)
	}
}

// An Initial whose token length runs past the end of the datagram is
// malformed, for every entry point that parses a long header: Add at the
// gate, IsInitial on the classifier's path, and Belongs on a decided flow.
func TestTokenLengthPastDatagramRefused(t *testing.T) {
	var decided Assembler
	if _, done, err := decided.Add(initialDatagram(t, 0, cryptoFrameBytes(0, rfcClientHello(t)))); !done || err != nil {
		t.Fatalf("hello: done %v, err %v", done, err)
	}
	for _, extra := range []uint64{1, 2, 1 << 40} {
		d := []byte{0xc0, 0, 0, 0, 1, byte(len(testDCID))}
		d = append(d, testDCID...)
		d = append(d, 0) // SCID length
		rest := make([]byte, 1300)
		d = appendVarint(d, uint64(len(rest))+extra) // token length
		d = append(d, rest...)
		var a Assembler
		wantErr(t, &a, d, ErrMalformed)
		if IsInitial(d) {
			t.Errorf("token %d bytes past the end: IsInitial, want not", extra)
		}
		if decided.Belongs(d) {
			t.Errorf("token %d bytes past the end: Belongs, want not", extra)
		}
	}
}
