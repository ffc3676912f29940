package intercept_test

import (
	"strings"
	"testing"

	"golang.org/x/net/http2"
)

// TestH2ErrorAfterGracefulGoAwayRecorded: the client sends a GOAWAY of
// its own (NO_ERROR: it opens no more streams, and waits for those under
// way), which the appliance's HTTP/2 server answers with its graceful
// GOAWAY; then, a request at the destination, a connection error (a
// connection WINDOW_UPDATE of 0). x/net sends no second GOAWAY (it has
// sent one), raises its code, processes no more frames and closes the
// connection a second later, the request under way with it. Both
// records said the client went away (the request `reset`, the tls record
// ok): the client had closed nothing, and waited for its answer (review
// rev30b, "not probed"). Now both say the server closed the connection.
// So too after the client sent HEADERS for streams past that GOAWAY,
// which x/net ignores: the appliance took each in and kept it, and past
// h2MaxEndNotes they pushed out the note of the request under way,
// whose record said the client went away (review rev31b F1).
// So too with the client's RST_STREAM of the request after the error,
// in the same write: x/net never processed it, yet the record said the
// client went away, the tls record ok (review rev31b F2); one before the
// error is the client's.
// The client's own end after a graceful GOAWAY is still the client's:
// its RST_STREAM (x/net then closes the connection once no stream is
// open, the tls record ok), or its connection's close.
func TestH2ErrorAfterGracefulGoAwayRecorded(t *testing.T) {
	closed := "the appliance's HTTP/2 server closed the connection for an error of the client's after its graceful GOAWAY (NO_ERROR)"
	for _, tc := range []struct {
		name       string
		live       bool
		act        func(pc *probeClient, id uint32)
		result     string
		err        string
		tlsErr     string
		tlsResults []string
	}{
		{"connection-error", false, func(pc *probeClient, _ uint32) { windowUpdate0(pc, 0) },
			"error", closed + " before the response came", closed, []string{"error"}},
		{"connection-error-while-answered", true, func(pc *probeClient, _ uint32) { windowUpdate0(pc, 0) },
			"error", closed + " before the response ended (1 body bytes passed on)", closed, []string{"error"}},
		{"connection-error-after-ignored-streams", false, func(pc *probeClient, _ uint32) {
			sendIgnoredStreams(pc, 1000)
			windowUpdate0(pc, 0)
		}, "error", closed + " before the response came", closed, []string{"error"}},
		{"connection-error-then-client-reset", false, func(pc *probeClient, id uint32) {
			oneWrite(pc, func(fr *http2.Framer) {
				fr.WriteWindowUpdate(0, 0)
				fr.WriteRSTStream(id, http2.ErrCodeCancel)
			})
		}, "error", closed + " before the response came", closed, []string{"error"}},
		{"client-reset-then-connection-error", false, func(pc *probeClient, id uint32) {
			oneWrite(pc, func(fr *http2.Framer) {
				fr.WriteRSTStream(id, http2.ErrCodeCancel)
				fr.WriteWindowUpdate(0, 0)
			})
		}, "reset", "the client went away before the response came", "", []string{"ok"}},
		{"client-reset", false, func(pc *probeClient, id uint32) { pc.reset(id) },
			"reset", "the client went away before the response came", "", []string{"ok"}},
		{"client-close", false, func(pc *probeClient, _ uint32) { pc.c.Close() },
			"reset", "the client went away before the response came", "", []string{"ok", "reset"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testPolicy)
			pc, o := newProbeClient(t, r)
			id, _ := openUnderway(t, pc, o.has, tc.live, false)
			pc.mu.Lock()
			pc.fr.WriteGoAway(id, http2.ErrCodeNo, nil)
			pc.mu.Unlock()
			if !waitFor(t, "the server's GOAWAY", waitLimit, func() bool { g, _ := pc.goneA.Load().(string); return g != "" }) {
				t.Fatal("no GOAWAY from the server")
			}
			if g, _ := pc.goneA.Load().(string); !strings.HasPrefix(g, "NO_ERROR") {
				t.Fatalf("the server's GOAWAY %q, want NO_ERROR", g)
			}
			tc.act(pc, id)
			rec := onlyHTTPRecord(t, r)
			if rec.Result != tc.result || !strings.HasPrefix(rec.Error, tc.err) {
				t.Errorf("record result %q error %q, want %s, %q", rec.Result, rec.Error, tc.result, tc.err)
			}
			tlsRec := onlyRecord(t, r, "tls")
			if !strings.Contains(strings.Join(tc.tlsResults, " "), tlsRec.Result) || tc.tlsErr != "" && tlsRec.Error != tc.tlsErr || tc.tlsErr == "" && strings.Contains(tlsRec.Error, "HTTP/2 server") {
				t.Errorf("tls record result %q error %q, want %v, %q", tlsRec.Result, tlsRec.Error, tc.tlsResults, tc.tlsErr)
			}
		})
	}
}
