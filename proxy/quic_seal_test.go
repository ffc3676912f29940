package proxy

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"testing"
)

// This file builds client packets of QUIC v1 (RFC 9000, RFC 9001) in shapes
// quic-go does not send (it pads its Initials to 1,452 bytes at most), for
// the gate's tests: written apart from proxy/sniff/quic, which reads them.

// quicV1Salt is QUIC v1's initial_salt (RFC 9001 §5.2).
var quicV1Salt = []byte{0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad, 0xcc, 0xbb, 0x7f, 0x0a}

// quicClientKeys derives a client's Initial keys for dcid: the AEAD, its IV
// and the header protection cipher.
func quicClientKeys(tb testing.TB, dcid []byte) (cipher.AEAD, []byte, cipher.Block) {
	tb.Helper()
	expand := func(secret []byte, label string, n int) []byte {
		info := []byte{byte(n >> 8), byte(n), byte(len("tls13 ") + len(label))}
		info = append(append(append(info, "tls13 "...), label...), 0)
		out, err := hkdf.Expand(sha256.New, secret, string(info), n)
		if err != nil {
			tb.Fatal(err)
		}
		return out
	}
	initial, err := hkdf.Extract(sha256.New, dcid, quicV1Salt)
	if err != nil {
		tb.Fatal(err)
	}
	client := expand(initial, "client in", sha256.Size)
	block, err := aes.NewCipher(expand(client, "quic key", 16))
	if err != nil {
		tb.Fatal(err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		tb.Fatal(err)
	}
	hp, err := aes.NewCipher(expand(client, "quic hp", 16))
	if err != nil {
		tb.Fatal(err)
	}
	return aead, expand(client, "quic iv", 12), hp
}

// quicLongHeader is a v1 long header of type typ (0 Initial, 1 0-RTT) up
// to its Length field, which says length; no token, a 4-byte packet number
// to follow.
func quicLongHeader(typ byte, dcid []byte, length int) []byte {
	b := []byte{0xc0 | typ<<4 | 0x03}
	b = binary.BigEndian.AppendUint32(b, 1)
	b = append(append(b, byte(len(dcid))), dcid...)
	b = append(b, 0) // no source connection ID
	if typ == 0 {
		b = append(b, 0) // no token
	}
	return binary.BigEndian.AppendUint32(b, uint32(length)|0x80000000) // a 4-byte varint
}

// quicSealedInitial is a client's Initial to dcid, under the keys of
// keyDCID, of packet number pn, carrying frames and PADDING up to size
// bytes.
func quicSealedInitial(tb testing.TB, dcid, keyDCID []byte, pn uint32, frames []byte, size int) []byte {
	tb.Helper()
	const pnLen, tagLen = 4, 16
	payloadLen := size - len(quicLongHeader(0, dcid, 0)) - pnLen - tagLen
	if len(frames) > payloadLen {
		tb.Fatalf("%d bytes of frames in a %d-byte Initial", len(frames), size)
	}
	hdr := quicLongHeader(0, dcid, pnLen+payloadLen+tagLen)
	pnOff := len(hdr)
	hdr = binary.BigEndian.AppendUint32(hdr, pn)
	aead, iv, hp := quicClientKeys(tb, keyDCID)
	nonce := bytes.Clone(iv)
	for i := range pnLen {
		nonce[len(nonce)-1-i] ^= byte(pn >> (8 * i))
	}
	payload := append(bytes.Clone(frames), make([]byte, payloadLen-len(frames))...)
	pkt := aead.Seal(bytes.Clone(hdr), nonce, payload, hdr)
	var mask [16]byte
	hp.Encrypt(mask[:], pkt[pnOff+4:pnOff+4+16])
	pkt[0] ^= mask[0] & 0x0f
	for i := range pnLen {
		pkt[pnOff+i] ^= mask[1+i]
	}
	return pkt
}

// quicCryptoFrame is a CRYPTO frame of data at off, its varints 4 bytes
// long.
func quicCryptoFrame(off int, data []byte) []byte {
	b := binary.BigEndian.AppendUint32([]byte{0x06}, uint32(off)|0x80000000)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data))|0x80000000)
	return append(b, data...)
}

// quicCryptoFrameOverhead is what a CRYPTO frame and an Initial's header,
// packet number and tag take of a datagram, for dcid.
func quicCryptoFrameOverhead(dcid []byte) int {
	return len(quicLongHeader(0, dcid, 0)) + 4 + 16 + len(quicCryptoFrame(0, nil))
}

// quicHelloStart is the first n Initials of size bytes of a client whose
// ClientHello of helloLen bytes (the handshake header's length) takes more
// than n of them, each filled with CRYPTO data: a flow that sends them
// waits at the gate for the rest. They go to cids connection IDs in turn,
// all under the keys of the first, as a client's Initials do once it
// addresses the server's connection ID: the Assembler derives, and keeps,
// the keys of each connection ID an Initial is sent to (up to 8), to try
// them as a server meeting it would.
func quicHelloStart(tb testing.TB, n, size, helloLen, cids int) [][]byte {
	tb.Helper()
	dcid := func(i int) []byte { return []byte{0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, byte(i % cids)} }
	per := size - quicCryptoFrameOverhead(dcid(0))
	if n*per >= helloLen {
		tb.Fatalf("a %d-byte ClientHello fits %d Initials of %d bytes", helloLen, n, size)
	}
	hello := make([]byte, helloLen)
	hello[0], hello[1], hello[2], hello[3] = 1, byte((helloLen-4)>>16), byte((helloLen-4)>>8), byte(helloLen-4)
	var out [][]byte
	for i := range n {
		out = append(out, quicSealedInitial(tb, dcid(i), dcid(0), uint32(i), quicCryptoFrame(i*per, hello[i*per:(i+1)*per]), size))
	}
	return out
}

// quic0RTT is a 0-RTT datagram of size bytes to dcid. The gate reads no
// 0-RTT packet (it has no keys for them): its payload is not sealed.
func quic0RTT(dcid []byte, size int) []byte {
	hdr := quicLongHeader(1, dcid, 0)
	return append(quicLongHeader(1, dcid, size-len(hdr)), make([]byte, size-len(hdr))...)
}

// quicDCID is the Destination Connection ID of a client's first Initial.
func quicDCID(tb testing.TB, d []byte) []byte {
	tb.Helper()
	if len(d) < 6 || int(d[5]) > 20 || len(d) < 6+int(d[5]) {
		tb.Fatal("not a long header")
	}
	return d[6 : 6+int(d[5])]
}
