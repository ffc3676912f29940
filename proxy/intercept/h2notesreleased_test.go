package intercept_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// TestH2NotesOfAnsweredStreamsReleased: a bumped HTTP/2 client keeps 100
// requests at the destination (the streams in flight the appliance
// allows; 50 for the trust page within the bound), then sends 400 more,
// each answered by the appliance at once (refused over the bound with a
// 503, or the trust page), and then a
// WINDOW_UPDATE of 0 on its first stream, which x/net resets. Each of
// those answers was recorded, but its stream's note (h2streamend.go) was
// never released: a refusal's slot is nil, and its release did nothing;
// the trust page's record ended without releasing its slot. Past
// h2MaxEndNotes (400) notes the older half was dropped, the 100 in
// flight's with them, and the first stream's record said "the client
// went away" for the reset the appliance's server sent (review rev30d,
// "noted, not probed"). Now its record says the server's reset.
func TestH2NotesOfAnsweredStreamsReleased(t *testing.T) {
	for _, tc := range []struct {
		name, authority, path, status string
		inFlight                      int64
	}{
		{"refused", "www.example.test", "/ok/", "503", intercept.MaxStreamsInFlight},
		// The trust page is served before the bound refuses: over it,
		// and within it (its slot taken).
		{"trust-page-over-bound", "gwlbproxy.internal", "/", "200", intercept.MaxStreamsInFlight},
		{"trust-page", "gwlbproxy.internal", "/", "200", intercept.MaxStreamsInFlight / 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const answered, batch = 400, 40
			inFlight := tc.inFlight
			r := trustRig(t, "the trust page")
			pc, o := newProbeClient(t, r)
			first, _ := openUnderway(t, pc, o.has, false, false)
			for i := 2; i <= int(inFlight); i++ {
				pc.open("GET", fmt.Sprintf("/hang/%d", i), true)
			}
			if !waitFor(t, "the requests in flight at the origin", waitLimit, func() bool { return o.cur.Load() == inFlight }) {
				t.Fatalf("%d requests at the origin, want %d", o.cur.Load(), inFlight)
			}
			for sent := 0; sent < answered; {
				for range batch {
					pc.openAuth(tc.authority, fmt.Sprintf("%s%d", tc.path, sent))
					sent++
				}
				if !waitFor(t, "the answers", waitLimit, func() bool { return pc.statuses()[tc.status] == sent }) {
					t.Fatalf("answers %v after %d sent, want %d %s", pc.statuses(), sent, sent, tc.status)
				}
			}
			windowUpdate0(pc, first)
			var rec *string
			var result string
			waitFor(t, "the first stream's record", 2*waitLimit, func() bool {
				for _, r := range ofKind(r.records(), "http") {
					if r.Path == "/hang/1" {
						rec, result = &r.Error, r.Result
						return true
					}
				}
				return false
			})
			if rec == nil {
				t.Fatal("no record of the first stream")
			}
			want := "reset by the appliance's HTTP/2 server for the client's protocol error (RST_STREAM PROTOCOL_ERROR) before the response came"
			if result != "error" || !strings.HasPrefix(*rec, want) {
				t.Errorf("the first stream's record: result %q error %q, want error, %q", result, *rec, want)
			}
		})
	}
}
