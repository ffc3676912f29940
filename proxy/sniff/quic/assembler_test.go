package quic

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"runtime"
	"testing"
)

// realFlight returns the datagrams of quic-go's first v1 ClientHello.
func realFlight(t *testing.T) [][]byte {
	t.Helper()
	return firstFlight(t, capture(t, quicgoV1))
}

func TestCraftedInitial(t *testing.T) {
	ch := rfcClientHello(t)
	for _, pnLen := range []int{1, 2, 3, 4} {
		for _, pn := range []uint64{0, 1, 7, 200} {
			for _, v := range []uint32{Version1, Version2} {
				d := packet{version: v, dcid: testDCID, scid: []byte{9, 9}, token: []byte("token"), pn: pn, pnLen: pnLen,
					payload: cryptoFrameBytes(0, ch), padTo: MinInitialDatagram}.seal(t)
				if !IsInitial(d) {
					t.Fatalf("pnLen %d pn %d v %#x: IsInitial false", pnLen, pn, v)
				}
				var a Assembler
				hello, done, err := a.Add(d)
				if err != nil || !done || hello.ServerName != "example.com" {
					t.Fatalf("pnLen %d pn %d v %#x: Add = %q, %v, %v", pnLen, pn, v, hello.ServerName, done, err)
				}
			}
		}
	}
}

func TestPacketNumbersAcrossPackets(t *testing.T) {
	// Packet numbers are decoded relative to the largest seen: a 1-byte
	// encoding of 0x05 after packet 0x1fe means 0x205.
	ch := bigClientHello(t, 1500)
	frames := splitCrypto(ch, 1000)
	d1 := packet{dcid: testDCID, pn: 0x1fe, pnLen: 2, payload: frames[0], padTo: 1200}.seal(t)
	d2 := packet{dcid: testDCID, pn: 0x205, pnLen: 1, payload: frames[1], padTo: 1200}.seal(t)
	var a Assembler
	if i, hello := feed(t, &a, [][]byte{d1, d2}); i != 1 || hello.ServerName != "example.com" {
		t.Fatalf("done at %d, %q", i, hello.ServerName)
	}
}

func TestNotQUIC(t *testing.T) {
	long := packet{dcid: testDCID, payload: cryptoFrameBytes(0, rfcClientHello(t)), padTo: 1200}.seal(t)
	withVersion := func(v uint32) []byte {
		d := bytes.Clone(long)
		binary.BigEndian.PutUint32(d[1:5], v)
		return d
	}
	retry := rawLong(t, Version1, typeZeroRTT, testDCID, make([]byte, 40))
	retry[0] |= 0x30 // v1 Retry type bits
	for name, d := range map[string][]byte{
		"empty":               nil,
		"one byte":            {0xc0},
		"four bytes":          {0xc0, 0, 0, 0},
		"short header":        append([]byte{0x40}, long[1:]...),
		"zeros":               make([]byte, 1200),
		"draft-29":            withVersion(0xff00001d),
		"version negotiation": withVersion(0),
		"grease version":      withVersion(0x1a2a3a4a),
		"retry":               retry,
		"dns query":           []byte("\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01"),
	} {
		t.Run(name, func(t *testing.T) {
			if IsInitial(d) {
				t.Error("IsInitial = true")
			}
			var a Assembler
			wantErr(t, &a, d, ErrNotQUIC)
		})
	}
}

func TestVersion(t *testing.T) {
	if v, ok := Version([]byte{0xc0, 0xff, 0, 0, 0x1d}); !ok || v != 0xff00001d {
		t.Errorf("Version = %#x, %v", v, ok)
	}
	if _, ok := Version([]byte{0x40, 0, 0, 0, 1}); ok {
		t.Error("Version of a short header reported ok")
	}
	if _, ok := Version([]byte{0xc0, 0, 0, 0}); ok {
		t.Error("Version of 4 bytes reported ok")
	}
}

