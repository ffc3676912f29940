package intercept_test

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
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

// allowWildcard allows every name under allowed.example, and nothing else.
const allowWildcard = `
policy:
  default: deny
  rules:
    - name: allowed
      domains: ["*.allowed.example"]
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
	cases := []struct{ target, host, why string }{
		{"x:http://evil.example.test/secret", "www.example.test", "after its scheme, http://evil.example.test/secret"},
		{"evil.example.test:443", "www.example.test", "after its scheme, 443"},
		{"mailto:evil.example.test", "www.example.test", "after its scheme, evil.example.test"},
		{"/secret", "www.example.test@evil.example.test", "www.example.test@evil.example.test"},
		{"/secret", "evil.example.test,www.example.test", "evil.example.test,www.example.test"},
	}
	for _, bumped := range []bool{true, false} {
		for _, tc := range cases {
			name := map[bool]string{true: "bumped", false: "cleartext"}[bumped] + " " + tc.target + " Host " + tc.host
			t.Run(name, func(t *testing.T) {
				r := newRig(t, allowOnlyWWW)
				c, sv, up := connectWWW(t, r, bumped)
				wantRefused(t, c, sv, up, "GET "+tc.target+" HTTP/1.1\r\nHost: "+tc.host+"\r\n\r\n")
				var denied bool
				for _, rec := range r.records() {
					if rec.Kind == "http" {
						denied = rec.Action == "deny" && rec.Status == http.StatusBadRequest && rec.Result == "denied"
						if !denied {
							t.Errorf("http record %+v, want a deny with the 400", rec)
						}
						// Refused before any policy decided: it names none, and
						// says what the client sent.
						if rec.Policy != "" || rec.Rule != "" || !strings.Contains(rec.Error, tc.why) {
							t.Errorf("http record rule %q policy %q error %q, want no rule or policy and the client's target or Host in the error", rec.Rule, rec.Policy, rec.Error)
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

// TestBracketedAuthorityRefused: HTTP/2's :authority may hold brackets
// around anything x/net lets through ("[evil.example%.allowed.example]"),
// and canonicalHost used to take any bracketed authority for an IPv6
// literal and return it unchecked: the stream was decided on the name
// inside (a *.allowed.example one here), while net/http sent the Host cut
// at the '%'. Brackets around anything but an IPv6 address (an IPv4
// one included: brackets hold only IPv6, RFC 3986), or a lone one
// ("x.allowed.example]", decided as x.allowed.example while net/http sent
// the bracket on), now get a 400 and a
// deny record, and reach no origin; an IPv6 literal is decided as one
// (denied here by the default, not refused).
func TestBracketedAuthorityRefused(t *testing.T) {
	for _, tc := range []struct {
		authority string
		status    int
	}{
		{"[evil.example%.allowed.example]", http.StatusBadRequest},
		{"[a,b.allowed.example]", http.StatusBadRequest},
		{"[x.allowed.example]", http.StatusBadRequest},
		{"[x.allowed.example]:80", http.StatusBadRequest},
		{"[]", http.StatusBadRequest},
		{"x.allowed.example]", http.StatusBadRequest},
		{"[x.allowed.example", http.StatusBadRequest},
		{"[", http.StatusBadRequest},
		{"]", http.StatusBadRequest},
		{"[::ffff:192.0.2.10%25.allowed.example]", http.StatusBadRequest},
		{"[::ffff:192.0.2.10%25.allowed.example]:80", http.StatusBadRequest},
		{"[fe80::1%25eth0]", http.StatusBadRequest},
		{"[192.0.2.10]", http.StatusBadRequest},
		{"[192.0.2.10]:80", http.StatusBadRequest},
		{"[2001:db8::1]", http.StatusForbidden},
		{"[2001:db8::1]:8080", http.StatusForbidden},
	} {
		t.Run(tc.authority, func(t *testing.T) {
			r := newRig(t, allowWildcard)
			upEnd, up := r.startUpstream(nil)
			c, _ := r.connect(upEnd, httpDest)
			c.SetDeadline(time.Now().Add(waitLimit))
			cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(c)
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			req, _ := http.NewRequest("GET", "http://ok.example/a", nil)
			req.Host = tc.authority
			resp, err := cc.RoundTrip(req)
			if err != nil {
				t.Fatalf("round trip: %v", err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if got := up.requests(); len(got) != 0 {
				t.Errorf(":authority %q reached the origin as %q", tc.authority, got)
			}
		})
	}
}

// TestZonedAddressHostRefused: an IPv6 literal with a zone whose text ends
// in an allowed wildcard's suffix ("[::ffff:D%25.allowed.example]") was
// decided as a name under "*.allowed.example", and the destination check
// read it as the address D it holds (dropping the zone): any server at
// any IPv4 address was reachable under a strict allow-list, and net/http
// sent it "Host: [::ffff:D]". As a Host header or an absolute-form target
// it now gets a 400 and reaches no origin (HTTP/2's :authority:
// TestBracketedAuthorityRefused).
func TestZonedAddressHostRefused(t *testing.T) {
	zoned := "[::ffff:" + httpDest.Addr().String() + "%25.allowed.example]"
	for _, head := range []string{
		"GET /secret HTTP/1.1\r\nHost: " + zoned + "\r\n\r\n",
		"GET http://" + zoned + "/secret HTTP/1.1\r\nHost: x.allowed.example\r\n\r\n",
	} {
		t.Run(strings.Fields(head)[1], func(t *testing.T) {
			r := newRig(t, allowWildcard)
			upEnd, up := r.startUpstream(nil)
			c, sv := r.connect(upEnd, httpDest)
			wantRefused(t, c, sv, up, head)
		})
	}
}

// TestHostPortNotNumberRefused: a Host whose port is not a number may
// hide another authority: "x.allowed.example:@evil.example" splits into
// host x.allowed.example (allowed) and port "@evil.example", while an
// origin or front end that parses the authority as a URL reads userinfo
// "x.allowed.example:" and host evil.example. Such a Host gets a 400 and
// reaches no origin. (x/net's client refuses it as an HTTP/2 :authority,
// so only HTTP/1 is tried; ports of letters or a sign alone never get this
// far: the request head is refused as malformed before it is decided.)
func TestHostPortNotNumberRefused(t *testing.T) {
	for _, host := range []string{
		"x.allowed.example:@evil.example",
		"x.allowed.example:80@evil.example",
		"x.allowed.example:65536",
	} {
		t.Run(host, func(t *testing.T) {
			r := newRig(t, allowWildcard)
			upEnd, up := r.startUpstream(nil)
			c, sv := r.connect(upEnd, httpDest)
			wantRefused(t, c, sv, up, "GET /secret HTTP/1.1\r\nHost: "+host+"\r\n\r\n")
		})
	}
}

// wantRefused sends head on c, closes it once answered, waits for the
// appliance to finish the flow, and checks that the appliance answered
// 400 and the destination served nothing.
func wantRefused(t *testing.T, c net.Conn, sv *served, up *upstream, head string) {
	t.Helper()
	hc := newHTTPClient(t, c)
	resp, body := hc.do(head)
	c.Close()
	sv.waitDoneOnce(t)
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("status %d %q, want the appliance's 400", resp.StatusCode, body)
	}
	if got := up.requests(); len(got) != 0 {
		t.Errorf("the destination served %q", got)
	}
}

// connectWWW connects a client through the appliance to an HTTP/1.1
// upstream for www.example.test: bumped (TLS, its leaf trusted) or
// cleartext HTTP.
func connectWWW(t *testing.T, r *rig, bumped bool) (net.Conn, *served, *upstream) {
	t.Helper()
	if bumped {
		upEnd, up := r.startUpstream(r.upLeaf("www.example.test"), "http/1.1")
		raw, sv := r.connect(upEnd, tlsDest)
		return bumpClient(t, r, raw, "www.example.test", "http/1.1"), sv, up
	}
	upEnd, up := r.startUpstream(nil)
	c, sv := r.connect(upEnd, httpDest)
	return c, sv, up
}
