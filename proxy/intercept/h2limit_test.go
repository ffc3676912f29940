package intercept

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// feedChunks feeds b to l in random pieces, as reads would return it.
func feedChunks(rng *rand.Rand, l *h2HeaderLimit, b []byte) error {
	for len(b) > 0 {
		n := min(len(b), 1+rng.IntN(64))
		if rng.IntN(4) == 0 {
			n = min(len(b), 1+rng.IntN(20000))
		}
		if err := l.feed(b[:n]); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// clientStream builds what a client sends after its preface: SETTINGS,
// then for each header list a HEADERS frame (padded, with priority, or
// split into CONTINUATIONs, in turn) with one stream each, and DATA,
// PING and WINDOW_UPDATE frames between them. One encoder encodes every
// block, so later blocks refer to fields earlier ones indexed.
func clientStream(t testing.TB, lists [][]hpack.HeaderField) []byte {
	t.Helper()
	var out, block bytes.Buffer
	fr := http2.NewFramer(&out, nil)
	enc := hpack.NewEncoder(&block)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20}))
	for i, fields := range lists {
		block.Reset()
		for _, f := range fields {
			must(enc.WriteField(f))
		}
		stream := uint32(2*i + 1)
		frag := block.Bytes()
		switch i % 3 {
		case 0:
			must(fr.WriteHeaders(http2.HeadersFrameParam{StreamID: stream, BlockFragment: frag, EndHeaders: true, PadLength: 7}))
		case 1:
			must(fr.WriteHeaders(http2.HeadersFrameParam{StreamID: stream, BlockFragment: frag, EndHeaders: true,
				Priority: http2.PriorityParam{StreamDep: 0, Weight: 9}}))
		case 2:
			third := len(frag) / 3
			must(fr.WriteHeaders(http2.HeadersFrameParam{StreamID: stream, BlockFragment: frag[:third], PadLength: 3}))
			must(fr.WriteContinuation(stream, false, frag[third:2*third]))
			must(fr.WriteContinuation(stream, false, nil))
			must(fr.WriteContinuation(stream, true, frag[2*third:]))
		}
		must(fr.WriteDataPadded(stream, true, []byte("body bytes that are no headers"), make([]byte, 5)))
		must(fr.WritePing(false, [8]byte{1}))
		must(fr.WriteWindowUpdate(0, 1000))
	}
	return out.Bytes()
}

// listSize is a header list's size as HTTP/2 counts it.
func listSize(fields []hpack.HeaderField) uint32 {
	var n uint32
	for _, f := range fields {
		n += f.Size()
	}
	return n
}

// TestH2HeaderLimitAgreesWithServer: over random header lists around the
// limit, fed in random pieces, the limit trips exactly when x/net's own
// server-side framer, reading the same bytes with the same limit, finds a
// list too long; and never on a list within it.
func TestH2HeaderLimitAgreesWithServer(t *testing.T) {
	const max = 4000
	rng := rand.New(rand.NewPCG(7, 9))
	// A trailer field weighs 32 bytes a name it announces (x/net counts
	// it so, on a budget of its own): commas make it heavy.
	names := []string{"cookie", "x-a", "x-b", "user-agent", "accept", "trailer"}
	var over, under int
	defer func() {
		if over < 30 || under < 30 {
			t.Errorf("%d trials over the limit and %d within: the lists miss the limit", over, under)
		}
	}()
	for trial := range 200 {
		var lists [][]hpack.HeaderField
		for range 1 + rng.IntN(6) {
			fields := []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "https"},
				{Name: ":authority", Value: "www.example.test"}, {Name: ":path", Value: "/"}}
			for range rng.IntN(12) {
				name, value := names[rng.IntN(len(names))], strings.Repeat("v", rng.IntN(1200))
				if name == "trailer" {
					value = strings.Repeat(",", rng.IntN(150))
				}
				fields = append(fields, hpack.HeaderField{Name: name, Value: value, Sensitive: rng.IntN(5) == 0})
			}
			lists = append(lists, fields)
		}
		stream := clientStream(t, lists)

		// What the server makes of it.
		sfr := http2.NewFramer(nil, bytes.NewReader(stream))
		sfr.ReadMetaHeaders = hpack.NewDecoder(initialHeaderTableSize, nil)
		sfr.MaxHeaderListSize = max
		serverOver := -1 // the first list the server finds too long
		for i := 0; serverOver < 0; {
			f, err := sfr.ReadFrame()
			if errors.As(err, new(http2.ConnectionError)) {
				serverOver = i // refused outright: too long to decode
			}
			if err != nil {
				break
			}
			if mh, ok := f.(*http2.MetaHeadersFrame); ok {
				if mh.Truncated {
					serverOver = i
				}
				i++
			}
		}

		l := newH2HeaderLimit(max)
		err := feedChunks(rng, l, stream)
		ourOver := -1
		if errors.Is(err, errHeadTooLarge) {
			ourOver = int(l.blockStream-1) / 2
		} else if err != nil {
			t.Fatalf("trial %d: %v", trial, err)
		}
		if ourOver != serverOver {
			sizes := make([]uint32, len(lists))
			for i, fl := range lists {
				sizes[i] = listSize(fl)
			}
			t.Fatalf("trial %d: lists of %v bytes: the limit trips at list %d, the server at %d", trial, sizes, ourOver, serverOver)
		}
		if ourOver >= 0 {
			over++
		} else {
			under++
		}
		if ourOver >= 0 && (!l.newStream || l.lastStream != l.blockStream) {
			t.Fatalf("trial %d: refused stream %d, new %v, last %d", trial, l.blockStream, l.newStream, l.lastStream)
		}
	}
}

