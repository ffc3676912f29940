package intercept_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestReloadDeniedNameClosesH1Connection: a reload that denies the
// connection's own name (SNI www.example.test) by the policy's rules ends
// a request under way (its answer's head come after the reload) with a 403
// that closes the HTTP/1 connection, for a request for another Host (the
// name's deny) and for one for the name itself (its own deny, which is the
// name's): that one kept the connection, every later request refused
// (review r10s28 N1).
func TestReloadDeniedNameClosesH1Connection(t *testing.T) {
	for _, host := range []string{"api.example.test", "www.example.test"} {
		t.Run(host, func(t *testing.T) {
			r, holder := newReloadableRig(t)
			raw, sv, arrived, release := connectSlowH1Origin(t, r, r.upLeaf("www.example.test"))
			defer func() { raw.Close(); sv.waitDoneOnce(t) }()
			hc := newHTTPClient(t, bumpClient(t, r, raw, "www.example.test", "http/1.1"))
			if resp, body := hc.do("GET /before HTTP/1.1\r\nHost: " + host + "\r\n\r\n"); resp.StatusCode != 200 {
				t.Fatalf("before the reload: %d %q", resp.StatusCode, body)
			}
			io.WriteString(hc.c, "GET /slow HTTP/1.1\r\nHost: "+host+"\r\n\r\n")
			<-arrived
			reloadTo(t, holder, tightenedPolicy)
			close(release)
			resp, body := hc.read("/slow")
			if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "reload") {
				t.Fatalf("/slow after the reload: %d %q", resp.StatusCode, body)
			}
			if !resp.Close {
				t.Errorf("the connection is kept after the 403 of a reload that denied its name (Connection %q)", resp.Header.Get("Connection"))
			}
			time.Sleep(50 * time.Millisecond)
		})
	}
}
