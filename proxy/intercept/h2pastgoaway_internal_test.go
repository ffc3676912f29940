package intercept

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"golang.org/x/net/http2"
)

// unansweredLen is how many streams u holds unanswered, and notes.
func (u *h2Unanswered) unansweredLen() (streams, notes int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.ends.mu.Lock()
	defer u.ends.mu.Unlock()
	return len(u.m), len(u.ends.m)
}

// rawFrame is an HTTP/2 frame of type typ with flags on stream id.
func rawFrame(typ, flags byte, id uint32, p ...byte) []byte {
	n := len(p)
	return append([]byte{byte(n >> 16), byte(n >> 8), byte(n), typ, flags, byte(id >> 24), byte(id >> 16), byte(id >> 8), byte(id)}, p...)
}

// TestH2StreamsPastGoAwayNotKept: streams a client opens past the last
// stream of the server's GOAWAY (graceful, or for a connection error),
// which x/net ignores, are not kept: those read before the GOAWAY went
// out are dropped as it does, and none is taken in after. They were kept
// for good, one entry and note each, without bound (26 MB of such
// HEADERS grew the heap by 192 MiB), and past h2MaxEndNotes they pushed
// out the note of the request under way (review rev31b F1). They are not
// counted as opened either: no handler takes them up.
func TestH2StreamsPastGoAwayNotKept(t *testing.T) {
	for _, code := range []http2.ErrCode{http2.ErrCodeNo, http2.ErrCodeProtocol} {
		u := &h2Unanswered{}
		l := newH2HeaderLimit(h2MaxHeaderList(64 << 10))
		l.unanswered = u
		get := func(id uint32) []byte { return rawFrame(h2TypeHeaders, h2FlagEndHeaders|h2FlagEndStream, id, 0x82) } // :method GET
		if err := l.feed(get(1)); err != nil {
			t.Fatal(err)
		}
		// Read before the GOAWAY went out, which x/net ignores all the same.
		if err := l.feed(append(get(3), get(5)...)); err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		_ = http2.NewFramer(&buf, nil).WriteGoAway(1, code, nil)
		var f h2Frames
		f.advance(buf.Bytes(), u)
		if s, n := u.unansweredLen(); s != 1 || n != 1 {
			t.Fatalf("%v: after the GOAWAY, %d streams unanswered and %d notes, want 1 and 1", code, s, n)
		}
		const past = 10 * h2MaxUnanswered
		for i := range uint32(past) {
			if err := l.feed(get(7 + 2*i)); err != nil {
				t.Fatalf("%v: stream %d past the GOAWAY refused: %v", code, 7+2*i, err)
			}
		}
		if s, n := u.unansweredLen(); s != 1 || n != 1 {
			t.Errorf("%v: %d streams past the GOAWAY: %d streams unanswered and %d notes, want 1 and 1", code, past, s, n)
		}
		if l.opened != 3 {
			t.Errorf("%v: %d opened, want 3 (those read before the GOAWAY)", code, l.opened)
		}
		e := u.ends.claim(1, context.Background())
		if e == nil {
			t.Fatalf("%v: the note of the stream under way is gone", code)
		}
		if ended, _, _, _ := e.look(); ended == h2EndedUnknown {
			t.Errorf("%v: the note of the stream under way was dropped", code)
		}
	}
}

// TestH2UnansweredBounded: whatever x/net does, a connection keeps at
// most h2MaxUnanswered streams unanswered: a client that opens one more
// with none answered is refused, GOAWAY(ENHANCE_YOUR_CALM).
func TestH2UnansweredBounded(t *testing.T) {
	u := &h2Unanswered{}
	l := newH2HeaderLimit(h2MaxHeaderList(64 << 10))
	l.unanswered = u
	for i := range uint32(h2MaxUnanswered) {
		if err := l.feed(rawFrame(h2TypeHeaders, h2FlagEndHeaders|h2FlagEndStream, 1+2*i, 0x82)); err != nil {
			t.Fatalf("stream %d of %d refused: %v", i+1, h2MaxUnanswered, err)
		}
	}
	err := l.feed(rawFrame(h2TypeHeaders, h2FlagEndHeaders|h2FlagEndStream, 1+2*h2MaxUnanswered, 0x82))
	var g *h2GoAway
	if !errors.As(err, &g) || g.code != http2.ErrCodeEnhanceYourCalm {
		t.Fatalf("stream %d, none answered: %v, want GOAWAY(ENHANCE_YOUR_CALM)", h2MaxUnanswered+1, err)
	}
	if s, _ := u.unansweredLen(); s != h2MaxUnanswered {
		t.Errorf("%d streams unanswered, want %d", s, h2MaxUnanswered)
	}
}

