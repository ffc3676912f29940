package intercept_test

import (
	"crypto/tls"
	"io"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// TestH2BodilessAnswerWithTrailerRecordedOK: an origin that announces a
// Trailer on an answer without a body (a HEAD's, which RFC 9110 §9.3.2
// asks to carry GET's fields; a 204; a 304). goproxy flushed such a head
// before copying trailers; x/net's server ended the stream on it (a HEAD's
// head, or a 204's, carries END_STREAM) and ended its context, which the
// record read as the client going away: `error`, "the client went away
// before the response ended", for a client that had its whole answer.
func TestH2BodilessAnswerWithTrailerRecordedOK(t *testing.T) {
	r := newRig(t, testPolicy)
	upEnd, originEnd := testnet.TCPPair(t)
	tc := tls.Server(originEnd, &tls.Config{
		Certificates: []tls.Certificate{*r.upLeaf("www.example.test")}, NextProtos: []string{"h2"},
	})
	handler := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Trailer", "X-T")
		switch req.URL.Path {
		case "/204":
			w.WriteHeader(http.StatusNoContent)
		case "/304":
			w.WriteHeader(http.StatusNotModified)
		default:
			w.Header().Set("Content-Length", "5")
			w.WriteHeader(http.StatusOK)
		}
		w.Header().Set("X-T", "v")
	})
	go func() {
		if err := tc.Handshake(); err != nil {
			originEnd.Close()
			return
		}
		(&http2.Server{}).ServeConn(tc, &http2.ServeConnOpts{Handler: handler})
	}()
	c, _ := r.connectTCP(upEnd, tlsDest)
	tlsc := bumpClient(t, r, c, "www.example.test", "h2")
	defer tlsc.Close()
	tlsc.SetDeadline(time.Now().Add(30 * time.Second))
	cc, err := (&http2.Transport{}).NewClientConn(tlsc)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	want := map[string]int{"/head": 200, "/204": 204, "/304": 304}
	for _, path := range []string{"/head", "/204", "/304"} {
		method := http.MethodGet
		if path == "/head" {
			method = http.MethodHead
		}
		req, _ := http.NewRequest(method, "https://www.example.test"+path, nil)
		resp, err := cc.RoundTrip(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want[path] {
			t.Fatalf("%s %s: status %d, want %d", method, path, resp.StatusCode, want[path])
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		recs := ofKind(r.records(), "http")
		if len(recs) == 3 {
			for _, rec := range recs {
				if rec.Result != "ok" || rec.Error != "" || rec.Status != want[rec.Path] {
					t.Errorf("%s %s: result %s status %d error %q, want ok, status %d, no error", rec.Method, rec.Path, rec.Result, rec.Status, rec.Error, want[rec.Path])
				}
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d http records, want 3: %+v", len(recs), recs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
