package intercept

import (
	"bytes"
	"errors"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// The server's SETTINGS is patched however its bytes are split across
// writes, its other settings and the frames after it left as they were,
// and the bytes the server handed in never changed.
func TestH2PatchSettingsSplit(t *testing.T) {
	var buf bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	fr.WriteSettings(
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 250},
		http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 20},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20},
	)
	fr.WriteWindowUpdate(0, 1<<20)
	// A later SETTINGS is not the first frame: left alone.
	fr.WriteSettings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 20})
	in := buf.Bytes()
	for _, size := range []int{1, 2, 5, 7, len(in)} {
		var f h2Frames
		var out []byte
		orig := bytes.Clone(in)
		for b := in; len(b) > 0; {
			n := min(size, len(b))
			out = append(out, f.patchSettings(b[:n])...)
			b = b[n:]
		}
		if !bytes.Equal(in, orig) {
			t.Fatalf("writes of %d: the server's bytes changed", size)
		}
		rd := http2.NewFramer(nil, bytes.NewReader(out))
		var got []uint32
		for {
			fm, err := rd.ReadFrame()
			if err != nil {
				break
			}
			if s, ok := fm.(*http2.SettingsFrame); ok {
				v, _ := s.Value(http2.SettingMaxFrameSize)
				got = append(got, v)
				if n, _ := s.Value(http2.SettingMaxConcurrentStreams); len(got) == 1 && n != h2MaxConcurrentStreams {
					t.Fatalf("writes of %d: max concurrent streams %d", size, n)
				}
			}
		}
		if len(got) != 2 || got[0] != 16384 || got[1] != 1<<20 {
			t.Fatalf("writes of %d: SETTINGS_MAX_FRAME_SIZE %v, want [16384 %d]", size, got, 1<<20)
		}
	}
}

// Only the server's HEADERS or RST_STREAM on a stream answer it for the
// Rapid Reset guard: a stream the server touched with flow control alone
// (a WINDOW_UPDATE for the DATA the client sent) and the client then reset
// is a premature reset. A client that sends a DATA byte on each stream and
// resets it after the WINDOW_UPDATE is refused (GOAWAY) past
// h2MaxPrematureResets, as one that resets at once; streams the server
// answered with HEADERS, then reset, are not counted. Holds the frame
// types in h2Frames.advance (mutant G03: any frame the server writes on a
// stream counts as its answer, and such a client is never refused) and
// the opened count (G06: opened counted twice).
func TestH2RapidResetFlowControlNotAnswer(t *testing.T) {
	frame := func(typ, flags byte, id uint32, p ...byte) []byte {
		n := len(p)
		return append([]byte{byte(n >> 16), byte(n >> 8), byte(n), typ, flags, byte(id >> 24), byte(id >> 16), byte(id >> 8), byte(id)}, p...)
	}
	const windowUpdate = 0x8
	for _, tc := range []struct {
		name    string
		server  func(id uint32) []byte // what the server writes on the stream before the reset
		refused bool
	}{
		{"window update", func(id uint32) []byte { return frame(windowUpdate, 0, id, 0, 0, 0, 1) }, true},
		{"headers", func(id uint32) []byte { return frame(h2TypeHeaders, h2FlagEndHeaders, id, 0x88) }, false}, // :status 200
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := &h2Unanswered{}
			l := newH2HeaderLimit(h2MaxHeaderList(64 << 10))
			l.unanswered = u
			var f h2Frames
			var err error
			const streams = 2 * h2MaxPrematureResets
			for i := uint32(0); i < streams && err == nil; i++ {
				id := 2*i + 1
				if err = l.feed(frame(h2TypeHeaders, h2FlagEndHeaders, id, 0x82)); err != nil { // :method GET
					break
				}
				f.advance(tc.server(id), u)
				err = l.feed(frame(h2TypeRSTStream, 0, id, 0, 0, 0, 8)) // CANCEL
			}
			var g *h2GoAway
			if refused := errors.As(err, &g); refused != tc.refused {
				t.Fatalf("%d streams opened, the server's %s on each, then reset: %v (resets %d, opened %d); want refused %v",
					streams, tc.name, err, l.resets, l.opened, tc.refused)
			}
			if tc.refused && l.opened != h2MaxPrematureResets+1 {
				t.Errorf("refused after %d streams opened, want %d (the first reset past the bound)", l.opened, h2MaxPrematureResets+1)
			}
		})
	}
}

