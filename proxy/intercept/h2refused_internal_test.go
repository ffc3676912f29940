package intercept

import (
	"context"
	"testing"

	"golang.org/x/net/http2"
)

// TestH2RefusalNoted: the appliance's refusal is noted as the server's
// GOAWAY for a connection error is, and the records say it. A client's
// reset noted before it stays the client's, whether x/net had processed it
// (its request's context done) or not: the reader's refusal once weighed
// one x/net had not as none, as at the server's GOAWAY, so that a reset
// the client sent before the frame that broke a bound was recorded as the
// refusal or not by where the appliance's reads cut the client's bytes
// (review rev32b F3). A reset noted after it ends nothing; a reset the
// reader foresaw and nobody wrote ends nothing; the streams past the
// refusal's last stream are dropped; and a refusal after the server's own
// GOAWAY leaves that GOAWAY the connection's end.
func TestH2RefusalNoted(t *testing.T) {
	g := &h2GoAway{http2.ErrCodeEnhanceYourCalm, "more than 400 streams opened and not answered at once"}
	const refusal = "the appliance refused the connection (GOAWAY ENHANCE_YOUR_CALM: more than 400 streams opened and not answered at once)"
	t.Run("notes", func(t *testing.T) {
		var u h2Unanswered
		for id := uint32(1); id <= 9; id += 2 {
			if ok, err := u.open(id, true); !ok || err != nil {
				t.Fatalf("open %d: %v %v", id, ok, err)
			}
		}
		u.reset(1) // x/net has not processed it: no context done
		u.ends.server(3, http2.ErrCodeProtocol, false)
		u.refused(7, g)
		u.reset(5) // after the refusal
		if _, kept := u.m[9]; kept || u.ends.m[9] != nil {
			t.Error("stream 9, past the refusal's last stream, kept")
		}
		if ok, _ := u.open(11, true); ok {
			t.Error("stream 11, opened after the refusal, taken in")
		}
		n := u.notes()
		if code, ok := n.serverEnd(); !ok || code != http2.ErrCodeEnhanceYourCalm {
			t.Errorf("the connection's end: %v %v, want ENHANCE_YOUR_CALM", code, ok)
		}
		// What ended streams 1 (the client's reset before the refusal),
		// 3 (a foreseen reset), 5 (the client's reset after it) and 7
		// (nothing).
		for id, want := range map[uint32]uint8{1: h2EndedClient, 3: h2EndedNot, 5: h2EndedNot, 7: h2EndedNot} {
			e := n.claim(id, context.Background())
			if e == nil {
				t.Fatalf("stream %d: no note", id)
			}
			if ended, _, _, _ := e.end(); ended != want {
				t.Errorf("stream %d: ended %d, want %d", id, ended, want)
			}
			e.release()
		}
		if got := n.goAwayError(http2.ErrCodeEnhanceYourCalm); got != refusal {
			t.Errorf("the records say %q, want %q", got, refusal)
		}
	})
	t.Run("after-the-server's-goaway", func(t *testing.T) {
		var u h2Unanswered
		u.open(1, true)
		u.serverGoAway(1, http2.ErrCodeProtocol)
		u.refused(1, g)
		want := serverGoAwayError(http2.ErrCodeProtocol)
		if code, _ := u.ends.serverEnd(); code != http2.ErrCodeProtocol || u.ends.goAwayError(code) != want {
			t.Errorf("the connection's end %v, said %q, want PROTOCOL_ERROR, %q", code, u.ends.goAwayError(code), want)
		}
	})
}
