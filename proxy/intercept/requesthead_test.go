package intercept_test

import (
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// wantEnded waits for the appliance to end c, a client connection, and
// checks that it took at least after.
func wantEnded(t *testing.T, c net.Conn, start time.Time, after time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(waitLimit))
	if _, err := io.Copy(io.Discard, c); err != nil && strings.Contains(err.Error(), "timeout") {
		t.Fatalf("the connection is still open %v after an unfinished head", waitLimit)
	}
	if took := time.Since(start); took < after {
		t.Errorf("ended after %v, before the head timeout (%v)", took, after)
	}
}

// wantRecordOf waits for a record of kind whose error says want.
func wantRecordOf(t *testing.T, r *rig, kind, want string) {
	t.Helper()
	var errs []string
	for end := time.Now().Add(waitLimit); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		errs = errs[:0]
		for _, rec := range ofKind(r.records(), kind) {
			if strings.Contains(rec.Error, want) {
				return
			}
			errs = append(errs, rec.Result+": "+rec.Error)
		}
	}
	t.Fatalf("no %s record whose error says %q: %q", kind, want, errs)
}

// A client that leaves a request head unfinished (or an HTTP/2 preface)
// has its connection ended requestHeadTimeout after the head's first
// byte, with a record saying so: it held the flow, and the head so far,
// for good. Between requests, and while a body or the response comes,
// there is no such deadline.
func TestRequestHeadTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	defer intercept.SetRequestHeadTimeout(timeout)()
	partial := "GET / HTTP/1.1\r\nHost: www.example.test\r\nX-P: " + strings.Repeat("p", 1000)

	t.Run("cleartext", func(t *testing.T) {
		r := newRig(t, testPolicy)
		upEnd, _ := r.startUpstream(nil)
		c, _ := r.connectTCP(upEnd, httpDest)
		start := time.Now()
		io.WriteString(c, partial)
		wantEnded(t, c, start, timeout)
		wantRecordOf(t, r, "http", "request head not complete")
		wantTimeoutRecords(t, r, false)
	})
	t.Run("h2c preface", func(t *testing.T) {
		r := newRig(t, testPolicy)
		upEnd, _ := r.startUpstream(nil)
		c, _ := r.connectTCP(upEnd, httpDest)
		start := time.Now()
		io.WriteString(c, "PRI * HTTP/2.0\r\n")
		wantEnded(t, c, start, timeout)
	})
	t.Run("bumped", func(t *testing.T) {
		r := newRig(t, testPolicy)
		upEnd, _ := r.startUpstreamTCP(r.upLeaf("www.example.test"), "http/1.1")
		c, _ := r.connectTCP(upEnd, tlsDest)
		tc := tls.Client(c, &tls.Config{ServerName: "www.example.test", RootCAs: r.caPool(), NextProtos: []string{"http/1.1"}})
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		io.WriteString(tc, partial)
		wantEnded(t, tc, start, timeout)
		wantRecordOf(t, r, "tls", "request head not complete")
		for _, rec := range ofKind(r.records(), "tls") {
			if rec.Action != "bump" || rec.Result != "timeout" {
				t.Errorf("the tls record: action %s, result %s; want bump, timeout", rec.Action, rec.Result)
			}
		}
	})
	t.Run("kept alive", func(t *testing.T) {
		r := newRig(t, testPolicy)
		upEnd, _ := r.startUpstreamTCP(nil)
		c, _ := r.connectTCP(upEnd, httpDest)
		h := newHTTPClient(t, c)
		// A head whose parts come slowly, but each within the timeout,
		// and a body slower than the timeout, pass; so does a wait
		// between requests.
		io.WriteString(c, "POST /a HTTP/1.1\r\n")
		time.Sleep(timeout / 3)
		io.WriteString(c, "Host: www.example.test\r\nContent-Length: 4\r\n\r\n")
		for _, b := range "body" {
			time.Sleep(timeout / 2)
			io.WriteString(c, string(b))
		}
		if resp, body := h.read("POST /a"); resp.StatusCode != 200 || !strings.Contains(body, "POST") {
			t.Fatalf("a slow body: %d %q", resp.StatusCode, body)
		}
		time.Sleep(3 * timeout)
		if resp, _ := h.do("GET /b HTTP/1.1\r\nHost: www.example.test\r\n\r\n"); resp.StatusCode != 200 {
			t.Fatalf("a request after an idle wait: %d", resp.StatusCode)
		}
		start := time.Now()
		io.WriteString(c, partial)
		wantEnded(t, c, start, timeout)
		wantRecordOf(t, r, "http", "request head not complete")
	})
}