// The Rapid Reset guard counts a client's resets against the streams the
// appliance served, not all it opened: a client that sends, beside each
// stream it resets, one the server resets itself (a malformed HEADERS:
// x/net's RST_STREAM, no handler, no record) or one the appliance answers
// itself (a deny, its record from the client's bucket) is refused past
// h2MaxPrematureResets, where counting every stream opened kept its resets
// at exactly half and it was never refused (review r1dos F1). A filler the
// appliance served (answered upstream, with its own record) still counts.
func TestH2RapidResetUnservedFiller(t *testing.T) {
	frame := func(typ, flags byte, id uint32, p ...byte) []byte {
		n := len(p)
		return append([]byte{byte(n >> 16), byte(n >> 8), byte(n), typ, flags, byte(id >> 24), byte(id >> 16), byte(id >> 8), byte(id)}, p...)
	}
	headers := func(id uint32) []byte { return frame(h2TypeHeaders, h2FlagEndHeaders, id, 0x88) } // :status 200
	for _, tc := range []struct {
		name    string
		filler  func(u *h2Unanswered, f *h2Frames, id uint32) // the appliance's answer to the filler
		refused bool
	}{
		{"server reset", func(u *h2Unanswered, f *h2Frames, id uint32) {
			f.advance(frame(h2TypeRSTStream, 0, id, 0, 0, 0, 1), u) // PROTOCOL_ERROR
		}, true},
		{"answered locally", func(u *h2Unanswered, f *h2Frames, id uint32) {
			u.answeredLocally()
			f.advance(headers(id), u)
		}, true},
		{"served", func(u *h2Unanswered, f *h2Frames, id uint32) { f.advance(headers(id), u) }, false},
		// A stream the client reset first, then the server: the client's
		// reset counted, the server's not as a refusal.
		{"served, reset after", func(u *h2Unanswered, f *h2Frames, id uint32) {
			f.advance(headers(id), u)
			f.advance(frame(h2TypeRSTStream, 0, id, 0, 0, 0, 2), u)
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := &h2Unanswered{}
			l := newH2HeaderLimit(h2MaxHeaderList(64 << 10))
			l.unanswered = u
			var f h2Frames
			var err error
			const pairs = 20 * h2MaxPrematureResets
			resets := 0
			for i := uint32(0); i < pairs && err == nil; i++ {
				filler, id := 4*i+1, 4*i+3
				if err = l.feed(frame(h2TypeHeaders, h2FlagEndHeaders, filler, 0x82)); err != nil {
					break
				}
				tc.filler(u, &f, filler)
				if err = l.feed(frame(h2TypeHeaders, h2FlagEndHeaders, id, 0x82)); err != nil {
					break
				}
				err = l.feed(frame(h2TypeRSTStream, 0, id, 0, 0, 0, 8)) // CANCEL
				resets++
			}
			var g *h2GoAway
			if refused := errors.As(err, &g); refused != tc.refused {
				t.Fatalf("%d pairs of a filler (%s) and a reset stream: %v (resets %d, opened %d, unserved %d); want refused %v",
					resets, tc.name, err, l.resets, l.opened, u.unservedCount(), tc.refused)
			}
			// A filler the server reset for a protocol error counts as a
			// premature reset too (TestH2RapidResetServerMade).
			if n := l.resets + u.causedCount(); tc.refused && n != h2MaxPrematureResets+1 {
				t.Errorf("refused after %d resets, want %d (the first past the bound)", n, h2MaxPrematureResets+1)
			}
		})
	}
}