func TestTruncated(t *testing.T) {
	d := realFlight(t)[0]
	for n := range len(d) {
		var a Assembler
		hello, done, err := a.Add(d[:n])
		if err == nil || done {
			t.Fatalf("truncated to %d bytes: Add = %q, %v, %v", n, hello.ServerName, done, err)
		}
		want := ErrMalformed
		if n < longFixedLen {
			want = ErrNotQUIC
		}
		if got := errKind(t, err); got != want {
			t.Fatalf("truncated to %d bytes: %v, want %v", n, err, want)
		}
	}
}

func TestSmallDatagram(t *testing.T) {
	// A complete Initial in 600 bytes parses as a header, but servers drop
	// it (RFC 9000 §14.1), so the Assembler refuses it.
	d := packet{dcid: testDCID, payload: cryptoFrameBytes(0, rfcClientHello(t)), padTo: 600}.seal(t)
	if !IsInitial(d) {
		t.Error("IsInitial = false")
	}
	var a Assembler
	wantErr(t, &a, d, ErrMalformed)
}

func TestHeaderFields(t *testing.T) {
	base := packet{dcid: testDCID, payload: cryptoFrameBytes(0, rfcClientHello(t)), padTo: 1200}.seal(t)
	mutate := func(f func(d []byte) []byte) []byte { return f(bytes.Clone(base)) }
	for name, d := range map[string][]byte{
		"dcid length 21":  mutate(func(d []byte) []byte { d[5] = 21; return d }),
		"dcid length 255": mutate(func(d []byte) []byte { d[5] = 255; return d }),
		"length too big": mutate(func(d []byte) []byte {
			off := 5 + 1 + len(testDCID) + 1 + 1 // no SCID, empty token
			binary.BigEndian.PutUint16(d[off:], 0x4000|uint16(len(d)))
			return d
		}),
		"token past end": mutate(func(d []byte) []byte {
			d[5+1+len(testDCID)+1] = 0x7f // token length 0x3fxx: 2-byte varint, ~16 KB
			return d
		}),
		"length zero": mutate(func(d []byte) []byte {
			off := 5 + 1 + len(testDCID) + 1 + 1
			binary.BigEndian.PutUint16(d[off:], 0x4000)
			return d
		}),
	} {
		t.Run(name, func(t *testing.T) {
			var a Assembler
			t.Log(wantErr(t, &a, d, ErrMalformed))
		})
	}
}

func TestTampered(t *testing.T) {
	flight := realFlight(t)
	hdr, err := parseLongHeader(flight[0])
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(7, 7))
	for range 50 {
		// Flip one bit anywhere after the DCID: in the rest of the header,
		// the packet number, the ciphertext or the tag. (A flipped DCID
		// just derives other keys, and fails the same way.)
		d := bytes.Clone(flight[0])
		i := hdr.pnOffset + rng.IntN(hdr.end-hdr.pnOffset)
		d[i] ^= 1 << rng.IntN(8)
		var a Assembler
		wantErr(t, &a, d, ErrMalformed)
		// Nothing was kept from the refused datagram: the genuine ones
		// still complete the ClientHello.
		if i, hello := feed(t, &a, flight); i != len(flight)-1 || hello.ServerName != testServerName {
			t.Fatalf("after a tampered datagram: done at %d, %q", i, hello.ServerName)
		}
	}
}

func TestWrongKeys(t *testing.T) {
	// An Initial protected with keys of another DCID (a server's, or
	// random) does not authenticate.
	d := packet{dcid: testDCID, keyDCID: []byte("otherdcid"), payload: cryptoFrameBytes(0, rfcClientHello(t)), padTo: 1200}.seal(t)
	var a Assembler
	wantErr(t, &a, d, ErrMalformed)
}

func TestGarbage(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	prefixes := [][]byte{nil, {0xc0, 0, 0, 0, 1}, {0xd0, 0x6b, 0x33, 0x43, 0xcf}, {0xc0, 0, 0, 0, 1, 8}}
	for i := range 2000 {
		p := prefixes[i%len(prefixes)]
		d := append(bytes.Clone(p), make([]byte, rng.IntN(1500))...)
		for j := len(p); j < len(d); j++ {
			d[j] = byte(rng.Uint32())
		}
		IsInitial(d)
		var a Assembler
		if _, done, err := a.Add(d); err == nil && done {
			t.Fatalf("garbage %x completed a ClientHello", d)
		} else if err != nil {
			errKind(t, err)
		}
	}
}

