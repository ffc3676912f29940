package quic

import (
	"runtime"
	"testing"
)

// TestAssemblerWaitingMemory: an Assembler waiting for the rest of a
// ClientHello holds the CRYPTO bytes it read, its keys, and little else.
// It kept the space its largest Initial was decrypted in (twice that
// Initial: 48 KiB for one of 24 KB reassembled from IP fragments) and a
// CRYPTO copy grown by append (up to twice its bytes), and the QUIC gate
// holds one for each flow waiting there: a client may keep a thousand.
func TestAssemblerWaitingMemory(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes what is measured")
	}
	hello := bigClientHello(t, 40000)
	// initials cuts the start of hello into n Initials of about size
	// bytes, each filled with CRYPTO data (less 64 bytes for the headers,
	// the frame's and the tag), and returns them with the bytes they
	// carry.
	initials := func(n, size int) ([][]byte, int) {
		per := size - 64
		var out [][]byte
		for i := range n {
			f := cryptoFrameBytes(uint64(i*per), hello[i*per:(i+1)*per])
			out = append(out, packet{dcid: testDCID, pn: uint64(i), payload: f, padTo: size}.seal(t))
		}
		return out, n * per
	}
	for _, tc := range []struct {
		name    string
		n, size int
	}{
		{"one Initial of 24,000 bytes", 1, 24000},
		{"two Initials of 8,400 bytes", 2, 8400},
		{"15 Initials of 1,452 bytes", 15, 1452},
		{"one Initial of 1,252 bytes", 1, 1252},
	} {
		t.Run(tc.name, func(t *testing.T) {
			datagrams, crypto := initials(tc.n, tc.size)
			const flows = 64
			as := make([]*Assembler, flows)
			heap0 := settledHeap()
			for i := range as {
				as[i] = new(Assembler)
				for j, d := range datagrams {
					if _, done, err := as[i].Add(d); done || err != nil {
						t.Fatalf("datagram %d: done %v, %v; want the ClientHello incomplete", j, done, err)
					}
				}
			}
			per := (settledHeap() - heap0) / flows
			runtime.KeepAlive(as)
			t.Logf("%d B of CRYPTO data: %d B held (%d B past it)", crypto, per, per-int64(crypto))
			// The CRYPTO bytes, in the allocator's size class (up
			// to 1/8 more), and the keys and the Assembler's state.
			if limit := int64(crypto+crypto/8) + 4<<10; per > limit {
				t.Errorf("a waiting Assembler holds %d B for %d B of CRYPTO data, want %d B at most", per, crypto, limit)
			}
		})
	}
}

// settledHeap is the heap in use after two collections: the second
// empties the pools' victim caches.
func settledHeap() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// TestCryptoStreamKeptAtItsSize: CRYPTO data read in order extends a
// chunk by append, which leaves room past its bytes (a quarter more, and
// twice for small ones); the Assembler is kept while it waits for the rest
// of the ClientHello and once it is decided, so after each datagram its
// stream holds its bytes and no room past them.
func TestCryptoStreamKeptAtItsSize(t *testing.T) {
	hello := bigClientHello(t, 20000)
	var a Assembler
	const per = 1300
	for i := 0; (i+1)*per < len(hello); i++ {
		// Two frames a datagram: the second extends the first's chunk.
		f := concat(cryptoFrameBytes(uint64(i*per), hello[i*per:i*per+per/2]), cryptoFrameBytes(uint64(i*per+per/2), hello[i*per+per/2:(i+1)*per]))
		if _, done, err := a.Add(packet{dcid: testDCID, pn: uint64(i), payload: f, padTo: 1452}.seal(t)); done || err != nil {
			t.Fatalf("datagram %d: done %v, %v", i, done, err)
		}
		for _, c := range a.stream.chunks {
			if cap(c.data) != len(c.data) {
				t.Fatalf("after datagram %d, a chunk of %d bytes has room for %d", i, len(c.data), cap(c.data))
			}
		}
	}
	if len(a.stream.chunks) != 1 {
		t.Errorf("%d chunks, want the one", len(a.stream.chunks))
	}
}

// TestCryptoStreamGrowthBounded: a chunk extended in order is given room
// for what the rest of its packet's frames may add, but no further than
// the next chunk: a packet whose frames extend many chunks by a byte each,
// each of them followed by tens of KB of frames, must not give every one
// of them that room (100 chunks would take 6 MB for one datagram).
func TestCryptoStreamGrowthBounded(t *testing.T) {
	var s cryptoStream
	const chunks, spacing = 100, 512
	for i := range chunks {
		if err := s.insert(uint64(i*spacing), []byte{1}, 0); err != nil {
			t.Fatal(err)
		}
	}
	for i := range chunks {
		if err := s.insert(uint64(i*spacing+1), []byte{2}, 60000); err != nil {
			t.Fatal(err)
		}
	}
	room := 0
	for _, c := range s.chunks {
		if len(c.data) != 2 {
			t.Fatalf("a chunk of %d bytes, want 2", len(c.data))
		}
		room += cap(c.data)
	}
	if room > MaxCryptoLen {
		t.Errorf("%d chunks of 2 bytes have room for %d bytes", len(s.chunks), room)
	}
	s.trim()
	for _, c := range s.chunks {
		if cap(c.data) != len(c.data) {
			t.Fatalf("trimmed, a chunk of %d bytes has room for %d", len(c.data), cap(c.data))
		}
	}
}
