package intercept

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Fuzz targets for HTTP/2: the client's frames and header blocks the
// header list limit and the guards read (h2limit.go, h2guard.go), and the
// server's frames the client connection follows and patches on their way
// out.

// fuzzPieces cuts b into pieces whose sizes come from sizes (1 to 256
// bytes each, then the rest at once).
func fuzzPieces(b, sizes []byte) [][]byte {
	var out [][]byte
	for len(b) > 0 {
		n := len(b)
		if len(sizes) > 0 {
			n = min(n, 1+int(sizes[0]))
			sizes = sizes[1:]
		}
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}

// h2ClientSeeds are what clients send past the preface, as the HTTP/2
// tests build it with x/net's Framer: SETTINGS, header blocks padded, with
// priority, split into CONTINUATIONs, a trailer block, DATA, PING,
// WINDOW_UPDATE, RST_STREAM, a block naming an indexed value again and
// again, and frames the limit refuses (over the frame size, a block
// interrupted, CONTINUATION alone, padding past the frame).
func h2ClientSeeds(t testing.TB) [][]byte {
	fields := func(extra ...hpack.HeaderField) []hpack.HeaderField {
		return append([]hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "https"},
			{Name: ":authority", Value: "www.example.test"}, {Name: ":path", Value: "/"}}, extra...)
	}
	seeds := [][]byte{
		clientStream(t, [][]hpack.HeaderField{fields(), fields(hpack.HeaderField{Name: "cookie", Value: "a=b"}),
			fields(hpack.HeaderField{Name: "trailer", Value: ",,,,"}, hpack.HeaderField{Name: "x-a", Value: "v", Sensitive: true})}),
		clientStream(t, [][]hpack.HeaderField{fields(hpack.HeaderField{Name: "x-a", Value: strings.Repeat("v", 300)})}),
	}
	frames := func(write func(fr *http2.Framer, block []byte)) []byte {
		var out, block bytes.Buffer
		enc := hpack.NewEncoder(&block)
		for _, f := range fields(hpack.HeaderField{Name: "x-a", Value: strings.Repeat("a", 400)}) {
			_ = enc.WriteField(f)
		}
		write(http2.NewFramer(&out, nil), block.Bytes())
		return out.Bytes()
	}
	seeds = append(seeds,
		frames(func(fr *http2.Framer, b []byte) { // a request, its body, its trailer block, a reset
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b, EndHeaders: true})
			_ = fr.WriteData(1, false, []byte("body"))
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte{0x40, 1, 'x', 1, 'y'}, EndHeaders: true, EndStream: true})
			_ = fr.WriteRSTStream(3, http2.ErrCodeCancel)
			_ = fr.WriteRSTStream(1, http2.ErrCodeCancel)
		}),
		frames(func(fr *http2.Framer, b []byte) { // a header block interrupted
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:3]})
			_ = fr.WriteData(1, true, nil)
		}),
		frames(func(fr *http2.Framer, b []byte) { // CONTINUATION with no block
			_ = fr.WriteContinuation(1, true, b)
		}),
		frames(func(fr *http2.Framer, b []byte) { // a frame over the size advertised
			_ = fr.WriteData(1, true, make([]byte, h2MaxFrameSize+1))
		}),
		[]byte{0, 0, 2, h2TypeHeaders, h2FlagEndHeaders | h2FlagPadded, 0, 0, 0, 1, 9, 0x82}, // padding past the frame
		[]byte{0, 0, 1, h2TypeHeaders, h2FlagEndHeaders | h2FlagPriority, 0, 0, 0, 1, 0},     // priority past the frame
	)
	// One value indexed, then named by index again and again (h2guard.go's
	// expansion budget), and a literal declaring more than any list may
	// hold.
	var rep bytes.Buffer
	fr := http2.NewFramer(&rep, nil)
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for i := range 40 {
		block.Reset()
		for _, f := range fields() {
			_ = enc.WriteField(f)
		}
		for range 15 {
			_ = enc.WriteField(hpack.HeaderField{Name: "x-a", Value: strings.Repeat("a", 4000)})
		}
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: block.Bytes(), EndHeaders: true, EndStream: true})
	}
	seeds = append(seeds, rep.Bytes(), []byte{0, 0, 6, h2TypeHeaders, h2FlagEndHeaders, 0, 0, 0, 1, 0x40, 0x7f, 0x81, 0xff, 0x3f, 0})
	return seeds
}

