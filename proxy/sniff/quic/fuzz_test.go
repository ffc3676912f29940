package quic

import (
	"bytes"
	"encoding/binary"
	"slices"
	"testing"
)

// FuzzAssembler's input is a list of datagrams, each with a 2-byte length
// prefix (the last may run to the end), and a mode:
//
//   - raw: the datagrams are fed as they are;
//   - padded: the same, padded to 1200 bytes with zeros (legal padding
//     after QUIC packets), so that short inputs get past the size rule to
//     header parsing and coalescing;
//   - sealed: each datagram is a control byte and the plaintext payload of
//     an Initial, which the harness seals (see sealFuzz). No mutation of
//     ciphertext gets past packet protection, so this is how the fuzzer
//     reaches frame parsing, reassembly and the ClientHello.
//
// The sealed seeds are real: payloads of quic-go's Initials and of the RFC
// example. Protected datagrams are not used as seeds, although the unit
// tests feed many: Go's fuzzer minimizes each input that finds new
// coverage by trying to delete every subset of its bytes, and a datagram
// that cannot be shorter than 1200 bytes makes that take the whole of a
// one-minute run. For the same reason the real ClientHello seeded is
// quic-go's without a post-quantum key share (300 bytes, not 1500).
const (
	fuzzRaw = iota
	fuzzPadded
	fuzzSealed
	fuzzModes

	maxFuzzInput = 6 << 10 // keeps executions (and minimization) fast
)

// Control byte of a sealed datagram.
const (
	ctlPNLen     = 0x03 // packet number length - 1
	ctlToken     = 0x04 // carry a token (as after a Retry)
	ctlSplit     = 0x08 // two coalesced Initials: a 2-byte split offset follows
	ctlZeroRTT   = 0x10 // coalesce a 0-RTT packet after
	ctlServerCID = 0x20 // address the server's CID, keep the original keys
	ctlV2        = 0x40 // QUIC v2
	ctlForeign   = 0x80 // with ctlSplit: a Handshake packet of another DCID between the two Initials
)

// foreignCID is the DCID of the packet ctlForeign puts between two Initials.
var foreignCID = []byte{1, 2, 3, 4}

func splitFuzz(data []byte) [][]byte {
	var out [][]byte
	for len(data) > 0 && len(out) < MaxDatagrams+2 {
		if len(data) < 2 {
			out = append(out, data)
			break
		}
		n := min(int(binary.BigEndian.Uint16(data)), len(data)-2)
		out = append(out, data[2:2+n])
		data = data[2+n:]
	}
	return out
}

func joinFuzz(dgrams ...[]byte) []byte {
	var b []byte
	for _, d := range dgrams {
		b = binary.BigEndian.AppendUint16(b, uint16(len(d)))
		b = append(b, d...)
	}
	return b
}

// sealFuzz builds the i-th datagram of a sealed input.
func sealFuzz(tb testing.TB, i int, in []byte) []byte {
	var ctl byte
	if len(in) > 0 {
		ctl, in = in[0], in[1:]
	}
	p := packet{version: Version1, dcid: testDCID, pnLen: 1 + int(ctl&ctlPNLen)}
	if ctl&ctlV2 != 0 {
		p.version = Version2
	}
	if ctl&ctlToken != 0 {
		p.token = []byte("token")
	}
	if ctl&ctlServerCID != 0 {
		p.dcid, p.keyDCID = []byte{0xaa, 0xbb, 0xcc, 0xdd}, testDCID
	}
	parts := [][]byte{in}
	if ctl&ctlSplit != 0 && len(in) >= 2 {
		at := min(int(binary.BigEndian.Uint16(in)), len(in)-2)
		parts = [][]byte{in[2 : 2+at], in[2+at:]}
	}
	var pkts [][]byte
	for j, part := range parts {
		p.pn, p.payload = uint64(2*i+j), part
		pkts = append(pkts, p.seal(tb))
	}
	if ctl&ctlZeroRTT != 0 {
		pkts = append(pkts, rawLong(tb, p.version, typeZeroRTT, p.dcid, []byte("0-RTT data")))
	}
	// Pad the last Initial's payload, as clients do, rather than the
	// datagram, so that the padding is authenticated too.
	if short := MinInitialDatagram - len(bytes.Join(pkts, nil)); short > 0 {
		last := len(parts) - 1
		p.padTo = len(pkts[last]) + short
		pkts[last] = p.seal(tb)
	}
	if ctl&ctlForeign != 0 && len(pkts) >= 2 {
		pkts = append(pkts[:1], append([][]byte{rawLong(tb, p.version, typeHandshake, foreignCID, []byte("foreign"))}, pkts[1:]...)...)
	}
	return bytes.Join(pkts, nil)
}

