package intercept_test

import (
	"bufio"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestRequestKeepAliveDroppedUnnamed: a request's Keep-Alive field went
// on to the destination unless its Connection named keep-alive, though
// docs/policy.md says requests go on without it: it is hop-by-hop (RFC
// 9112 §9.3, RFC 9110 §7.6.1) whether named or not, as Proxy-Connection.
func TestRequestKeepAliveDroppedUnnamed(t *testing.T) {
	for _, tc := range []struct{ name, conn string }{
		{"no Connection", ""},
		{"Connection close", "Connection: close\r\n"},
		{"Connection naming another", "Connection: x-other\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := forwardedHead(t, false, "GET /a HTTP/1.1\r\nHost: www.example.test\r\n"+tc.conn+
				"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n\r\n")
			h := strings.ToLower(got)
			for _, gone := range []string{"\nkeep-alive:", "\nproxy-connection:"} {
				if strings.Contains(h, gone) {
					t.Errorf("the origin got %q in %q", strings.TrimPrefix(gone, "\n"), got)
				}
			}
		})
	}
}

// forwardedHead sends request on a new connection through a rig, bumped or
// cleartext, reads the answer, and returns the one head the origin got.
func forwardedHead(t *testing.T, bumped bool, request string) string {
	t.Helper()
	r := newRig(t, testPolicy)
	c, sv, o := connectHTTP1(t, r, bumped)
	c.SetDeadline(time.Now().Add(waitLimit))
	br := bufio.NewReader(c)
	io.WriteString(c, request)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	c.Close()
	sv.waitDoneOnce(t)
	heads := o.got()
	if len(heads) != 1 {
		t.Fatalf("the origin got heads %q, want one", heads)
	}
	return heads[0]
}