// TestH2RapidResetServerMade: a client that never resets a stream itself
// but has the server reset each one, sending right after its request a
// frame the stream may not take ("MadeYouReset": x/net resets the stream,
// PROTOCOL_ERROR or STREAM_CLOSED, once its handler has started), is
// refused past h2MaxPrematureResets, at its next stream; it went on for
// good, 2,000 handlers and records from 50 KB of frames (review r5s25 F1).
// The server's refusal of a stream (REFUSED_STREAM) and the appliance's
// own resets (INTERNAL_ERROR, CANCEL) are no client's doing.
func TestH2RapidResetServerMade(t *testing.T) {
	frame := func(typ, flags byte, id uint32, p ...byte) []byte {
		n := len(p)
		return append([]byte{byte(n >> 16), byte(n >> 8), byte(n), typ, flags, byte(id >> 24), byte(id >> 16), byte(id >> 8), byte(id)}, p...)
	}
	for _, tc := range []struct {
		code    byte
		refused bool
	}{
		{byte(http2.ErrCodeProtocol), true},
		{byte(http2.ErrCodeStreamClosed), true},
		{byte(http2.ErrCodeFlowControl), true},
		{byte(http2.ErrCodeRefusedStream), false},
		{byte(http2.ErrCodeInternal), false},
		{byte(http2.ErrCodeCancel), false},
	} {
		t.Run(http2.ErrCode(tc.code).String(), func(t *testing.T) {
			u := &h2Unanswered{}
			l := newH2HeaderLimit(h2MaxHeaderList(64 << 10))
			l.unanswered = u
			var f h2Frames
			var err error
			streams := 0
			for i := uint32(0); i < 20*h2MaxPrematureResets && err == nil; i++ {
				id := 2*i + 1
				if err = l.feed(frame(h2TypeHeaders, h2FlagEndHeaders|0x1, id, 0x82)); err != nil {
					break
				}
				streams++
				// The server's reset, written in two pieces as a write may
				// cut it.
				rst := frame(h2TypeRSTStream, 0, id, 0, 0, 0, tc.code)
				f.advance(rst[:11], u)
				f.advance(rst[11:], u)
			}
			var g *h2GoAway
			if refused := errors.As(err, &g); refused != tc.refused {
				t.Fatalf("%d streams each reset by the server (%s): %v (caused %d, unserved %d); want refused %v",
					streams, http2.ErrCode(tc.code), err, u.causedCount(), u.unservedCount(), tc.refused)
			}
			if tc.refused && u.causedCount() != h2MaxPrematureResets+1 {
				t.Errorf("refused after %d server-made resets, want %d", u.causedCount(), h2MaxPrematureResets+1)
			}
		})
	}
}

// provokedCase is a frame of the client's after its request on stream 1,
// and whether x/net must reset the stream for it.
type provokedCase struct {
	name   string
	end    bool   // the request's HEADERS ends the stream
	req    []byte // its header block, if not a GET's
	frames []byte // what the client sends next on stream 1
	drawn  bool
}