// FuzzH2HeaderLimit feeds a client's bytes past its preface to the header
// list limit and the guards that read them (h2HeaderLimit.feed), in one
// piece and in pieces the fuzzer chooses, under a limit of maxHead+1
// bytes of HTTP/1 head. The limit follows a byte stream, whatever reads
// cut it into (TestH2HeaderLimitAgreesWithServer feeds it in random
// pieces): beyond no panic, both ways give the same verdict, an error or
// none, and when none the same streams opened and reset; an error is
// sticky and one of those feed documents; and the refusal written after
// an error is frames x/net reads.
func FuzzH2HeaderLimit(f *testing.F) {
	for i, s := range h2ClientSeeds(f) {
		f.Add(s, []byte{}, uint16(65535))
		f.Add(s, []byte{0, 8, 1, 200, 255, 3}, uint16(i*97))
	}
	f.Fuzz(func(t *testing.T, data, sizes []byte, maxHead uint16) {
		max := h2MaxHeaderList(int64(maxHead) + 1)
		whole := newH2HeaderLimit(max)
		whole.unanswered = &h2Unanswered{}
		werr := whole.feed(data)
		cut := newH2HeaderLimit(max)
		cut.unanswered = &h2Unanswered{}
		var cerr error
		for _, p := range fuzzPieces(data, sizes) {
			if err := cut.feed(p); cerr != nil && err != cerr {
				t.Fatalf("after %v, a feed returned %v", cerr, err)
			} else if cerr == nil {
				cerr = err
			}
		}
		if (werr == nil) != (cerr == nil) {
			t.Fatalf("in one piece: %v; in pieces: %v", werr, cerr)
		}
		if werr == nil {
			if whole.opened != cut.opened || whole.lastStream != cut.lastStream || whole.resets != cut.resets ||
				whole.units != cut.units || whole.pending() != cut.pending() {
				t.Fatalf("in one piece: %d opened, last %d, %d resets, %d units, pending %v; in pieces: %d, %d, %d, %d, %v",
					whole.opened, whole.lastStream, whole.resets, whole.units, whole.pending(),
					cut.opened, cut.lastStream, cut.resets, cut.units, cut.pending())
			}
			return
		}
		for _, l := range []*h2HeaderLimit{whole, cut} {
			err := l.err
			if _, ok := errors.AsType[*h2GoAway](err); !ok && err != errHeadTooLarge {
				t.Fatalf("an error feed does not document: %v", err)
			}
			if again := l.feed([]byte{0}); again != err {
				t.Fatalf("after %v, a feed returned %v", err, again)
			}
			for _, started := range []bool{false, true} {
				rd := http2.NewFramer(nil, bytes.NewReader(l.refusal(started)))
				for {
					if _, err := rd.ReadFrame(); err != nil {
						if !errors.Is(err, io.EOF) {
							t.Fatalf("the refusal after %v: %v", l.err, err)
						}
						break
					}
				}
			}
		}
	})
}

// h2Frame is a frame of the server's, as an independent walk of its bytes
// finds it: where its header ends and where it does.
type h2Frame struct {
	hdrEnd, end int
	typ         byte
	stream      uint32
}

// h2Walk returns the frames of b, the last one perhaps unfinished.
func h2Walk(b []byte) []h2Frame {
	var fs []h2Frame
	for at := 0; at < len(b); {
		f := h2Frame{hdrEnd: at + h2FrameHeaderLen}
		if f.hdrEnd <= len(b) {
			h := b[at:]
			f.end = f.hdrEnd + (int(h[0])<<16 | int(h[1])<<8 | int(h[2]))
			f.typ = h[3]
			f.stream = (uint32(h[5])<<24 | uint32(h[6])<<16 | uint32(h[7])<<8 | uint32(h[8])) & (1<<31 - 1)
		} else {
			f.end = f.hdrEnd
		}
		fs = append(fs, f)
		at = f.end
	}
	return fs
}

// settingsPatched returns b as the client must get it: in its first frame,
// if that is a SETTINGS frame, each value byte of a
// SETTINGS_MAX_FRAME_SIZE or SETTINGS_MAX_CONCURRENT_STREAMS is the
// appliance's; nothing else changes.
func settingsPatched(b []byte) []byte {
	out := bytes.Clone(b)
	if len(b) < 4 || b[3] != h2TypeSettings {
		return out
	}
	end := h2FrameHeaderLen + (int(b[0])<<16 | int(b[1])<<8 | int(b[2]))
	for p := h2FrameHeaderLen; p < min(end, len(b)); p++ {
		q := (p - h2FrameHeaderLen) % 6
		if q < 2 {
			continue
		}
		if id := uint16(b[p-q])<<8 | uint16(b[p-q+1]); id == h2SettingMaxFrameSz || id == h2SettingMaxStreams {
			out[p] = byte(advertisedSetting(id) >> (8 * (5 - q)))
		}
	}
	return out
}

