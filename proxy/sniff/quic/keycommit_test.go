package quic

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"testing"
)

// Review r2q found that Belongs (and Add, at the gate) opened an Initial
// under several keys (its own DCID's, then remembered ones) and decoded
// packet numbers against one largest number shared by every connection ID.
// A client knows all these keys, and AES-GCM does not commit to its key: it
// can build one packet that the server of a NEW connection (fresh DCID Z,
// packet number decoded from -1) reads as a ClientHello for a denied name,
// while the Assembler (Z's keys failing on a packet number decoded against
// a largest number the client raised; the decided DCID's keys opening it)
// read a harmless CONNECTION_CLOSE. The tests below build that packet with
// the GHASH algebra that follows and check that it is refused.

type gf [16]byte

func gfMul(x, y gf) gf {
	var z gf
	v := y
	for i := 0; i < 128; i++ {
		if x[i/8]&(0x80>>(i%8)) != 0 {
			for k := range z {
				z[k] ^= v[k]
			}
		}
		lsb := v[15] & 1
		for k := 15; k > 0; k-- {
			v[k] = v[k]>>1 | v[k-1]<<7
		}
		v[0] >>= 1
		if lsb != 0 {
			v[0] ^= 0xe1
		}
	}
	return z
}

func gfInv(x gf) gf {
	r := gf{0x80}
	t := x
	for k := 1; k <= 127; k++ {
		t = gfMul(t, t)
		r = gfMul(r, t)
	}
	return r
}

func gfPow(x gf, n int) gf {
	r := gf{0x80}
	for ; n > 0; n-- {
		r = gfMul(r, x)
	}
	return r
}

func ghash(h gf, aad, ct []byte) gf {
	var y gf
	blocks := func(b []byte) {
		for len(b) > 0 {
			var blk gf
			n := copy(blk[:], b)
			b = b[n:]
			for k := range y {
				y[k] ^= blk[k]
			}
			y = gfMul(y, h)
		}
	}
	blocks(aad)
	blocks(ct)
	var l gf
	binary.BigEndian.PutUint64(l[:8], uint64(len(aad))*8)
	binary.BigEndian.PutUint64(l[8:], uint64(len(ct))*8)
	for k := range y {
		y[k] ^= l[k]
	}
	return gfMul(y, h)
}

type rawKeys struct {
	blk  cipher.Block
	aead cipher.AEAD
	iv   [12]byte
	hp   cipher.Block
	h    gf
}

func probeKeys(t *testing.T, dcid []byte) *rawKeys {
	initial, _ := hkdfExtract(dcid, paramsV1.salt)
	client, _ := expandLabel(initial, "client in", 32)
	key, _ := expandLabel(client, "quic key", 16)
	iv, _ := expandLabel(client, "quic iv", 12)
	hpk, _ := expandLabel(client, "quic hp", 16)
	blk, _ := aes.NewCipher(key)
	aead, _ := cipher.NewGCM(blk)
	hp, _ := aes.NewCipher(hpk)
	k := &rawKeys{blk: blk, aead: aead, hp: hp}
	copy(k.iv[:], iv)
	var zero gf
	blk.Encrypt(k.h[:], zero[:])
	return k
}

func (k *rawKeys) nonce(pn uint64) [12]byte {
	n := k.iv
	for i := range 8 {
		n[11-i] ^= byte(pn >> (8 * i))
	}
	return n
}

func (k *rawKeys) ctrBlock(nonce [12]byte, ctr uint32) gf {
	var in, out gf
	copy(in[:], nonce[:])
	binary.BigEndian.PutUint32(in[12:], ctr)
	k.blk.Encrypt(out[:], in[:])
	return out
}

