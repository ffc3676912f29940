package intercept_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestH2TrailerFieldOverLimit: an HTTP/2 request whose trailer field is
// 33,000 commas (33 KB, half the default limit) weighs 1 MB as x/net's
// server counts it (32 bytes a name it announces). The interceptor counted
// it as one field and let it pass; goproxy's server refused it with its
// own 431, so the client got a 431 with no http record (bumped: only the
// tls record, ok). The interceptor now counts it as the server does:
// its 431, and a deny record.
func TestH2TrailerFieldOverLimit(t *testing.T) {
	for _, bumped := range []bool{true, false} {
		t.Run(map[bool]string{false: "h2c", true: "bumped"}[bumped], func(t *testing.T) {
			r := newRig(t, testPolicy)
			cc, sv, up, scheme := h2Conn(t, r, bumped)
			req, _ := http.NewRequest("GET", scheme+"://www.example.test/trailer", nil)
			req.Header.Set("Trailer", strings.Repeat(",", 33000))
			resp, err := cc.RoundTrip(req)
			if err != nil {
				t.Fatalf("round trip: %v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			cc.Close()
			sv.waitDoneOnce(t)
			if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge || strings.Contains(string(body), "HTTP Error 431") {
				t.Errorf("status %d %q, want the appliance's 431 (not the HTTP/2 server's own page)", resp.StatusCode, body)
			}
			if n := len(up.requests()); n != 0 {
				t.Errorf("%d requests reached the upstream", n)
			}
			var denied bool
			for _, rec := range ofKind(r.records(), "http") {
				denied = denied || rec.Action == "deny" && rec.Status == http.StatusRequestHeaderFieldsTooLarge
			}
			if !denied {
				t.Errorf("no http deny record with the 431; records %+v", r.records())
			}
		})
	}
}
