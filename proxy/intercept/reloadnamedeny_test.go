package intercept_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"golang.org/x/net/http2"
)

// An HTTP/2 request whose answer's head came after a reload denied the
// connection's name for its failed destination check (checkAnswer) is
// refused as refuseDeniedName refuses one: its 403 sends the GOAWAY, so the
// client's next connection is checked afresh, both for a Host of another
// name and for the connection's own (review r8s28 F1).
func TestReloadNameCheckAnswerH2GoAway(t *testing.T) {
	for _, host := range []string{"api.example.test", "www.example.test"} {
		t.Run(host, func(t *testing.T) {
			r, holder := wwwCheckFailsRig(t)
			arrived, release := make(chan struct{}, 1), make(chan struct{})
			h := func(w http.ResponseWriter, req *http.Request) {
				if req.URL.Path == "/slow" {
					arrived <- struct{}{}
					<-release
				}
				io.WriteString(w, "hello")
			}
			upEnd, originEnd := signalClosePair(t)
			h2OriginWith(t, r.strangerLeaf("www.example.test"), originEnd, h)
			c, sv := r.connect(upEnd, tlsDest)
			cc, err := (&http2.Transport{}).NewClientConn(bumpClient(t, r, c, "www.example.test", "h2"))
			if err != nil {
				t.Fatal(err)
			}
			defer func() { cc.Close(); sv.waitDoneOnce(t) }()
			if resp, err := h2GetHost(cc, host, "/before"); err != nil || resp.StatusCode != 200 {
				t.Fatalf("before the reload: %v %v", resp, err)
			}
			done := goH2GetHost(cc, host, "/slow")
			<-arrived
			reloadTo(t, holder, fmt.Sprintf(legacyPolicy, "destination_check: dns"))
			close(release)
			got := <-done
			if got.err != nil || got.resp.StatusCode != http.StatusForbidden {
				t.Fatalf("/slow after the reload: %v %v, want a 403", got.resp, got.err)
			}
			// Within 1 s: the connection is closed anyway some seconds
			// later, with no GOAWAY at the 403.
			awaitGoAway(t, cc, "no GOAWAY after the 403 for the name's failed check (state %+v)")
		})
	}
}

// The same over HTTP/1: the connection is closed after that 403, as after
// refuseDeniedName's, every request it could carry being refused alike
// (review r8s28 F1).
func TestReloadNameCheckAnswerH1Close(t *testing.T) {
	r, holder := wwwCheckFailsRig(t)
	raw, sv, arrived, release := connectSlowH1Origin(t, r, r.strangerLeaf("www.example.test"))
	defer func() { raw.Close(); sv.waitDoneOnce(t) }()
	hc := newHTTPClient(t, bumpClient(t, r, raw, "www.example.test", "http/1.1"))
	if resp, body := hc.do("GET /before HTTP/1.1\r\nHost: api.example.test\r\n\r\n"); resp.StatusCode != 200 {
		t.Fatalf("before the reload: %d %q", resp.StatusCode, body)
	}
	io.WriteString(hc.c, "GET /slow HTTP/1.1\r\nHost: api.example.test\r\n\r\n")
	<-arrived
	reloadTo(t, holder, fmt.Sprintf(legacyPolicy, "destination_check: dns"))
	close(release)
	resp, body := hc.read("/slow")
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "ended by a policy reload") {
		t.Fatalf("/slow after the reload: %d %q, want a 403 ended by the reload", resp.StatusCode, body)
	}
	if !resp.Close {
		t.Errorf("the connection is kept after the 403 for its name's failed check (Connection %q)", resp.Header.Get("Connection"))
	}
}