func TestCryptoReassembly(t *testing.T) {
	ch := bigClientHello(t, 2500)
	dg := func(pn uint64, frames ...[]byte) []byte { return initialDatagram(t, pn, frames...) }
	n := len(ch)
	part := func(from, to int) []byte { return cryptoFrameBytes(uint64(from), ch[from:to]) }

	t.Run("overlapping and duplicated", func(t *testing.T) {
		seq := [][]byte{
			dg(0, part(0, 900)),
			dg(1, part(400, 1000), part(0, 10)), // overlaps both ways
			dg(2, part(0, 900)),                 // duplicate
			dg(3, part(1000, 1900), part(950, 1050)),
			dg(4, part(1800, n)),
		}
		var a Assembler
		if i, hello := feed(t, &a, seq); i != 4 || hello.ServerName != "example.com" {
			t.Fatalf("done at %d, %q", i, hello.ServerName)
		}
	})

	t.Run("out of order within a packet", func(t *testing.T) {
		// Chrome shuffles CRYPTO frames and interleaves PING and PADDING.
		seq := [][]byte{
			dg(0, part(1100, 1500), pingFrame(), part(0, 300), []byte{0, 0, 0}, part(700, 1100), part(300, 700)),
			dg(1, part(2000, n), pingFrame(), part(1500, 2000)),
		}
		var a Assembler
		if i, _ := feed(t, &a, seq); i != 1 {
			t.Fatalf("done at %d", i)
		}
	})

	t.Run("coalesced Initials", func(t *testing.T) {
		p1 := packet{dcid: testDCID, pn: 0, payload: part(0, 1000)}.seal(t)
		p2 := packet{dcid: testDCID, pn: 1, payload: part(1000, n)}.seal(t)
		var a Assembler
		if i, _ := feed(t, &a, [][]byte{concat(p1, p2)}); i != 0 {
			t.Fatalf("done at %d", i)
		}
	})

	t.Run("conflicting data", func(t *testing.T) {
		bad := bytes.Clone(ch[500:600])
		bad[50] ^= 0xff
		var a Assembler
		if i, _ := feed(t, &a, [][]byte{dg(0, part(0, 900))}); i >= 0 {
			t.Fatal("done early")
		}
		wantErr(t, &a, dg(1, cryptoFrameBytes(500, bad)), ErrMalformed)
		// Within one packet too.
		var b Assembler
		wantErr(t, &b, dg(0, part(0, 900), cryptoFrameBytes(500, bad)), ErrMalformed)
	})

	t.Run("not a ClientHello", func(t *testing.T) {
		sh := bytes.Clone(ch)
		sh[0] = 2 // ServerHello
		var a Assembler
		wantErr(t, &a, dg(0, cryptoFrameBytes(0, sh[:100])), ErrMalformed)
	})

	t.Run("not well-formed", func(t *testing.T) {
		// A complete handshake message too short to hold a ClientHello.
		bad := []byte{typeClientHello, 0, 0, 10, 3, 3, 1, 2, 3, 4, 5, 6, 7, 8}
		var a Assembler
		t.Log(wantErr(t, &a, dg(0, cryptoFrameBytes(0, bad)), ErrMalformed))
	})

	t.Run("empty frames and ACK-only packets", func(t *testing.T) {
		seq := [][]byte{
			dg(0, cryptoFrameBytes(0, nil), part(0, 1000)),
			dg(1, ackFrame(0, 0, 0, false)),
			dg(2, part(1000, n)),
		}
		var a Assembler
		if i, _ := feed(t, &a, seq); i != 2 {
			t.Fatalf("done at %d", i)
		}
	})
}