// TestH2ResetAfterConnErrorAfterGraceful: after the server's graceful
// GOAWAY, a client's RST_STREAM read after a connection error the reader
// can tell (each kind here) ends nothing: x/net never processes it, and
// sends no second GOAWAY to weigh it against (review rev31b F2). One read
// before the error, or after a frame that is no error, is the client's.
// So too with no graceful GOAWAY out.
func TestH2ResetAfterConnErrorAfterGraceful(t *testing.T) {
	rst := rawFrame(h2TypeRSTStream, 0, 1, 0, 0, 0, 8) // CANCEL
	for _, tc := range []struct {
		name      string
		frame     []byte
		resetLast bool
		graceful  bool
		client    bool // the reset ends the stream, the client's
	}{
		{"connection window update of 0", rawFrame(h2TypeWindowUpdate, 0, 0, 0, 0, 0, 0), true, true, false},
		{"window update of 3 bytes", rawFrame(h2TypeWindowUpdate, 0, 0, 0, 0, 1), true, true, false},
		{"reset of the connection", rawFrame(h2TypeRSTStream, 0, 0, 0, 0, 0, 8), true, true, false},
		{"reset of 5 bytes", rawFrame(h2TypeRSTStream, 0, 3, 0, 0, 0, 8, 0), true, true, false},
		{"settings on a stream", rawFrame(h2TypeSettings, 0, 1), true, true, false},
		{"settings of 5 bytes", rawFrame(h2TypeSettings, 0, 0, 0, 3, 0, 0, 0), true, true, false},
		{"settings ack with a payload", rawFrame(h2TypeSettings, h2FlagAck, 0, 0, 3, 0, 0, 0, 100), true, true, false},
		{"ping on a stream", rawFrame(h2TypePing, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8), true, true, false},
		{"ping of 4 bytes", rawFrame(h2TypePing, 0, 0, 1, 2, 3, 4), true, true, false},
		{"error after the reset", rawFrame(h2TypeWindowUpdate, 0, 0, 0, 0, 0, 0), false, true, true},
		{"no error: a ping", rawFrame(h2TypePing, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8), true, true, true},
		{"no error: a window update", rawFrame(h2TypeWindowUpdate, 0, 0, 0, 0, 0, 1), true, true, true},
		// With no graceful GOAWAY out, the same: the server's GOAWAY for
		// the error would weigh the reset away, but the appliance's
		// refusal of a frame after it does not (review rev33a F1).
		{"no graceful GOAWAY", rawFrame(h2TypeWindowUpdate, 0, 0, 0, 0, 0, 0), true, false, false},
		{"no graceful GOAWAY, error after the reset", rawFrame(h2TypeWindowUpdate, 0, 0, 0, 0, 0, 0), false, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := &h2Unanswered{}
			l := newH2HeaderLimit(h2MaxHeaderList(64 << 10))
			l.unanswered = u
			if err := l.feed(rawFrame(h2TypeHeaders, h2FlagEndHeaders|h2FlagEndStream, 1, 0x82)); err != nil {
				t.Fatal(err)
			}
			if tc.graceful {
				u.ends.serverGoAway(http2.ErrCodeNo)
			}
			b := append(append([]byte(nil), tc.frame...), rst...)
			if !tc.resetLast {
				b = append(append([]byte(nil), rst...), tc.frame...)
			}
			if err := l.feed(b); err != nil {
				t.Fatal(err)
			}
			e := u.ends.claim(1, context.Background())
			if ended, _, _, _ := e.look(); (ended == h2EndedClient) != tc.client {
				t.Errorf("stream ended %d, want the client's reset %v", ended, tc.client)
			}
		})
	}
}