// twoKeyInitial builds a datagram with one Initial packet of DCID z that
// opens under z's keys as packet 7 (a new connection's server reads it so)
// carrying a ClientHello for denied.test, and under the keys of d as a
// packet number decoded against largest, carrying one CONNECTION_CLOSE
// frame. It searches about 2^22 ClientHello randoms (well under a second).
func twoKeyInitial(t *testing.T, d, z []byte, largest int64) []byte {
	t.Helper()
	evilCH := bytes.Clone(rfcClientHello(t))
	i := bytes.Index(evilCH, []byte("example.com"))
	copy(evilCH[i:], "denied.test")

	kZ, kR := probeKeys(t, z), probeKeys(t, d)
	const pnZ = 7
	pnLen := 4
	// Header (Length filled in later; always a 2-byte varint).
	hdr := func(length int) []byte {
		b := []byte{0xc0 | byte(pnLen-1)}
		b = binary.BigEndian.AppendUint32(b, Version1)
		b = append(b, byte(len(z)))
		b = append(b, z...)
		b = append(b, 0, 0) // no SCID, no token
		b = binary.BigEndian.AppendUint16(b, uint16(length)|0x4000)
		return binary.BigEndian.AppendUint32(b, pnZ)
	}
	nZ := kZ.nonce(pnZ)
	ksZ0 := kZ.ctrBlock(nZ, 2) // keystream of ciphertext bytes 0..16
	pz := concat([]byte{frameCrypto, 0x00}, binary.BigEndian.AppendUint16(nil, uint16(len(evilCH))|0x4000), evilCH)
	// pz[10:42] is the ClientHello's random: pz[10:16] is varied (it is
	// in the header protection sample), pz[16:32] is the block solved for.
	var (
		found  bool
		V      int
		pnR    uint64
		mZ, mR gf
	)
	for ctr := uint64(0); ctr < 1<<28 && !found; ctr++ {
		var c0 gf
		pz[10], pz[11], pz[12], pz[13], pz[14], pz[15] = byte(ctr), byte(ctr>>8), byte(ctr>>16), byte(ctr>>24), byte(ctr>>32), 0x42
		for k := range c0 {
			c0[k] = pz[k] ^ ksZ0[k]
		}
		kZ.hp.Encrypt(mZ[:], c0[:])
		kR.hp.Encrypt(mR[:], c0[:])
		b0prot := (0xc0 | byte(pnLen-1)) ^ (mZ[0] & 0x0f)
		b0R := b0prot ^ (mR[0] & 0x0f)
		if b0R&0x0f != 0x03 { // 4-byte pn, reserved bits clear
			continue
		}
		var trunc uint64
		for j := 0; j < 4; j++ {
			trunc = trunc<<8 | uint64(byte(pnZ>>(8*(3-j)))^mZ[1+j]^mR[1+j])
		}
		pnR = decodePacketNumber(largest, trunc, 32)
		ksR0 := kR.ctrBlock(kR.nonce(pnR), 2)
		p := func(j int) byte { return c0[j] ^ ksR0[j] }
		if p(0) != frameConnectionClose || p(1)&0xc0 != 0 || p(2)&0xc0 != 0 || p(3)&0xc0 != 0x40 {
			continue
		}
		V = int(p(3)&0x3f)<<8 | int(p(4))
		if V+5 < len(pz) || V+5 > 1300 {
			continue
		}
		found = true
	}
	if !found {
		t.Fatal("no candidate")
	}
	lp := V + 5 // plaintext length: the CONNECTION_CLOSE covers it exactly under d's keys
	pz = append(pz, make([]byte, lp-len(pz))...)
	length := pnLen + lp + 16
	h := hdr(length)
	pnOff := len(h) - pnLen
	// The unprotected header as each side sees it.
	aadZ := bytes.Clone(h)
	aadR := bytes.Clone(h)
	aadR[0] = aadZ[0] ^ (mZ[0] & 0x0f) ^ (mR[0] & 0x0f)
	for j := 0; j < 4; j++ {
		aadR[pnOff+j] = aadZ[pnOff+j] ^ mZ[1+j] ^ mR[1+j]
	}
	nR := kR.nonce(pnR)
	ct := kZ.aead.Seal(nil, nZ[:], pz, aadZ)[:lp]
	// Solve ct[16:32] = X so that the tags agree.
	clear(ct[16:32])
	ej0Z, ej0R := kZ.ctrBlock(nZ, 1), kR.ctrBlock(nR, 1)
	tZ, tR := ghash(kZ.h, aadZ, ct), ghash(kR.h, aadR, ct)
	var rhs gf
	for k := range rhs {
		rhs[k] = tZ[k] ^ ej0Z[k] ^ tR[k] ^ ej0R[k]
	}
	nblk := (lp + 15) / 16
	// ct block index 1 (bytes 16..32): coefficient H^(nblk+1-1).
	cz, cr := gfPow(kZ.h, nblk), gfPow(kR.h, nblk)
	var coef gf
	for k := range coef {
		coef[k] = cz[k] ^ cr[k]
	}
	x := gfMul(rhs, gfInv(coef))
	copy(ct[16:32], x[:])
	tag := ghash(kZ.h, aadZ, ct)
	for k := range tag {
		tag[k] ^= ej0Z[k]
	}
	if _, err := kZ.aead.Open(nil, nZ[:], append(bytes.Clone(ct), tag[:]...), aadZ); err != nil {
		t.Fatal("server view does not open:", err)
	}
	if _, err := kR.aead.Open(nil, nR[:], append(bytes.Clone(ct), tag[:]...), aadR); err != nil {
		t.Fatal("decided connection's view does not open:", err)
	}
	// Protect the header (the server's view: z's hp mask).
	pkt := concat(h, ct, tag[:])
	pkt[0] ^= mZ[0] & 0x0f
	for j := 0; j < 4; j++ {
		pkt[pnOff+j] ^= mZ[1+j]
	}
	if len(pkt) < MinInitialDatagram {
		pkt = append(pkt, make([]byte, MinInitialDatagram-len(pkt))...)
	}

	// What a new connection's server reads in it.
	var server Assembler
	if hello, done, err := server.Add(pkt); !done || err != nil || hello.ServerName != "denied.test" {
		t.Fatalf("the server of a new connection reads %q, %v, %v; want a ClientHello for denied.test", hello.ServerName, done, err)
	}
	return pkt
}

