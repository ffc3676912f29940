package quic

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/proxy/sniff"
)

// This file builds Initial packets for the tests: the inverse of what the
// package does, written independently of it except for deriveKeys (which
// the RFC test vectors check on their own).

// mustHex decodes hex with spaces and newlines allowed.
func mustHex(tb testing.TB, s string) []byte {
	tb.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		tb.Fatalf("bad hex: %v", err)
	}
	return b
}

func appendVarint(b []byte, v uint64) []byte {
	switch {
	case v < 1<<6:
		return append(b, byte(v))
	case v < 1<<14:
		return binary.BigEndian.AppendUint16(b, uint16(v)|0x4000)
	case v < 1<<30:
		return binary.BigEndian.AppendUint32(b, uint32(v)|0x80000000)
	default:
		return binary.BigEndian.AppendUint64(b, v|0xc000000000000000)
	}
}

// Frame builders.

func cryptoFrameBytes(off uint64, data []byte) []byte {
	b := []byte{frameCrypto}
	b = appendVarint(b, off)
	b = appendVarint(b, uint64(len(data)))
	return append(b, data...)
}

func pingFrame() []byte { return []byte{framePing} }

// ackFrame builds an ACK (or ACK_ECN) frame; ranges are (gap, length) pairs.
func ackFrame(largest, delay, first uint64, ecn bool, ranges ...uint64) []byte {
	b := []byte{frameAck}
	if ecn {
		b[0] = frameAckECN
	}
	for _, v := range []uint64{largest, delay, uint64(len(ranges) / 2), first} {
		b = appendVarint(b, v)
	}
	for _, v := range ranges {
		b = appendVarint(b, v)
	}
	if ecn {
		b = appendVarint(b, 1)
		b = appendVarint(b, 2)
		b = appendVarint(b, 3)
	}
	return b
}

func connectionCloseFrame(code uint64, reason string) []byte {
	b := []byte{frameConnectionClose}
	b = appendVarint(b, code)
	b = appendVarint(b, 0)
	b = appendVarint(b, uint64(len(reason)))
	return append(b, reason...)
}

func concat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// packet describes one long-header packet to build.
type packet struct {
	version uint32
	typ     packetType
	dcid    []byte // in the header
	keyDCID []byte // the keys' DCID when it differs from dcid
	scid    []byte
	token   []byte
	pn      uint64
	pnLen   int    // 1..4; 0 means 2
	payload []byte // plaintext frames
	padTo   int    // add PADDING until the packet has this many bytes
}

// typeBits returns the wire encoding of typ for version.
func typeBits(tb testing.TB, version uint32, typ packetType) byte {
	params, ok := paramsFor(version)
	if !ok {
		tb.Fatalf("version %#x", version)
	}
	for i, t := range params.types {
		if t == typ {
			return byte(i) << 4
		}
	}
	tb.Fatalf("no type %v", typ)
	return 0
}

// header builds the unprotected long header up to the Length field.
func (p packet) header(tb testing.TB, length int) []byte {
	pnLen := p.pnLen
	if pnLen == 0 {
		pnLen = 2
	}
	b := []byte{0xc0 | typeBits(tb, p.version, p.typ) | byte(pnLen-1)}
	b = binary.BigEndian.AppendUint32(b, p.version)
	b = append(b, byte(len(p.dcid)))
	b = append(b, p.dcid...)
	b = append(b, byte(len(p.scid)))
	b = append(b, p.scid...)
	if p.typ == typeInitial {
		b = appendVarint(b, uint64(len(p.token)))
		b = append(b, p.token...)
	}
	// A 2-byte Length when it fits, as most stacks write it, so the size
	// is known before the payload is padded.
	if length < 1<<14 {
		return binary.BigEndian.AppendUint16(b, uint16(length)|0x4000)
	}
	return appendVarint(b, uint64(length))
}

// seal builds the protected packet.
func (p packet) seal(tb testing.TB) []byte {
	tb.Helper()
	if p.version == 0 {
		p.version = Version1
	}
	pnLen := p.pnLen
	if pnLen == 0 {
		pnLen = 2
	}
	payload := bytes.Clone(p.payload)
	// The header protection sample needs 4 bytes after the packet number
	// start plus 16: pad short payloads (RFC 9001 §5.4.2).
	for len(payload)+pnLen < 4 {
		payload = append(payload, framePadding)
	}
	hdrLen := len(p.header(tb, 0)) + pnLen
	for hdrLen+len(payload)+16 < p.padTo {
		payload = append(payload, framePadding)
	}
	hdr := p.header(tb, pnLen+len(payload)+16)
	pnOffset := len(hdr)
	for i := pnLen - 1; i >= 0; i-- {
		hdr = append(hdr, byte(p.pn>>(8*i)))
	}

	keyDCID := p.keyDCID
	if keyDCID == nil {
		keyDCID = p.dcid
	}
	k := sealKeys(tb, p.version, keyDCID)
	nonce := k.iv
	for i := range 8 {
		nonce[11-i] ^= byte(p.pn >> (8 * i))
	}
	pkt := k.aead.Seal(hdr, nonce[:], payload, hdr)

	var mask [16]byte
	k.hp.Encrypt(mask[:], pkt[pnOffset+4:pnOffset+20])
	pkt[0] ^= mask[0] & 0x0f
	for i := range pnLen {
		pkt[pnOffset+i] ^= mask[1+i]
	}
	return pkt
}