func TestFrames(t *testing.T) {
	ch := rfcClientHello(t)
	crypto := cryptoFrameBytes(0, ch)
	good := map[string][]byte{
		"ping":             pingFrame(),
		"ack":              ackFrame(10, 3, 2, false),
		"ack with ranges":  ackFrame(100, 3, 2, false, 1, 5, 0, 3),
		"ack ecn":          ackFrame(100, 3, 2, true, 1, 5),
		"connection close": connectionCloseFrame(0x0a, "bye"),
		"padding":          make([]byte, 10),
	}
	for name, f := range good {
		t.Run(name, func(t *testing.T) {
			var a Assembler
			if i, _ := feed(t, &a, [][]byte{initialDatagram(t, 0, f, crypto)}); i != 0 {
				t.Fatal("not done")
			}
		})
	}
	bad := map[string][]byte{
		"stream":                   {0x08, 0x00, 'x'},
		"new token":                {0x07, 0x01, 'x'},
		"application close":        {0x1d, 0x00, 0x00},
		"handshake done":           {0x1e},
		"ping two-byte type":       {0x40, 0x01},
		"truncated ack":            ackFrame(10, 3, 2, false)[:3],
		"ack range count too big":  {frameAck, 10, 0, 0x3f, 0},
		"ack first range too big":  ackFrame(10, 3, 11, false),
		"truncated ecn":            ackFrame(100, 3, 2, true)[:7],
		"crypto length past end":   {frameCrypto, 0, 0x7f, 0xff},
		"crypto truncated":         {frameCrypto, 0x40},
		"close reason past end":    {frameConnectionClose, 0, 0, 0x7f, 0xff},
		"close truncated":          {frameConnectionClose, 0x80, 0},
		"crypto offset overflow":   concat([]byte{frameCrypto}, appendVarint(nil, maxVarint), []byte{1, 'x'}),
		"crypto beyond max stream": cryptoFrameBytes(MaxCryptoLen, []byte{1}),
	}
	for name, f := range bad {
		t.Run(name, func(t *testing.T) {
			// The bad frame comes last so that PADDING cannot follow it
			// and read as part of it.
			d := packet{dcid: testDCID, payload: concat(make([]byte, 1150), cryptoFrameBytes(0, ch[:10]), f)}.seal(t)
			var a Assembler
			want := ErrMalformed
			if name == "crypto beyond max stream" {
				want = ErrTooLarge
			}
			t.Log(wantErr(t, &a, d, want))
		})
	}
	t.Run("no frames", func(t *testing.T) {
		// An empty payload: padded with a zero-length coalesced filler so
		// the datagram is 1200 bytes.
		p := packet{dcid: testDCID, pnLen: 4}.seal(t)
		var a Assembler
		t.Log(wantErr(t, &a, concat(p, make([]byte, 1200)), ErrMalformed))
	})
}