// probeZ is the DCID of the smuggled connection.
var probeZ = []byte{0x5a, 0x5a, 0x5a, 0x5a, 1, 2, 3, 4}

// TestBelongsRefusesTwoKeyInitial: on a flow decided on example.com, a
// PING-only Initial raises the decided connection's largest packet number
// to about 2^32, and then one that opens as a new connection's ClientHello
// for denied.test (and as a CONNECTION_CLOSE under the decided keys) must
// not belong.
func TestBelongsRefusesTwoKeyInitial(t *testing.T) {
	var a Assembler
	if h, done, err := a.Add(initialDatagram(t, 0, cryptoFrameBytes(0, rfcClientHello(t)))); !done || err != nil || h.ServerName != "example.com" {
		t.Fatal(h.ServerName, done, err)
	}
	bump := packet{dcid: testDCID, pn: 0xfffffff0, pnLen: 4, payload: pingFrame(), padTo: MinInitialDatagram}.seal(t)
	if !a.Belongs(bump) {
		t.Fatal("a PING-only Initial of the decided connection was refused")
	}
	if a.Belongs(twoKeyInitial(t, testDCID, probeZ, 0xfffffff0)) {
		t.Error("a new connection's ClientHello for denied.test belongs to the flow decided on example.com")
	}
	// The decided connection goes on.
	if !a.Belongs(packet{dcid: testDCID, pn: 0xfffffff1, pnLen: 4, payload: ackFrame(0, 0, 0, false), padTo: MinInitialDatagram}.seal(t)) {
		t.Error("the decided connection's next ACK was refused")
	}
}

// TestAddRefusesTwoKeyInitial is the same packet sent at the gate, between
// the two halves of the example.com ClientHello: every held datagram is
// relayed once the flow is decided, so Add must refuse it too.
func TestAddRefusesTwoKeyInitial(t *testing.T) {
	ch := rfcClientHello(t)
	var a Assembler
	if _, done, err := a.Add(initialDatagram(t, 0, cryptoFrameBytes(0, ch[:100]))); done || err != nil {
		t.Fatal(done, err)
	}
	bump := packet{dcid: testDCID, pn: 0xfffffff0, pnLen: 4, payload: pingFrame(), padTo: MinInitialDatagram}.seal(t)
	if _, _, err := a.Add(bump); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.Add(twoKeyInitial(t, testDCID, probeZ, 0xfffffff0)); err == nil {
		t.Error("Add took a new connection's ClientHello for denied.test on the flow reading example.com's")
	} else {
		t.Log(err)
	}
	rest := packet{dcid: testDCID, pn: 0xfffffff1, pnLen: 4, payload: cryptoFrameBytes(100, ch[100:]), padTo: MinInitialDatagram}.seal(t)
	if h, done, err := a.Add(rest); !done || err != nil || h.ServerName != "example.com" {
		t.Errorf("the rest of the ClientHello: %q, %v, %v", h.ServerName, done, err)
	}
}