// provokedCases are the frames TestH2RapidResetProvokedOnArrival counts
// and TestH2RapidResetProvokedAgreesWithServer has x/net answer, and
// getBlock the request's header block where a case has none.
func provokedCases() (cases []provokedCase, getBlock []byte) {
	frame := func(typ, flags byte, id uint32, p ...byte) []byte {
		n := len(p)
		return append([]byte{byte(n >> 16), byte(n >> 8), byte(n), typ, flags, byte(id >> 24), byte(id >> 16), byte(id >> 8), byte(id)}, p...)
	}
	const endStream, get = 0x1, 0x82
	// A header block of name, value pairs, never indexed: each decoder
	// reads it as the first.
	block := func(kv ...string) []byte {
		var b bytes.Buffer
		enc := hpack.NewEncoder(&b)
		for i := 0; i < len(kv); i += 2 {
			enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1], Sensitive: true})
		}
		return b.Bytes()
	}
	post := func(kv ...string) []byte {
		return block(append([]string{":method", "POST", ":scheme", "http", ":path", "/", ":authority", "a.test"}, kv...)...)
	}
	padded := func(flags byte, data string, pad int) []byte {
		return frame(h2TypeData, flags|h2FlagPadded, 1, append(append([]byte{byte(pad)}, data...), make([]byte, pad)...)...)
	}
	trailers := func(kv ...string) []byte {
		return frame(h2TypeHeaders, h2FlagEndHeaders|endStream, 1, block(kv...)...)
	}
	return []provokedCase{
		// x/net's rules for a body and its trailers (review r4s26 F2).
		{"data over content-length", false, post("content-length", "1"), frame(h2TypeData, endStream, 1, 'x', 'x'), true},
		{"data to content-length", false, post("content-length", "2"), frame(h2TypeData, endStream, 1, 'x', 'x'), false},
		{"data to content-length, then more", false, post("content-length", "2"),
			append(frame(h2TypeData, 0, 1, 'x'), frame(h2TypeData, 0, 1, 'x', 'x')...), true},
		{"data short of content-length", false, post("content-length", "3"), frame(h2TypeData, endStream, 1, 'x', 'x'), false},
		{"padded data to content-length", false, post("content-length", "1"), padded(endStream, "x", 6), false},
		{"padded data over content-length", false, post("content-length", "1"), padded(endStream, "xx", 6), true},
		{"empty data at content-length 0", false, post("content-length", "0"), frame(h2TypeData, endStream, 1), false},
		{"data over an unreadable content-length (0)", false, post("content-length", "+1"), frame(h2TypeData, 0, 1, 'x'), true},
		{"data over the first content-length", false, post("content-length", "1", "content-length", "5"), frame(h2TypeData, 0, 1, 'x', 'x'), true},
		{"data, no content-length", false, post(), frame(h2TypeData, 0, 1, 'x', 'x'), false},
		{"trailers with a pseudo-header", false, post(), trailers(":path", "/x"), true},
		{"trailers with an upper-case name", false, post(), trailers("X-Up", "1"), true},
		{"trailers with a bad value", false, post(), trailers("x-t", "a\x00b"), true},
		{"trailers announced", false, post("trailer", "x-t"), trailers("x-t", "1"), false},
		{"trailers announced, one that may not be", false, post("trailer", "x-t"), trailers("authorization", "1"), true},
		{"trailers not announced, one that may not be", false, post(), trailers("authorization", "1"), false},
		{"trailers announced bogus, one that may not be", false, post("trailer", " content-length, Trailer"), trailers("if-match", "1"), false},

		{"window update 0", true, nil, frame(h2TypeWindowUpdate, 0, 1, 0, 0, 0, 0), true},
		{"window update 0, reserved bit", false, nil, frame(h2TypeWindowUpdate, 0, 1, 0x80, 0, 0, 0), true},
		{"window update 1", true, nil, frame(h2TypeWindowUpdate, 0, 1, 0, 0, 0, 1), false},
		{"data after end", true, nil, frame(h2TypeData, 0, 1, 'x'), true},
		{"empty data after end", true, nil, frame(h2TypeData, endStream, 1), true},
		{"data, then data after its end", false, nil, append(frame(h2TypeData, endStream, 1, 'x'), frame(h2TypeData, 0, 1, 'y')...), true},
		{"data", false, nil, frame(h2TypeData, 0, 1, 'x'), false},
		{"data ending it", false, nil, frame(h2TypeData, endStream, 1, 'x'), false},
		{"priority on itself", false, nil, frame(h2TypePriority, 0, 1, 0, 0, 0, 1, 15), true},
		{"priority on another", false, nil, frame(h2TypePriority, 0, 1, 0, 0, 0, 3, 15), false},
		{"trailers after end", true, nil, frame(h2TypeHeaders, h2FlagEndHeaders|endStream, 1, get), true},
		{"trailers without end", false, nil, frame(h2TypeHeaders, h2FlagEndHeaders, 1, get), true},
		{"trailers", false, nil, trailers("x-t", "1"), false},
	}, block(":method", "GET", ":scheme", "http", ":path", "/", ":authority", "a.test")
}