func TestCoalescedOtherPackets(t *testing.T) {
	ch := rfcClientHello(t)
	initial := packet{dcid: testDCID, payload: cryptoFrameBytes(0, ch)}.seal(t)
	zeroRTT := rawLong(t, Version1, typeZeroRTT, testDCID, bytes.Repeat([]byte{0xee}, 300))
	handshake := rawLong(t, Version1, typeHandshake, testDCID, bytes.Repeat([]byte{0xdd}, 100))
	otherHandshake := rawLong(t, Version1, typeHandshake, []byte("another-conn"), bytes.Repeat([]byte{0xdd}, 100))
	pad := func(d []byte) []byte { return append(d, make([]byte, max(0, 1200-len(d)))...) }

	for name, d := range map[string][]byte{
		"0-RTT after":                          pad(concat(initial, zeroRTT)),
		"handshake and 0-RTT after":            pad(concat(initial, handshake, zeroRTT)),
		"another connection's handshake after": pad(concat(initial, otherHandshake)),
		"short header after":                   concat(initial, []byte{0x40}, bytes.Repeat([]byte{0xab}, 1200)),
		"garbage long header after":            concat(initial, []byte{0xc0, 0, 0}, make([]byte, 1200)),
		// A server reads on past a packet it cannot use (RFC 9000
		// §12.2): an Initial behind one starts a connection all the
		// same.
		"behind 0-RTT":     pad(concat(zeroRTT, initial)),
		"behind handshake": pad(concat(handshake, initial)),
	} {
		t.Run(name, func(t *testing.T) {
			if !IsInitial(d) {
				t.Error("IsInitial = false")
			}
			var a Assembler
			if i, hello := feed(t, &a, [][]byte{d}); i != 0 || hello.ServerName != "example.com" {
				t.Fatalf("done at %d, %q", i, hello.ServerName)
			}
		})
	}

	t.Run("another connection's Initial after", func(t *testing.T) {
		// A second connection's ClientHello riding along with the one
		// decided on: refused while the ClientHello is read, as Belongs
		// refuses it after.
		other := packet{dcid: []byte("another-conn"), payload: cryptoFrameBytes(0, ch)}.seal(t)
		if !IsInitial(other) {
			t.Fatal("IsInitial(other) = false")
		}
		for _, d := range [][]byte{
			pad(concat(initial, other)),
			pad(concat(zeroRTT, other)), // nothing of the first read at all
		} {
			var a Assembler
			wantErr(t, &a, d, ErrMalformed)
		}
	})

	t.Run("0-RTT and handshake only", func(t *testing.T) {
		if d := pad(concat(zeroRTT, handshake)); IsInitial(d) {
			t.Error("IsInitial = true")
		}
	})

	t.Run("0-RTT only", func(t *testing.T) {
		// Nothing to read, not an error: the Initial may be late.
		var a Assembler
		d := pad(zeroRTT)
		if IsInitial(d) {
			t.Error("IsInitial(0-RTT) = true")
		}
		if _, done, err := a.Add(d); done || err != nil {
			t.Fatalf("Add(0-RTT) = %v, %v", done, err)
		}
		if i, _ := feed(t, &a, [][]byte{pad(initial)}); i != 0 {
			t.Fatal("not done")
		}
	})

	t.Run("tampered Initial after a good one", func(t *testing.T) {
		second := packet{dcid: testDCID, pn: 1, payload: pingFrame()}.seal(t)
		second[len(second)-1] ^= 1
		var a Assembler
		wantErr(t, &a, pad(concat(initial, second)), ErrMalformed)
	})
}

func TestConnectionIDChanges(t *testing.T) {
	ch := bigClientHello(t, 1500)
	frames := splitCrypto(ch, 1000)
	serverCID := []byte{0xaa, 0xbb, 0xcc, 0xdd}

	t.Run("after the server's Initial", func(t *testing.T) {
		// The client now addresses the server's connection ID but keeps
		// the keys of its original DCID (RFC 9001 §5.2).
		d1 := packet{dcid: testDCID, pn: 0, payload: frames[0], padTo: 1200}.seal(t)
		d2 := packet{dcid: serverCID, keyDCID: testDCID, pn: 1, payload: frames[1], padTo: 1200}.seal(t)
		var a Assembler
		if i, hello := feed(t, &a, [][]byte{d1, d2}); i != 1 || hello.ServerName != "example.com" {
			t.Fatalf("done at %d, %q", i, hello.ServerName)
		}
	})

	t.Run("after a Retry", func(t *testing.T) {
		// A Retry makes the client derive new keys from the server's
		// connection ID and send the ClientHello again from offset 0.
		d1 := packet{dcid: testDCID, pn: 0, payload: frames[0], padTo: 1200}.seal(t)
		r1 := packet{dcid: serverCID, token: []byte("retry token"), pn: 1, payload: frames[0], padTo: 1200}.seal(t)
		r2 := packet{dcid: serverCID, token: []byte("retry token"), pn: 2, payload: frames[1], padTo: 1200}.seal(t)
		var a Assembler
		if i, _ := feed(t, &a, [][]byte{d1, r1, r2}); i != 2 {
			t.Fatalf("done at %d", i)
		}
	})

	t.Run("compatible version negotiation", func(t *testing.T) {
		// A v1 first flight, then v2 packets with keys from the same DCID
		// (RFC 9368).
		d1 := packet{dcid: testDCID, pn: 0, payload: frames[0], padTo: 1200}.seal(t)
		d2 := packet{version: Version2, dcid: serverCID, keyDCID: testDCID, pn: 1, payload: frames[1], padTo: 1200}.seal(t)
		var a Assembler
		if i, _ := feed(t, &a, [][]byte{d1, d2}); i != 1 {
			t.Fatalf("done at %d", i)
		}
	})
}

