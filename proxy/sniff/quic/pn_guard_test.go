package quic

import (
	"bytes"
	"errors"
	"testing"
)

// These tests hold what the two-key-Initial defence (keycommit_test.go)
// rests on: that a packet is opened under the packet number, and read
// under the rules, that the server of its connection uses. Where our
// decoding differs from the server's, a packet can open for one and not
// the other, which is the split view that defence exists to refuse.

// rfcDecodePacketNumber is RFC 9000 Appendix A.3's pseudocode, written out
// literally in signed arithmetic, as the reference for decodePacketNumber.
func rfcDecodePacketNumber(largest int64, truncated uint64, bits int) uint64 {
	expected := largest + 1
	win := int64(1) << bits
	hwin := win / 2
	mask := win - 1
	candidate := expected&^mask | int64(truncated)
	if candidate <= expected-hwin && candidate < 1<<62-win {
		return uint64(candidate + win)
	}
	if candidate > expected+hwin && candidate >= win {
		return uint64(candidate - win)
	}
	return uint64(candidate)
}

// Packet numbers decode as RFC 9000 Appendix A.3 (and quic-go's
// DecodePacketNumber) decode them, the edges of the window included:
// a candidate at exactly expected - hwin moves up a window, one at exactly
// expected + hwin stays.
func TestPacketNumberWindowEdges(t *testing.T) {
	for _, tc := range []struct {
		largest   int64
		truncated uint64
		bits      int
		want      uint64
	}{
		{0x17f, 0x00, 8, 0x200}, // candidate 0x100 == expected 0x180 - hwin: up
		{0xff, 0x80, 8, 0x180},  // candidate 0x180 == expected 0x100 + hwin: stays
		{0x7fff, 0x0000, 16, 0x10000},
		{0xffff, 0x8000, 16, 0x18000},
		{0x7fffff, 0x000000, 24, 0x1000000},
		{0xffffff, 0x800000, 24, 0x1800000},
	} {
		if got := decodePacketNumber(tc.largest, tc.truncated, tc.bits); got != tc.want {
			t.Errorf("decodePacketNumber(%#x, %#x, %d) = %#x, want %#x", tc.largest, tc.truncated, tc.bits, got, tc.want)
		}
	}
	// Every 8-bit encoding against every largest up to a few windows, and
	// the 16-bit ones around each window edge, against the RFC's code.
	for largest := int64(-1); largest < 0x400; largest++ {
		for tr := range uint64(1 << 8) {
			if got, want := decodePacketNumber(largest, tr, 8), rfcDecodePacketNumber(largest, tr, 8); got != want {
				t.Fatalf("decodePacketNumber(%#x, %#x, 8) = %#x, RFC 9000 A.3 gives %#x", largest, tr, got, want)
			}
		}
	}
	for _, edge := range []int64{0x7fff, 0xffff, 0x17fff, 0x1ffff} {
		for largest := edge - 2; largest <= edge+2; largest++ {
			for _, tr := range []uint64{0, 1, 0x7ffe, 0x7fff, 0x8000, 0x8001, 0xfffe, 0xffff} {
				if got, want := decodePacketNumber(largest, tr, 16), rfcDecodePacketNumber(largest, tr, 16); got != want {
					t.Errorf("decodePacketNumber(%#x, %#x, 16) = %#x, RFC 9000 A.3 gives %#x", largest, tr, got, want)
				}
			}
		}
	}
}

// The packet number a short encoding is decoded against is the largest
// opened so far, not the last: a reordered, lower packet must not pull it
// back (RFC 9000 §17.1). Here 0x1fe, then a late 0x10, then 0x205 sent in
// one byte (0x05): a server decodes 0x205, and so must we, at the gate
// (Add) and on the decided flow (Belongs).
func TestLargestPacketNumberIsNotTheLast(t *testing.T) {
	ch := bigClientHello(t, 1500)
	frames := splitCrypto(ch, 1000)
	d1 := packet{dcid: testDCID, pn: 0x1fe, payload: frames[0], padTo: 1200}.seal(t)
	late := packet{dcid: testDCID, pn: 0x10, payload: pingFrame(), padTo: 1200}.seal(t)
	d3 := packet{dcid: testDCID, pn: 0x205, pnLen: 1, payload: frames[1], padTo: 1200}.seal(t)
	var a Assembler
	if i, hello := feed(t, &a, [][]byte{d1, late, d3}); i != 2 || hello.ServerName != "example.com" {
		t.Fatalf("Add: done at %d, %q; want at datagram 2, example.com", i, hello.ServerName)
	}

	var b Assembler
	d2 := packet{dcid: testDCID, pn: 0x1ff, payload: frames[1], padTo: 1200}.seal(t)
	if i, hello := feed(t, &b, [][]byte{d1, d2}); i != 1 || hello.ServerName != "example.com" {
		t.Fatalf("done at %d, %q; want at datagram 1, example.com", i, hello.ServerName)
	}
	if !b.Belongs(late) {
		t.Fatal("Belongs: a late PING of the decided connection refused")
	}
	next := packet{dcid: testDCID, pn: 0x205, pnLen: 1, payload: pingFrame(), padTo: 1200}.seal(t)
	if !b.Belongs(next) {
		t.Fatal("Belongs: packet 0x205 sent in one byte after a late 0x10 refused; it was decoded against the last packet, not the largest")
	}
}

// sealReserved seals p (a v1 Initial with a 2-byte packet number 0) with
// bits set in the reserved bits of its first byte before protection, as
// seal cannot.
func sealReserved(t *testing.T, p packet, bits byte) []byte {
	t.Helper()
	payload := bytes.Clone(p.payload)
	for len(p.header(t, 0))+2+len(payload)+16 < p.padTo {
		payload = append(payload, framePadding)
	}
	hdr := p.header(t, 2+len(payload)+16)
	hdr[0] |= bits
	pnOffset := len(hdr)
	hdr = append(hdr, 0, 0)
	k := sealKeys(t, p.version, p.dcid)
	nonce := k.iv // packet number 0: the IV is the nonce
	pkt := k.aead.Seal(hdr, nonce[:], payload, hdr)
	var mask [16]byte
	k.hp.Encrypt(mask[:], pkt[pnOffset+4:pnOffset+20])
	pkt[0] ^= mask[0] & longHPMask
	pkt[pnOffset] ^= mask[1]
	pkt[pnOffset+1] ^= mask[2]
	return pkt
}

// A packet that authenticates but has a reserved bit set once protection
// is removed is one a server closes the connection on (PROTOCOL_VIOLATION,
// RFC 9000 §17.2): its CRYPTO data is not read.
func TestReservedBitsRefused(t *testing.T) {
	p := packet{version: Version1, typ: typeInitial, dcid: testDCID, payload: cryptoFrameBytes(0, rfcClientHello(t)), padTo: 1200}
	for _, bits := range []byte{0x04, 0x08, reservedBits} {
		var a Assembler
		if err := wantErr(t, &a, sealReserved(t, p, bits), ErrMalformed); !errors.Is(err, errReservedBits) {
			t.Fatalf("reserved bits %#x: error %v; want errReservedBits (the packet opens otherwise)", bits, err)
		}
	}
	// The same packet without them is read: the refusal is the bits'.
	var a Assembler
	if h, done, err := a.Add(sealReserved(t, p, 0)); !done || err != nil || h.ServerName != "example.com" {
		t.Fatalf("without reserved bits: %q, done %v, err %v", h.ServerName, done, err)
	}
}