var (
	sealKeysMu    sync.Mutex
	sealKeysCache = map[string]*initialKeys{}
)

// sealKeys returns cached keys for building packets: the fuzz target seals
// every datagram it feeds, and derivation would dominate its run time.
func sealKeys(tb testing.TB, version uint32, dcid []byte) *initialKeys {
	tb.Helper()
	id := fmt.Sprintf("%x/%x", version, dcid)
	sealKeysMu.Lock()
	defer sealKeysMu.Unlock()
	if k, ok := sealKeysCache[id]; ok {
		return k
	}
	k, err := deriveKeys(version, dcid)
	if err != nil {
		tb.Fatal(err)
	}
	if len(sealKeysCache) < 64 {
		sealKeysCache[id] = k
	}
	return k
}

// rawLong builds an unencrypted long-header packet with an opaque body, for
// 0-RTT and Handshake packets that the package skips without reading.
func rawLong(tb testing.TB, version uint32, typ packetType, dcid []byte, body []byte) []byte {
	p := packet{version: version, typ: typ, dcid: dcid}
	return append(p.header(tb, len(body)), body...)
}

var testDCID = []byte{0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08}

// initialDatagram seals payload into a v1 Initial of exactly 1200 bytes for
// testDCID with packet number pn.
func initialDatagram(tb testing.TB, pn uint64, payload ...[]byte) []byte {
	tb.Helper()
	return packet{dcid: testDCID, pn: pn, payload: concat(payload...), padTo: MinInitialDatagram}.seal(tb)
}

// rfcClientHello returns the ClientHello handshake message of the RFC 9001
// Appendix A.2 example (SNI example.com, ALPN "alpn").
func rfcClientHello(tb testing.TB) []byte {
	frame := mustHex(tb, rfcCryptoFrame)
	return frame[4:] // 06 00 40f1: type, offset 0, length 241
}

// bigClientHello returns the RFC ClientHello grown by a padding extension
// (type 21) of n bytes, to span several packets.
func bigClientHello(tb testing.TB, n int) []byte {
	ch := rfcClientHello(tb)
	const extLenOff = 4 + 2 + 32 + 1 + 2 + 4 + 1 + 1 // header, version, random, sid, suites, compression
	extLen := int(binary.BigEndian.Uint16(ch[extLenOff:])) + 4 + n
	binary.BigEndian.PutUint16(ch[extLenOff:], uint16(extLen))
	ch = append(ch, 0x00, 0x15, byte(n>>8), byte(n))
	ch = append(ch, make([]byte, n)...)
	body := len(ch) - 4
	ch[1], ch[2], ch[3] = byte(body>>16), byte(body>>8), byte(body)
	return ch
}

// splitCrypto cuts msg into CRYPTO frames of at most size bytes.
func splitCrypto(msg []byte, size int) [][]byte {
	var frames [][]byte
	for off := 0; off < len(msg); off += size {
		frames = append(frames, cryptoFrameBytes(uint64(off), msg[off:min(off+size, len(msg))]))
	}
	return frames
}

// feed adds datagrams in order and returns the index of the one that
// completed the ClientHello (-1 if none) and the hello. Any error fails tb.
func feed(tb testing.TB, a *Assembler, dgrams [][]byte) (int, sniff.ClientHello) {
	tb.Helper()
	for i, d := range dgrams {
		hello, done, err := a.Add(d)
		if err != nil {
			tb.Fatalf("datagram %d of %d: %v", i, len(dgrams), err)
		}
		if done {
			return i, hello
		}
	}
	return -1, sniff.ClientHello{}
}

// errKind names the sentinel an error matches, checking that it matches
// exactly one.
func errKind(tb testing.TB, err error) error {
	tb.Helper()
	var found []error
	for _, s := range []error{ErrNotQUIC, ErrMalformed, ErrTooLarge} {
		if errors.Is(err, s) {
			found = append(found, s)
		}
	}
	if len(found) != 1 {
		tb.Fatalf("error %q matches %d sentinels, want 1", err, len(found))
	}
	return found[0]
}

// wantErr checks that Add fails with the given sentinel.
func wantErr(tb testing.TB, a *Assembler, d []byte, want error) error {
	tb.Helper()
	_, done, err := a.Add(d)
	if err == nil || done {
		tb.Fatalf("Add = done %v, err %v; want %v", done, err, want)
	}
	if got := errKind(tb, err); got != want {
		tb.Fatalf("Add error %q; want %v", err, want)
	}
	return err
}