func TestBounds(t *testing.T) {
	ch := rfcClientHello(t)

	t.Run("datagrams", func(t *testing.T) {
		var a Assembler
		ping := initialDatagram(t, 0, pingFrame())
		for i := range MaxDatagrams {
			if _, done, err := a.Add(ping); done || err != nil {
				t.Fatalf("datagram %d: %v, %v", i, done, err)
			}
		}
		wantErr(t, &a, initialDatagram(t, 1, cryptoFrameBytes(0, ch)), ErrTooLarge)
	})

	t.Run("refused datagrams count", func(t *testing.T) {
		var a Assembler
		for range MaxDatagrams {
			wantErr(t, &a, []byte("junk"), ErrNotQUIC)
		}
		wantErr(t, &a, initialDatagram(t, 1, cryptoFrameBytes(0, ch)), ErrTooLarge)
	})

	t.Run("stream offset", func(t *testing.T) {
		var a Assembler
		wantErr(t, &a, initialDatagram(t, 0, cryptoFrameBytes(MaxCryptoLen-10, make([]byte, 11))), ErrTooLarge)
		// Just below the bound is kept (and costs only what arrived).
		if _, done, err := a.Add(initialDatagram(t, 0, cryptoFrameBytes(MaxCryptoLen-10, make([]byte, 10)))); done || err != nil {
			t.Fatalf("Add = %v, %v", done, err)
		}
	})

	t.Run("ClientHello length", func(t *testing.T) {
		big := bytes.Clone(ch[:50])
		big[1], big[2], big[3] = 0x01, 0x00, 0x00 // 64 KiB body
		var a Assembler
		wantErr(t, &a, initialDatagram(t, 0, cryptoFrameBytes(0, big)), ErrTooLarge)
	})

	t.Run("fragments", func(t *testing.T) {
		// Tiny frames, out of order, with gaps: at most maxChunks pieces.
		var frames [][]byte
		for i := range maxChunks + 1 {
			frames = append(frames, cryptoFrameBytes(uint64(2000-10*i), []byte{1}))
		}
		var a Assembler
		wantErr(t, &a, initialDatagram(t, 0, frames...), ErrTooLarge)
		// In order, the same number of frames is one piece.
		frames = frames[:0]
		for i := range maxChunks + 1 {
			frames = append(frames, cryptoFrameBytes(uint64(i), ch[i:i+1]))
		}
		var b Assembler
		if _, done, err := b.Add(initialDatagram(t, 0, frames...)); done || err != nil {
			t.Fatalf("Add = %v, %v", done, err)
		}
		if len(b.stream.chunks) != 1 {
			t.Errorf("%d chunks", len(b.stream.chunks))
		}
	})
}

func TestAddDoesNotModifyInput(t *testing.T) {
	for _, d := range realFlight(t) {
		orig := bytes.Clone(d)
		var a Assembler
		a.Add(d)
		if !bytes.Equal(d, orig) {
			t.Fatal("Add modified its datagram")
		}
	}
}

func TestAllocationsBounded(t *testing.T) {
	// A 1200-byte datagram claiming CRYPTO data near the 64 KiB bound must
	// not make the Assembler allocate for the whole range.
	d := initialDatagram(t, 0, cryptoFrameBytes(MaxCryptoLen-100, make([]byte, 100)))
	const runs = 50
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range runs {
		var a Assembler
		if _, done, err := a.Add(d); done || err != nil {
			t.Fatalf("Add = %v, %v", done, err)
		}
	}
	runtime.ReadMemStats(&after)
	if per := (after.TotalAlloc - before.TotalAlloc) / runs; per > 16<<10 {
		t.Errorf("%d bytes allocated for one 1200-byte datagram", per)
	} else {
		t.Logf("%d bytes allocated for one 1200-byte datagram", per)
	}
}