// plaintexts returns the decrypted payloads of the first Initial of each
// datagram, PADDING trimmed, each behind a zero control byte.
func plaintexts(tb testing.TB, dgrams [][]byte) [][]byte {
	var out [][]byte
	for _, d := range dgrams {
		h, err := parseLongHeader(d)
		if err != nil || h.typ != typeInitial {
			tb.Fatalf("not an Initial: %v", err)
		}
		k, err := deriveKeys(h.version, h.dcid)
		if err != nil {
			tb.Fatal(err)
		}
		payload, _, err := openPacket(bytes.Clone(d[:h.end]), h.pnOffset, k, -1, new(openScratch))
		if err != nil {
			tb.Fatal(err)
		}
		var ctl byte
		if h.version == Version2 {
			ctl = ctlV2
		}
		out = append(out, append([]byte{ctl}, bytes.TrimRight(payload, "\x00")...))
	}
	return out
}

// splitSeed is a sealed datagram of two coalesced Initials that carry the
// ClientHello ch in two CRYPTO frames.
func splitSeed(ch []byte, ctl byte) []byte {
	first := cryptoFrameBytes(0, ch[:100])
	return concat([]byte{ctl | ctlSplit}, binary.BigEndian.AppendUint16(nil, uint16(len(first))), first, cryptoFrameBytes(100, ch[100:]))
}

func FuzzAssembler(f *testing.F) {
	// Real Initials: quic-go's (one packet without a post-quantum key
	// share) and the RFC example's.
	classic := plaintexts(f, firstFlight(f, capture(f, quicgoV1Class)))
	f.Add(joinFuzz(classic...), byte(fuzzSealed))
	rfc := plaintexts(f, [][]byte{mustHex(f, rfcClientInitialV1)})[0]
	f.Add(joinFuzz(rfc), byte(fuzzSealed))
	f.Add(joinFuzz(plaintexts(f, [][]byte{mustHex(f, rfcClientInitialV2)})[0]), byte(fuzzSealed))

	// The RFC ClientHello in pieces, out of order, retransmitted, with
	// each frame type allowed in an Initial, and the client moving to the
	// server's connection ID.
	ch := rfcClientHello(f)
	f.Add(joinFuzz(splitSeed(ch, ctlV2|ctlZeroRTT|3)), byte(fuzzSealed))
	f.Add(joinFuzz(
		concat([]byte{ctlToken}, cryptoFrameBytes(100, ch[100:]), ackFrame(5, 1, 2, true, 1, 1), pingFrame()),
		concat([]byte{ctlServerCID | 1}, cryptoFrameBytes(0, ch[:120]), connectionCloseFrame(1, "x")),
	), byte(fuzzSealed))
	f.Add(joinFuzz(
		concat([]byte{ctlSplit}, cryptoFrameBytes(3, ch[3:50]), cryptoFrameBytes(0, ch[:3])),
		concat([]byte{2}, ackFrame(3, 0, 3, false, 0, 0)),
		concat([]byte{0}, cryptoFrameBytes(40, ch[40:])),
	), byte(fuzzSealed))

	// After the ClientHello, datagrams for Belongs: the RFC ClientHello,
	// then an ACK with a different ClientHello behind a packet of another
	// connection ID, and both ClientHellos in one Initial.
	evil := bytes.Clone(ch)
	evil[len(evil)-1] ^= 0xff
	ack := ackFrame(0, 0, 0, false)
	f.Add(joinFuzz(
		concat([]byte{0}, cryptoFrameBytes(0, ch)),
		concat([]byte{ctlSplit | ctlForeign}, binary.BigEndian.AppendUint16(nil, uint16(len(ack))), ack, cryptoFrameBytes(0, evil)),
	), byte(fuzzSealed))
	f.Add(joinFuzz(
		concat([]byte{0}, cryptoFrameBytes(0, ch), cryptoFrameBytes(uint64(len(ch)), evil)),
		concat([]byte{0}, cryptoFrameBytes(0, ch)),
	), byte(fuzzSealed))

	// Headers alone.
	f.Add(joinFuzz(mustHex(f, rfcClientInitialV1)[:40]), byte(fuzzPadded))
	zeroRTT := rawLong(f, Version1, typeZeroRTT, testDCID, []byte("0-rtt"))
	f.Add(joinFuzz(concat(zeroRTT, zeroRTT)), byte(fuzzPadded))
	f.Add(joinFuzz([]byte{0xc0, 0, 0, 0, 1, 0, 0, 0, 0}), byte(fuzzRaw))

	f.Fuzz(func(t *testing.T, data []byte, mode byte) {
		if len(data) > maxFuzzInput {
			return
		}
		dgrams := splitFuzz(data)
		switch mode % fuzzModes {
		case fuzzPadded:
			for i, d := range dgrams {
				if len(d) < MinInitialDatagram {
					dgrams[i] = append(bytes.Clone(d), make([]byte, MinInitialDatagram-len(d))...)
				}
			}
		case fuzzSealed:
			for i, d := range dgrams {
				dgrams[i] = sealFuzz(t, i, d)
			}
		}

		var a Assembler
		for _, d := range dgrams {
			IsInitial(d)
			Version(d)
			orig := bytes.Clone(d)
			hello, done, err := a.Add(d)
			if !bytes.Equal(d, orig) {
				t.Fatal("Add modified its datagram")
			}
			// Kept at its bytes, read or refused: the caller holds
			// the Assembler while it waits, and once decided.
			for _, c := range a.stream.chunks {
				if cap(c.data) != len(c.data) {
					t.Fatalf("after Add (err %v), a chunk of %d bytes has room for %d", err, len(c.data), cap(c.data))
				}
			}
			if err != nil {
				if done {
					t.Fatal("done with an error")
				}
				errKind(t, err)
				continue
			}
			if done {
				again, done2, err2 := a.Add(d)
				if !done2 || err2 != nil || again.ServerName != hello.ServerName {
					t.Fatalf("Add after done = %q, %v, %v", again.ServerName, done2, err2)
				}
				// Belongs reads every long-header datagram of a
				// decided flow: every datagram, those read before
				// included, goes through it.
				for _, d := range dgrams {
					checkBelongs(t, &a, d)
				}
				return
			}
		}
	})
}

