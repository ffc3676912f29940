package intercept_test

import (
	"net"
	"net/http"
	"strings"
	"testing"
)

// allowOnlyWWW lets www.example.test through, bumped or in cleartext, and
// nothing else.
const allowOnlyWWW = `
policy:
  default: deny
  rules:
    - name: only-www-tls
      domains: ["www.example.test"]
      protocols: [tls]
      action: bump
    - name: only-www-http
      domains: ["www.example.test"]
      protocols: [http]
      action: allow
`

// TestOddRequestTargetRefused: a request target that net/http reads as a
// URL with a scheme and an opaque part ("x:http://evil/secret") has no
// host, so the request used to be decided and recorded on its Host header
// (www, allowed), while the transport wrote the opaque part as the target:
// the destination got "GET http://evil.example.test/secret", whose host an
// origin takes over the Host header, and served a name the policy never
// allowed. Such targets, and Hosts with characters no host name has (which
// were decided as names of their own and sent blank or as written), now get
// a 400 and a deny record, and nothing reaches the destination. A plain
// absolute-form target is still decided on its own host and served.
func TestOddRequestTargetRefused(t *testing.T) {
	cases := []struct{ target, host string }{
		{"x:http://evil.example.test/secret", "www.example.test"},
		{"evil.example.test:443", "www.example.test"},
		{"mailto:evil.example.test", "www.example.test"},
		{"/secret", "www.example.test@evil.example.test"},
		{"/secret", "evil.example.test,www.example.test"},
	}
	for _, bumped := range []bool{true, false} {
		for _, tc := range cases {
			name := map[bool]string{true: "bumped", false: "cleartext"}[bumped] + " " + tc.target + " Host " + tc.host
			t.Run(name, func(t *testing.T) {
				r := newRig(t, allowOnlyWWW)
				var c net.Conn
				var sv *served
				var up *upstream
				if bumped {
					var upEnd, raw net.Conn
					upEnd, up = r.startUpstream(r.upLeaf("www.example.test"), "http/1.1")
					raw, sv = r.connect(upEnd, tlsDest)
					c = bumpClient(t, r, raw, "www.example.test", "http/1.1")
				} else {
					var upEnd net.Conn
					upEnd, up = r.startUpstream(nil)
					c, sv = r.connect(upEnd, httpDest)
				}
				hc := newHTTPClient(t, c)
				resp, body := hc.do("GET " + tc.target + " HTTP/1.1\r\nHost: " + tc.host + "\r\n\r\n")
				c.Close()
				sv.waitDoneOnce(t)
				if resp.StatusCode != http.StatusBadRequest {
					t.Errorf("status %d %q, want the appliance's 400", resp.StatusCode, body)
				}
				if got := up.requests(); len(got) != 0 {
					t.Errorf("the destination served %q", got)
				}
				var denied bool
				for _, rec := range r.records() {
					if rec.Kind == "http" {
						denied = rec.Action == "deny" && rec.Status == http.StatusBadRequest && rec.Result == "denied"
						if !denied {
							t.Errorf("http record %+v, want a deny with the 400", rec)
						}
					}
				}
				if !denied {
					t.Errorf("no http record; records %+v", r.records())
				}
			})
		}
	}
	t.Run("absolute form", func(t *testing.T) {
		r := newRig(t, allowOnlyWWW)
		upEnd, up := r.startUpstream(r.upLeaf("www.example.test"), "http/1.1")
		raw, sv := r.connect(upEnd, tlsDest)
		c := bumpClient(t, r, raw, "www.example.test", "http/1.1")
		hc := newHTTPClient(t, c)
		resp, body := hc.do("GET https://www.example.test/ok HTTP/1.1\r\nHost: other.example.test\r\n\r\n")
		c.Close()
		sv.waitDoneOnce(t)
		if resp.StatusCode != http.StatusOK || !strings.Contains(body, "GET www.example.test /ok") {
			t.Errorf("absolute-form target: %d %q, want it served for www.example.test", resp.StatusCode, body)
		}
		if got := up.requests(); len(got) != 1 {
			t.Errorf("the destination served %q, want the one request", got)
		}
	})
}