// FuzzH2Frames writes a server's bytes to an HTTP/2 client through the
// client connection (hijackedConn.write: h2Frames.patchSettings, step,
// advance, toBoundary), in writes the fuzzer cuts, with the header list
// refusal (write431) raised before the write refuseAt, if there is one.
// Beyond no panic: patchSettings hands back a slice as long as the one it
// was given, which it leaves alone, and what reaches the client differs
// from the server's bytes only in the first SETTINGS frame's
// MAX_FRAME_SIZE and MAX_CONCURRENT_STREAMS values, however the writes cut
// it; the refusal goes at the first frame boundary after it was raised,
// and nothing after it; the streams the server answered are those of the
// HEADERS frames whose header was written and of the RST_STREAM frames
// written whole (with or without a payload), and no others.
func FuzzH2Frames(f *testing.F) {
	var buf bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	_ = fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 250},
		http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 20}, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
	_ = fr.WriteWindowUpdate(0, 1<<20)
	_ = fr.WriteSettings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 20})
	_ = fr.WriteSettingsAck()
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte{0x88}, EndHeaders: true})
	_ = fr.WriteData(1, false, []byte("response body"))
	_ = fr.WriteWindowUpdate(3, 1)
	_ = fr.WriteRSTStream(3, http2.ErrCodeCancel)
	_ = fr.WriteData(1, true, nil)
	_ = fr.WritePing(true, [8]byte{})
	_ = fr.WriteGoAway(3, http2.ErrCodeNo, []byte("bye"))
	server := bytes.Clone(buf.Bytes())
	f.Add(server, []byte{}, uint8(255))
	f.Add(server, []byte{0, 1, 4, 7, 2, 30, 9}, uint8(3))
	f.Add(server, []byte{8, 8, 8, 8}, uint8(0))
	f.Add([]byte{0, 0, 7, h2TypeSettings, 0, 0, 0, 0, 0, 0, 5, 0, 1, 0, 0, 0}, []byte{1}, uint8(2)) // a setting cut short
	f.Add([]byte{0, 0, 0, h2TypeHeaders, 0, 0, 0, 0, 5}, []byte{}, uint8(255))
	f.Fuzz(func(t *testing.T, data, sizes []byte, refuseAt uint8) {
		orig := bytes.Clone(data)
		// patchSettings alone, as write calls it until the first frame is out.
		var p h2Frames
		var patched []byte
		for _, w := range fuzzPieces(data, sizes) {
			got := p.patchSettings(w)
			if len(got) != len(w) {
				t.Fatalf("patchSettings made %d bytes of %d", len(got), len(w))
			}
			patched = append(patched, got...)
		}
		if !bytes.Equal(data, orig) {
			t.Fatal("patchSettings changed the server's bytes")
		}
		want := settingsPatched(data)
		if !bytes.Equal(patched, want) {
			t.Fatalf("patched %x, want %x", patched, want)
		}

		conn := &fuzzConn{}
		c := &hijackedConn{Conn: conn}
		c.limit.isH2.Store(true)
		c.limit.h2 = newH2HeaderLimit(h2MaxHeaderList(64 << 10))
		u := &c.limit.unanswered
		frames := h2Walk(data)
		for _, fm := range frames {
			u.open(fm.stream, false)
		}
		ends := map[int]bool{0: true} // the frame boundaries
		for _, fm := range frames {
			ends[fm.end] = true
		}
		boundary := func(at int) bool { return ends[at] }
		written, refusedAt := 0, -1 // server bytes written; where the refusal was raised
		pieces := fuzzPieces(data, sizes)
		for i := 0; i <= len(pieces); i++ {
			if i == int(refuseAt) {
				refusedAt = written
				c.write431()
			}
			if i == len(pieces) {
				break
			}
			w := pieces[i]
			k := c.frames.toBoundary(w)
			if k < 0 || k > len(w) || (k == 0) != c.frames.atBoundary() || k < len(w) && !boundary(written+k) {
				t.Fatalf("at %d, toBoundary of %d bytes: %d (at a boundary: %v)", written, len(w), k, c.frames.atBoundary())
			}
			for j := written + 1; j < written+k; j++ {
				if boundary(j) {
					t.Fatalf("at %d, toBoundary of %d bytes: %d, past the boundary at %d", written, len(w), k, j)
				}
			}
			c.hold.mu.Lock()
			n, err := c.write(w)
			c.hold.mu.Unlock()
			written += n
			if n < len(w) && err == nil || n > len(w) {
				t.Fatalf("wrote %d of %d bytes, %v", n, len(w), err)
			}
			if c.frames.atBoundary() != boundary(written) {
				t.Fatalf("after %d bytes: at a boundary %v, the frames say %v", written, c.frames.atBoundary(), boundary(written))
			}
		}
		got := conn.out.Bytes()
		if refusedAt < 0 {
			if !bytes.Equal(got, want) {
				t.Fatalf("the client got %x, want %x", got, want)
			}
		} else {
			end := -1 // the first boundary at or after refusedAt
			for at := refusedAt; at <= len(data); at++ {
				if boundary(at) {
					end = at
					break
				}
			}
			exp := want
			if end >= 0 {
				exp = append(bytes.Clone(want[:end]), c.limit.h2.refusal(refusedAt > 0)...)
			}
			if !bytes.Equal(got, exp) {
				t.Fatalf("refusal raised after %d bytes: the client got %x, want %x", refusedAt, got, exp)
			}
		}
		answered := map[uint32]bool{}
		for _, fm := range frames {
			// A HEADERS frame answers at its header; an RST_STREAM once
			// whole, its code read from its payload (d088005).
			if fm.typ == h2TypeHeaders && fm.hdrEnd <= written || fm.typ == h2TypeRSTStream && fm.end <= written {
				answered[fm.stream] = true
			}
		}
		for _, fm := range frames {
			if _, open := u.m[fm.stream]; open == answered[fm.stream] {
				t.Fatalf("stream %d: unanswered %v, answered by the frames written %v", fm.stream, open, answered[fm.stream])
			}
		}
	})
}
