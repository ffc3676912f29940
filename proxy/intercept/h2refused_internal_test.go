package intercept

import (
	"context"
	"testing"

	"golang.org/x/net/http2"
)

// TestH2RefusalNoted: the appliance's refusal is noted as the server's
// GOAWAY for a connection error is, and the records say it. The reader's
// refusal weighs a client's reset x/net had not processed (its request's
// context not done) as none, as at the server's GOAWAY; the writer's
// keeps it the client's, for x/net processes every frame it was handed.
// A reset the reader foresaw and nobody wrote ends nothing; the streams
// past the refusal's last stream are dropped; and a refusal after the
// server's own GOAWAY leaves that GOAWAY the connection's end.
func TestH2RefusalNoted(t *testing.T) {
	g := &h2GoAway{http2.ErrCodeEnhanceYourCalm, "more than 400 streams opened and not answered at once"}
	const refusal = "the appliance refused the connection (GOAWAY ENHANCE_YOUR_CALM: more than 400 streams opened and not answered at once)"
	for _, tc := range []struct {
		name  string
		weigh bool
		// ended is what ended streams 1 (the client's reset, x/net not
		// having processed it), 3 (a foreseen reset) and 5 (nothing).
		ended [3]uint8
	}{
		{"reader", true, [3]uint8{h2EndedNot, h2EndedNot, h2EndedNot}},
		{"writer", false, [3]uint8{h2EndedClient, h2EndedNot, h2EndedNot}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var u h2Unanswered
			for id := uint32(1); id <= 9; id += 2 {
				if ok, err := u.open(id, true); !ok || err != nil {
					t.Fatalf("open %d: %v %v", id, ok, err)
				}
			}
			u.reset(1)
			u.ends.server(3, http2.ErrCodeProtocol, false)
			u.refused(7, g, tc.weigh)
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
			for i, id := range []uint32{1, 3, 5} {
				e := n.claim(id, context.Background())
				if e == nil {
					t.Fatalf("stream %d: no note", id)
				}
				if ended, _, _, _ := e.end(); ended != tc.ended[i] {
					t.Errorf("stream %d: ended %d, want %d", id, ended, tc.ended[i])
				}
				e.release()
			}
			if got := n.goAwayError(http2.ErrCodeEnhanceYourCalm); got != refusal {
				t.Errorf("the records say %q, want %q", got, refusal)
			}
		})
	}
	t.Run("after-the-server's-goaway", func(t *testing.T) {
		var u h2Unanswered
		u.open(1, true)
		u.serverGoAway(1, http2.ErrCodeProtocol)
		u.refused(1, g, true)
		want := serverGoAwayError(http2.ErrCodeProtocol)
		if code, _ := u.ends.serverEnd(); code != http2.ErrCodeProtocol || u.ends.goAwayError(code) != want {
			t.Errorf("the connection's end %v, said %q, want PROTOCOL_ERROR, %q", code, u.ends.goAwayError(code), want)
		}
	})
}