// The reset a client's frame must draw from x/net is counted as the frame
// comes in, once, only for a stream not answered yet, and not again when
// the server's RST_STREAM for it is written (review r6s25 F1). Frames a
// stream may take draw none.
func TestH2RapidResetProvokedOnArrival(t *testing.T) {
	frame := func(typ, flags byte, id uint32, p ...byte) []byte {
		n := len(p)
		return append([]byte{byte(n >> 16), byte(n >> 8), byte(n), typ, flags, byte(id >> 24), byte(id >> 16), byte(id >> 8), byte(id)}, p...)
	}
	const endStream = 0x1
	cases, getBlock := provokedCases()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, answered := range []bool{false, true} {
				u := &h2Unanswered{}
				l := newH2HeaderLimit(h2MaxHeaderList(64 << 10))
				l.unanswered = u
				var f h2Frames
				flags := byte(h2FlagEndHeaders)
				if tc.end {
					flags |= endStream
				}
				req := tc.req
				if req == nil {
					req = getBlock
				}
				if err := l.feed(frame(h2TypeHeaders, flags, 1, req...)); err != nil {
					t.Fatal(err)
				}
				if answered {
					f.advance(frame(h2TypeHeaders, h2FlagEndHeaders, 1, 0x88), u) // :status 200
				}
				// In pieces, as reads may cut them.
				for i := range tc.frames {
					if err := l.feed(tc.frames[i : i+1]); err != nil {
						t.Fatal(err)
					}
				}
				want := int64(0)
				if tc.drawn && !answered {
					want = 1
				}
				if got := u.causedCount(); got != want {
					t.Fatalf("answered %v: %d resets counted, want %d", answered, got, want)
				}
				// x/net's reset, written later: counted already.
				f.advance(frame(h2TypeRSTStream, 0, 1, 0, 0, 0, byte(http2.ErrCodeProtocol)), u)
				if got := u.causedCount(); tc.drawn && got != want {
					t.Fatalf("answered %v: %d resets counted once the server's was written, want %d", answered, got, want)
				}
				if u.waiting() {
					t.Fatalf("answered %v: the stream is waiting still", answered)
				}
			}
		})
	}
}

// An RST_STREAM the server writes whole answers its stream whatever its
// payload, and only a payload of 4 bytes gives it a code: one with none
// was never taken (its end, which the code waits for, came with its
// header), and one of fewer bytes read them as a code (a 1-byte payload of
// 7 counted the stream refused). x/net writes neither; FuzzH2Frames found
// the first (review r3s29 F1).
func TestH2ServerResetShortPayload(t *testing.T) {
	for _, tc := range []struct {
		name    string
		payload []byte
	}{
		{"no payload", nil},
		{"1 byte", []byte{byte(http2.ErrCodeRefusedStream)}},
		{"3 bytes", []byte{0, 0, byte(http2.ErrCodeProtocol)}},
	} {
		for _, id := range []uint32{0, 1} {
			u := &h2Unanswered{}
			u.open(id, false)
			var f h2Frames
			n := len(tc.payload)
			f.advance(append([]byte{0, 0, byte(n), h2TypeRSTStream, 0, 0, 0, 0, byte(id)}, tc.payload...), u)
			if _, open := u.m[id]; open || u.unservedCount() != 0 || u.causedCount() != 0 {
				t.Errorf("%s on stream %d: still unanswered %v, %d unserved, %d caused; want answered, none counted",
					tc.name, id, open, u.unservedCount(), u.causedCount())
			}
		}
	}
}
