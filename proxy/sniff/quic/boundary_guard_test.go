package quic

import (
	"errors"
	"testing"
)

// These tests hold the exact boundaries at which a server drops what a
// client sends (RFC 9000). A reading that goes one step past a boundary
// reads a packet the server never reads; Belongs still requires later
// CRYPTO data to repeat what was read, so no gain is known from any of
// them, but the ClientHello read is to be the one the server reads.

// A datagram of 1199 bytes carrying an Initial is refused and one of 1200
// is read (RFC 9000 §14.1: a server drops the shorter one).
func TestMinInitialDatagramBoundary(t *testing.T) {
	mk := func(n int) []byte {
		return packet{dcid: testDCID, payload: cryptoFrameBytes(0, rfcClientHello(t)), padTo: n}.seal(t)
	}
	short, full := mk(MinInitialDatagram-1), mk(MinInitialDatagram)
	if len(short) != MinInitialDatagram-1 || len(full) != MinInitialDatagram {
		t.Fatalf("built %d and %d bytes", len(short), len(full))
	}
	var a Assembler
	wantErr(t, &a, short, ErrMalformed)
	var b Assembler
	if h, done, err := b.Add(full); !done || err != nil || h.ServerName != "example.com" {
		t.Fatalf("%d bytes: %q, done %v, err %v; want example.com", MinInitialDatagram, h.ServerName, done, err)
	}
}

// CRYPTO data even one byte past the end of the ClientHello (where a
// second ClientHello after a HelloRetryRequest would go) is refused.
func TestCryptoOneBytePastHelloRefused(t *testing.T) {
	ch := rfcClientHello(t)
	d := initialDatagram(t, 0, cryptoFrameBytes(0, ch), cryptoFrameBytes(uint64(len(ch)), []byte{0x01}))
	var a Assembler
	wantErr(t, &a, d, ErrMalformed)
}

// An Initial coalesced behind the first packet with the same DCID but the
// other version belongs to another connection (a v1 server skips a v2
// packet, RFC 9000 §12.2): it is refused, never read into the ClientHello.
func TestCoalescedOtherVersionSameDCIDRefused(t *testing.T) {
	p1 := packet{version: Version1, typ: typeInitial, dcid: testDCID, pn: 0, payload: pingFrame()}.seal(t)
	p2 := packet{version: Version2, typ: typeInitial, dcid: testDCID, pn: 0,
		payload: cryptoFrameBytes(0, rfcClientHello(t)), padTo: MinInitialDatagram - len(p1)}.seal(t)
	var a Assembler
	if _, done, err := a.Add(concat(p1, p2)); done || !errors.Is(err, ErrMalformed) {
		t.Fatalf("v2 Initial of the same DCID behind a v1 one: done %v, err %v; want ErrMalformed", done, err)
	}
}

// A Destination Connection ID of 21 bytes is not QUIC v1 or v2 (RFC 9000
// §17.2 caps it at 20, and a server drops the packet): refused. One of 20
// bytes is read.
func TestConnIDLengthBoundary(t *testing.T) {
	for _, n := range []int{20, 21} {
		dcid := make([]byte, n)
		dcid[0] = 0x42
		d := packet{dcid: dcid, payload: cryptoFrameBytes(0, rfcClientHello(t)), padTo: MinInitialDatagram}.seal(t)
		var a Assembler
		h, done, err := a.Add(d)
		if n > maxConnIDLen {
			if done || err == nil {
				t.Errorf("%d-byte DCID: done %v, err %v; want an error", n, done, err)
			}
			continue
		}
		if !done || err != nil || h.ServerName != "example.com" {
			t.Errorf("%d-byte DCID: %q, done %v, err %v; want example.com", n, h.ServerName, done, err)
		}
	}
}

// A datagram Add refuses leaves the Assembler as it was, the CRYPTO data
// of its good packets and the packet numbers they opened included: what
// follows is read as if it had never come. (The proxy's gate ends the flow
// on the first error, so nothing gains from this today; it is the contract
// a caller that skips refused datagrams relies on.)
func TestRefusedDatagramLeavesNoState(t *testing.T) {
	t.Run("crypto data", func(t *testing.T) {
		ch := bigClientHello(t, 1500)
		other := sniWith(t, ch, "exbmple.com") // same length, another name
		good := packet{dcid: testDCID, pn: 0, payload: splitCrypto(ch, 1000)[0]}.seal(t)
		bad := packet{dcid: testDCID, pn: 1, payload: pingFrame(), padTo: MinInitialDatagram - len(good)}.seal(t)
		bad[len(bad)-1] ^= 1 // fails authentication
		var a Assembler
		wantErr(t, &a, concat(good, bad), ErrMalformed)
		of := splitCrypto(other, 1000)
		dgrams := [][]byte{initialDatagram(t, 2, of[0]), initialDatagram(t, 3, of[1])}
		if i, hello := feed(t, &a, dgrams); i != 1 || hello.ServerName != "exbmple.com" {
			t.Fatalf("done at %d, %q; want at 1, exbmple.com (the refused datagram's data kept)", i, hello.ServerName)
		}
	})
	t.Run("packet numbers", func(t *testing.T) {
		good := packet{dcid: testDCID, pn: 0x1fe, payload: pingFrame()}.seal(t)
		bad := packet{dcid: testDCID, pn: 0x1ff, payload: pingFrame(), padTo: MinInitialDatagram - len(good)}.seal(t)
		bad[len(bad)-1] ^= 1
		var a Assembler
		wantErr(t, &a, concat(good, bad), ErrMalformed)
		// Packet 0x205 sent in one byte (0x05) opens only if decoded
		// against the refused 0x1fe; against no packet, as a server that
		// never got the refused datagram decodes it, it is packet 5 and
		// does not open. Packet 5 itself does.
		hello := cryptoFrameBytes(0, rfcClientHello(t))
		far := packet{dcid: testDCID, pn: 0x205, pnLen: 1, payload: hello, padTo: MinInitialDatagram}.seal(t)
		wantErr(t, &a, far, ErrMalformed)
		d := packet{dcid: testDCID, pn: 5, pnLen: 1, payload: hello, padTo: MinInitialDatagram}.seal(t)
		if h, done, err := a.Add(d); !done || err != nil || h.ServerName != "example.com" {
			t.Fatalf("after refused datagrams: %q, done %v, err %v; want example.com", h.ServerName, done, err)
		}
	})
}