// TestH2HeaderLimitUnreadable: frames a server would refuse end the
// connection rather than pass unread.
func TestH2HeaderLimitUnreadable(t *testing.T) {
	frame := func(write func(fr *http2.Framer) error) []byte {
		var b bytes.Buffer
		fr := http2.NewFramer(&b, nil)
		fr.AllowIllegalWrites = true
		if err := write(fr); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	open := frame(func(fr *http2.Framer) error {
		return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte{0x82}})
	})
	for _, tc := range []struct {
		name string
		b    []byte
		code http2.ErrCode // the GOAWAY's, as RFC 9113 has the server's
	}{
		{"continuation alone", frame(func(fr *http2.Framer) error { return fr.WriteContinuation(1, true, []byte{0x82}) }), http2.ErrCodeProtocol},
		{"data inside a block", append(bytes.Clone(open), frame(func(fr *http2.Framer) error { return fr.WriteData(1, true, nil) })...), http2.ErrCodeProtocol},
		{"other stream's continuation", append(bytes.Clone(open), frame(func(fr *http2.Framer) error {
			return fr.WriteContinuation(3, true, []byte{0x82})
		})...), http2.ErrCodeProtocol},
		{"padding past the end", []byte{0, 0, 2, h2TypeHeaders, h2FlagPadded | h2FlagEndHeaders, 0, 0, 0, 1, 9, 0x82}, http2.ErrCodeProtocol},
		{"too short for its fields", []byte{0, 0, 0, h2TypeHeaders, h2FlagPadded | h2FlagEndHeaders, 0, 0, 0, 1}, http2.ErrCodeFrameSize},
		{"bad index", frame(func(fr *http2.Framer) error {
			return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte{0xff, 0x7f}, EndHeaders: true})
		}), http2.ErrCodeCompression},
		{"block cut short", frame(func(fr *http2.Framer) error {
			return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte{0x82, 0x44}, EndHeaders: true})
		}), http2.ErrCodeCompression},
	} {
		l := newH2HeaderLimit(1000)
		err := l.feed(tc.b)
		if g, ok := errors.AsType[*h2GoAway](err); !ok || g.code != tc.code || !strings.HasPrefix(g.why, "frames the appliance cannot read: ") {
			t.Errorf("%s: %v, want a refusal with %v", tc.name, err, tc.code)
		}
		if again := l.feed([]byte{0}); again != err {
			t.Errorf("%s: the error is not kept: %v", tc.name, again)
		}
	}
}

// TestH2FramesBoundaries: the write side knows where the server's frames
// end however its writes cut them.
func TestH2FramesBoundaries(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var out bytes.Buffer
	fr := http2.NewFramer(&out, nil)
	var ends []int // offsets where a frame ends
	mark := func() { ends = append(ends, out.Len()) }
	fr.WriteSettings()
	mark()
	fr.WriteSettingsAck()
	mark()
	for i := range 50 {
		fr.WriteData(1, false, bytes.Repeat([]byte{'d'}, rng.IntN(3000)))
		mark()
		if i%7 == 0 {
			fr.WriteData(1, false, nil) // a frame with no payload
			mark()
		}
	}
	stream := out.Bytes()
	isEnd := map[int]bool{0: true}
	for _, e := range ends {
		isEnd[e] = true
	}
	var f h2Frames
	for off := 0; off < len(stream); {
		n := min(len(stream)-off, 1+rng.IntN(4000))
		// toBoundary says how far the next end is, or that it is past b.
		k := f.toBoundary(stream[off : off+n])
		switch {
		case isEnd[off]:
			if k != 0 {
				t.Fatalf("at %d, a frame end: toBoundary %d", off, k)
			}
		case k < n && !isEnd[off+k] || k == n && !isEnd[off+k] && !f.spans(stream[off:off+n]):
			t.Fatalf("at %d: toBoundary %d is no frame end", off, k)
		}
		f.advance(stream[off:off+n], nil)
		off += n
		if f.atBoundary() != isEnd[off] {
			t.Fatalf("at %d: atBoundary %v", off, f.atBoundary())
		}
	}
}

