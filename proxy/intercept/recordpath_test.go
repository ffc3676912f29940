package intercept_test

import (
	"net"
	"net/http"
	"testing"
)

// TestRecordPathAsSent: an http record's path is the target's path as the
// client sent it, escapes and all: decoded, a client made its record show
// another path, with what read as a query string and a fragment
// (`/a%2Fb%3Ftoken=secret%23frag` recorded as `/a/b?token=secret#frag`),
// while the destination got the escaped one (review r1policy F1). So for
// an allowed request, a denied one, and a cleartext connection's first
// request, which is decided before goproxy reads it.
func TestRecordPathAsSent(t *testing.T) {
	const path = "/a%2Fb%3Ftoken=secret%23frag/%2e%2e/admin"
	for _, bumped := range []bool{false, true} {
		t.Run(map[bool]string{false: "cleartext", true: "bumped"}[bumped], func(t *testing.T) {
			r := newRig(t, testPolicy)
			var (
				c      net.Conn
				sv     *served
				scheme = "http"
			)
			if bumped {
				upEnd, _ := r.startUpstream(r.upLeaf("www.example.test"), "http/1.1")
				var raw net.Conn
				raw, sv = r.connect(upEnd, tlsDest)
				c, scheme = bumpClient(t, r, raw, "www.example.test", "http/1.1"), "https"
			} else {
				upEnd, _ := r.startUpstream(nil)
				c, sv = r.connect(upEnd, httpDest)
			}
			hc := newHTTPClient(t, c)
			if resp, body := hc.do("GET " + path + "?q=1 HTTP/1.1\r\nHost: www.example.test\r\n\r\n"); resp.StatusCode != 200 {
				t.Fatalf("allowed: %d %q", resp.StatusCode, body)
			}
			if resp, body := hc.do("GET " + scheme + "://evil.example.test" + path + " HTTP/1.1\r\nHost: www.example.test\r\n\r\n"); resp.StatusCode != http.StatusForbidden {
				t.Fatalf("denied: %d %q", resp.StatusCode, body)
			}
			c.Close()
			sv.waitDoneOnce(t)
			hr := ofKind(r.records(), "http")
			if len(hr) != 2 {
				t.Fatalf("http records %+v", hr)
			}
			for _, rec := range hr {
				if rec.Path != path {
					t.Errorf("%s record's path %q, want %q as sent", rec.Action, rec.Path, path)
				}
			}
		})
	}
	// The first request is read apart, and was parsed as a URL, not a
	// request target: a path beginning // lost its first segment to a
	// host, and a # cut the rest off, in the deny record alone (review
	// r3s24 F3). A raw # is a byte a path may not hold: Go's URL
	// handling escapes the path afresh, as for the destination.
	for p, want := range map[string]string{path: path, "//x/y%2Fz": "//x/y%2Fz", "/a#frag%2F": "/a%23frag/"} {
		t.Run("cleartext first request denied "+p, func(t *testing.T) {
			r := newRig(t, testPolicy)
			upEnd, _ := r.startUpstream(nil)
			c, sv := r.connect(upEnd, httpDest)
			hc := newHTTPClient(t, c)
			if resp, body := hc.do("GET " + p + " HTTP/1.1\r\nHost: evil.example.test\r\n\r\n"); resp.StatusCode != http.StatusForbidden {
				t.Fatalf("%d %q", resp.StatusCode, body)
			}
			sv.waitDoneOnce(t)
			if recs := r.records(); len(recs) != 1 || recs[0].Path != want {
				t.Errorf("records %+v, want one with path %q", recs, want)
			}
		})
	}
	// An absolute-form target with no path goes out as "/".
	t.Run("absolute-form without a path", func(t *testing.T) {
		r := newRig(t, testPolicy)
		upEnd, _ := r.startUpstream(nil)
		c, sv := r.connect(upEnd, httpDest)
		hc := newHTTPClient(t, c)
		hc.do("GET / HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
		if resp, body := hc.do("GET http://www.example.test?q=1 HTTP/1.1\r\nHost: www.example.test\r\n\r\n"); resp.StatusCode != 200 {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
		c.Close()
		sv.waitDoneOnce(t)
		if hr := ofKind(r.records(), "http"); len(hr) != 2 || hr[1].Path != "/" {
			t.Errorf("records %+v, want the second with path /", hr)
		}
	})
}