// checkBelongs runs a.Belongs(d) and checks it against what the datagram
// holds, read independently of the Assembler's own walk: Belongs must
// leave d and the stream as they were, roll back the packet numbers (and a
// Retry) when it refuses, and refuse whenever mustRefuse finds a reason to.
func checkBelongs(t *testing.T, a *Assembler, d []byte) {
	t.Helper()
	before := make([]chunk, len(a.stream.chunks))
	for i, c := range a.stream.chunks {
		before[i] = chunk{off: c.off, data: bytes.Clone(c.data)}
	}
	known, nknown, retried := a.known, a.nknown, a.retried
	why := mustRefuse(t, a, d)
	orig := bytes.Clone(d)
	got := a.Belongs(d)
	if !bytes.Equal(d, orig) {
		t.Fatal("Belongs modified its datagram")
	}
	if len(a.stream.chunks) != len(before) {
		t.Fatalf("Belongs = %v changed the stream from %d chunks to %d", got, len(before), len(a.stream.chunks))
	}
	for i, c := range a.stream.chunks {
		if c.off != before[i].off || !bytes.Equal(c.data, before[i].data) {
			t.Fatalf("Belongs = %v changed the stream's chunk %d", got, i)
		}
	}
	if !got && !slices.EqualFunc(a.known[:a.nknown], known[:nknown], func(x, y knownCID) bool {
		return bytes.Equal(x.dcid, y.dcid) && x.largest == y.largest
	}) {
		t.Fatal("Belongs refused a datagram but kept its packet numbers")
	}
	if !got && a.retried != retried {
		t.Fatal("Belongs refused a datagram but kept its Retry")
	}
	if got && why != "" {
		t.Fatalf("Belongs = true for a datagram with %s", why)
	}
}