// spans reports whether b ends inside a frame: toBoundary may then return
// len(b).
func (f *h2Frames) spans(b []byte) bool {
	g := *f
	g.advance(b, nil)
	return !g.atBoundary()
}

// TestH2RefusalBeforeServer: a refusal written before the server wrote
// anything starts with the server's preface, a SETTINGS frame; a trailer
// block gets no 431, its stream may be answering.
func TestH2RefusalBeforeServer(t *testing.T) {
	l := newH2HeaderLimit(100)
	l.blockStream, l.lastStream, l.newStream = 5, 5, true
	read := func(b []byte) []http2.Frame {
		fr := http2.NewFramer(nil, bytes.NewReader(b))
		var out []http2.Frame
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return out
			}
			out = append(out, f)
		}
	}
	fs := read(l.refusal(false))
	if len(fs) != 3 {
		t.Fatalf("%d frames", len(fs))
	}
	if _, ok := fs[0].(*http2.SettingsFrame); !ok {
		t.Errorf("first frame %v, want SETTINGS", fs[0].Header())
	}
	if h, ok := fs[1].(*http2.HeadersFrame); !ok || h.StreamID != 5 || !h.StreamEnded() || !h.HeadersEnded() {
		t.Errorf("second frame %v, want HEADERS ending stream 5", fs[1].Header())
	}
	if g, ok := fs[2].(*http2.GoAwayFrame); !ok || g.LastStreamID != 5 {
		t.Errorf("third frame %v, want GOAWAY", fs[2].Header())
	}
	l.newStream = false
	if fs := read(l.refusal(true)); len(fs) != 1 || fs[0].Header().Type != http2.FrameGoAway {
		t.Errorf("refusal of a trailer block: %d frames", len(fs))
	}
}

// BenchmarkH2HeaderLimit: what following a client's frames costs, per
// byte, for requests with browser-like headers and small bodies.
func BenchmarkH2HeaderLimit(b *testing.B) {
	var lists [][]hpack.HeaderField
	for i := range 20 {
		lists = append(lists, []hpack.HeaderField{
			{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "https"},
			{Name: ":authority", Value: "www.example.test"}, {Name: ":path", Value: "/p" + strings.Repeat("x", i)},
			{Name: "user-agent", Value: "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"},
			{Name: "cookie", Value: "session=" + strings.Repeat("c", 400)},
		})
	}
	stream := clientStream(b, lists)
	b.SetBytes(int64(len(stream)))
	b.ReportAllocs()
	for b.Loop() {
		l := newH2HeaderLimit(h2MaxHeaderList(DefaultMaxHeaderBytes))
		for off := 0; off < len(stream); off += 4096 {
			if err := l.feed(stream[off:min(off+4096, len(stream))]); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// TestH2HeaderLimitLongStringAtOnce: a header block whose literal value
// declares 1 MiB, past a 64 KiB limit, is refused as soon as the value's
// length has been read, in the HEADERS frame that carries it, not once its
// bytes have all come: the limit's decoder never buffers the value, and a
// client trickling it holds nothing for it. Holds SetMaxStringLength on
// the limit's decoder (mutant L03: removed, the decoder buffered each
// CONTINUATION's bytes and the block passed the limit while incomplete).
func TestH2HeaderLimitLongStringAtOnce(t *testing.T) {
	var b bytes.Buffer
	fr := http2.NewFramer(&b, nil)
	// A literal without indexing, new name "x", value of 1 MiB: its length
	// an HPACK integer of 7-bit prefix.
	block := []byte{0x00, 0x01, 'x', 0x7f}
	for v := (1 << 20) - 127; ; v >>= 7 {
		if v < 128 {
			block = append(block, byte(v))
			break
		}
		block = append(block, byte(v&0x7f|0x80))
	}
	block = append(block, bytes.Repeat([]byte{'a'}, 16000)...)
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block}); err != nil {
		t.Fatal(err)
	}
	l := newH2HeaderLimit(h2MaxHeaderList(64 << 10))
	if err := l.feed(b.Bytes()); !errors.Is(err, errHeadTooLarge) {
		t.Fatalf("the HEADERS of a 1 MiB value: %v, want errHeadTooLarge at once", err)
	}
	// The refusal is kept: the value's next CONTINUATIONs find it still.
	for i := 0; i < 6; i++ {
		b.Reset()
		if err := fr.WriteContinuation(1, false, bytes.Repeat([]byte{'a'}, 16384)); err != nil {
			t.Fatal(err)
		}
		if err := l.feed(b.Bytes()); !errors.Is(err, errHeadTooLarge) {
			t.Fatalf("CONTINUATION %d of the 1 MiB value: %v, want errHeadTooLarge", i+1, err)
		}
	}
}
