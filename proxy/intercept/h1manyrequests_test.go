package intercept_test

import (
	"fmt"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// TestH1KeptConnectionServesPastStreamBound: an HTTP/1 client that sends
// more requests, one after another, on one kept connection than a session
// may have in flight at once (intercept.MaxStreamsInFlight) gets every one
// of them served. The bound on requests in flight (streamcap.go) counts a
// request until its record is written: goproxy's HTTP/1 loop reads
// requests with a context that is never cancelled, so a request whose
// place were given back only when its context ended would stay counted,
// and a browser's or an API client's kept connection would be answered 503
// from its 101st request on, with no dial.
func TestH1KeptConnectionServesPastStreamBound(t *testing.T) {
	r := newRig(t, testPolicy)
	upEnd, up := r.startUpstream(nil)
	c, sv := r.connect(upEnd, httpDest)
	h := newHTTPClient(t, c)
	n := intercept.MaxStreamsInFlight + 5
	for i := range n {
		resp, body := h.do(fmt.Sprintf("GET /r%d HTTP/1.1\r\nHost: www.example.test\r\n\r\n", i))
		if resp.StatusCode != 200 {
			t.Fatalf("request %d of %d on one kept connection: %d %q, want 200", i+1, n, resp.StatusCode, body)
		}
	}
	c.Close()
	sv.waitDoneOnce(t)
	if got := len(up.requests()); got != n {
		t.Errorf("the origin served %d requests, want %d", got, n)
	}
	for _, rec := range ofKind(r.records(), "http") {
		if rec.Status != 200 || rec.Result != "ok" {
			t.Errorf("a request recorded %d %q (%q), want 200 ok", rec.Status, rec.Result, rec.Error)
		}
	}
}