// mustRefuse walks d as a server that skips what it cannot use would (every
// long header that parses, RFC 9000 §12.2), and returns why Belongs must
// refuse it, or "" when nothing says so: an Initial of another connection
// than the first packet's, an Initial in a short datagram or that no key
// of the flow opens or that opens under two, an Initial under the keys of
// one connection ID too many, or of a new one other than a Retry's (once,
// with a token and CRYPTO data), CRYPTO data other than the ClientHello's
// bytes, or more than maxCoalesced long-header packets. Packet numbers are
// decoded per connection ID, and fresh for the packet's own keys, as a
// server meeting its DCID for the first time would.
func mustRefuse(t *testing.T, a *Assembler, d []byte) string {
	var hdr [handshakeHeaderLen]byte
	if a.stream.prefixLen() < handshakeHeaderLen {
		t.Fatal("done without a ClientHello header in the stream")
	}
	h4 := a.stream.appendRange(hdr[:0], 0, handshakeHeaderLen)
	msgLen := handshakeHeaderLen + (int(h4[1])<<16 | int(h4[2])<<8 | int(h4[3]))
	known := slices.Clone(a.known[:a.nknown])
	retried := a.retried
	var first longHeader
	for off, pkts := 0, 1; off < len(d); pkts++ {
		h, err := parseLongHeader(d[off:])
		if err != nil {
			return ""
		}
		if pkts > maxCoalesced {
			return "more long-header packets than a client coalesces"
		}
		if off == 0 {
			first = h
		}
		if h.typ == typeInitial {
			if h.version != first.version || !bytes.Equal(h.dcid, first.dcid) {
				return "an Initial of another connection"
			}
			if len(d) < MinInitialDatagram {
				return "an Initial in a short datagram"
			}
			var payload []byte
			var pn uint64
			opened := -1
			own := slices.IndexFunc(known, func(k knownCID) bool { return bytes.Equal(k.dcid, h.dcid) })
			readings := append([]knownCID{{dcid: h.dcid, largest: -1}}, known...)
			for i, r := range readings {
				k, err := deriveKeys(h.version, r.dcid)
				if err != nil {
					t.Fatal(err)
				}
				p, n, err := openPacket(bytes.Clone(d[off:off+h.end]), h.pnOffset, k, r.largest, new(openScratch))
				if err != nil || (opened == 0 && i == own+1 && n == pn) {
					continue
				}
				if opened >= 0 {
					return "an Initial that opens under two keys"
				}
				opened, payload, pn = i, p, n
			}
			if opened < 0 {
				return "an Initial no key of the flow opens"
			}
			if opened == 0 {
				opened = own + 1
			}
			frames, err := parseFrames(payload, nil)
			if err != nil {
				return "an Initial with malformed frames"
			}
			if opened == 0 {
				if retried || len(h.token) == 0 || len(frames) == 0 {
					return "an Initial under the keys of a new connection ID, not a Retry's"
				}
				retried = true
				if len(known) == maxRememberedDCIDs {
					return "an Initial under the keys of a connection ID too many"
				}
				known = append(known, knownCID{dcid: h.dcid, largest: -1})
				opened = len(known)
			}
			known[opened-1].largest = max(known[opened-1].largest, int64(pn))
			for _, f := range frames {
				end := f.offset + uint64(len(f.data))
				if end > uint64(msgLen) {
					return "CRYPTO data past the ClientHello"
				}
				if !bytes.Equal(f.data, a.stream.appendRange(nil, int(f.offset), int(end))) {
					return "CRYPTO data that differs from the ClientHello"
				}
			}
		}
		off += h.end
	}
	return ""
}

// TestFuzzSeeds checks that the seeds do what they are for: the real and
// RFC ones complete a ClientHello through the sealing harness.
func TestFuzzSeeds(t *testing.T) {
	ch := rfcClientHello(t)
	for name, in := range map[string][][]byte{
		"quic-go":                 plaintexts(t, firstFlight(t, capture(t, quicgoV1Class))),
		"rfc v2":                  plaintexts(t, [][]byte{mustHex(t, rfcClientInitialV2)}),
		"rfc v2 split with 0-RTT": {splitSeed(ch, ctlV2|ctlZeroRTT|3)},
		"pieces": {
			concat([]byte{ctlToken}, cryptoFrameBytes(100, ch[100:])),
			concat([]byte{ctlServerCID | 1}, cryptoFrameBytes(0, ch[:120])),
		},
	} {
		t.Run(name, func(t *testing.T) {
			var dgrams [][]byte
			for i, d := range in {
				dgrams = append(dgrams, sealFuzz(t, i, d))
				if n := len(dgrams[i]); n != MinInitialDatagram && len(d) < 1000 {
					t.Errorf("sealed datagram of %d bytes", n)
				}
			}
			var a Assembler
			if i, _ := feed(t, &a, dgrams); i != len(dgrams)-1 {
				t.Fatalf("done at %d of %d", i, len(dgrams))
			}
		})
	}
}
