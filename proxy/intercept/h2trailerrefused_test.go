package intercept_test

import (
	"bytes"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// TestH2OversizedTrailerBlockRecord: an upload under way at the origin
// whose trailer block is over the header list limit. Its stream may be
// answering already, so the refusal has no 431, the GOAWAY alone: yet the
// deny record said `status: 431`, of an answer nobody was sent (review
// rev33a F5). Now it says what the client got, as a guard's refusal
// record does: no status, "connection refused: HTTP/2 ENHANCE_YOUR_CALM:
// request header list larger than N bytes". The upload's record, and the
// tls record, say the refusal, `error`.
func TestH2OversizedTrailerBlockRecord(t *testing.T) {
	r := newRig(t, testPolicy)
	pc, o := newProbeClient(t, r)
	id := pc.open("POST", "/hang/up", false)
	pc.data(id, bytes.Repeat([]byte("u"), 1000), false)
	if !waitFor(t, "the upload at the origin", 2*waitLimit, func() bool { return o.cur.Load() == 1 }) {
		t.Fatal("the upload never reached the origin")
	}
	pc.mu.Lock()
	pc.hb.Reset()
	pc.enc.WriteField(hpack.HeaderField{Name: "x-big", Value: strings.Repeat("a", intercept.DefaultMaxHeaderBytes+1000)})
	block := pc.hb.Bytes()
	pc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block[:16000], EndStream: true})
	for block = block[16000:]; len(block) > 0; {
		n := min(len(block), 16000)
		pc.fr.WriteContinuation(id, n == len(block), block[:n])
		block = block[n:]
	}
	pc.mu.Unlock()
	tlsRec := onlyRecord(t, r, "tls") // the session's last record
	if g, _ := pc.goneA.Load().(string); !strings.HasPrefix(g, "ENHANCE_YOUR_CALM ") {
		t.Errorf("the client got GOAWAY %q, want ENHANCE_YOUR_CALM", g)
	}
	if s := pc.status(id); s != "" {
		t.Errorf("the upload's stream got %q, want nothing (no 431 for a trailer block)", s)
	}
	refused := "the appliance refused the connection (GOAWAY ENHANCE_YOUR_CALM: " + listTooLarge + ")"
	if tlsRec.Result != "error" || tlsRec.Error != refused {
		t.Errorf("tls record %s %q, want error %q", tlsRec.Result, tlsRec.Error, refused)
	}
	deny := "connection refused: HTTP/2 ENHANCE_YOUR_CALM: " + listTooLarge
	var denies, uploads int
	for _, rec := range ofKind(r.records(), "http") {
		switch {
		case rec.Action == "deny":
			denies++
			if rec.Status != 0 || rec.Error != deny {
				t.Errorf("deny record status %d %q, want no status, %q", rec.Status, rec.Error, deny)
			}
		case rec.Path == "/hang/up":
			uploads++
			if rec.Result != "error" || !strings.HasPrefix(rec.Error, refused+" before the response came") {
				t.Errorf("upload's record %s %q, want error %q before the response came…", rec.Result, rec.Error, refused)
			}
		}
	}
	if denies != 1 || uploads != 1 {
		t.Errorf("%d deny records, %d of the upload, want one each", denies, uploads)
	}
}
