package intercept_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestBumpedRecordBytes: a bumped connection's tls record counts what
// reached the destination and came back, not what the client sent: a
// big upload in a denied request is in neither, an allowed one is.
func TestBumpedRecordBytes(t *testing.T) {
	const denied, allowed = 1 << 20, 64 << 10
	r := newRig(t, testPolicy)
	upEnd, up := r.startUpstream(r.upLeaf("www.example.test"), "http/1.1")
	raw, sv := r.connect(upEnd, tlsDest)
	c := bumpClient(t, r, raw, "www.example.test", "http/1.1")
	hc := newHTTPClient(t, c)
	post := func(host string, n int) (*http.Response, string) {
		t.Helper()
		// On the side: a pipe has no buffer, and the 403 comes before
		// the body is read.
		wrote := make(chan error, 1)
		go func() {
			_, err := io.WriteString(c, fmt.Sprintf("POST /up HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n%s",
				host, n, strings.Repeat("u", n)))
			wrote <- err
		}()
		resp, body := hc.read("POST to " + host)
		if err := <-wrote; err != nil {
			t.Fatalf("writing the POST to %s: %v", host, err)
		}
		return resp, body
	}
	if resp, body := post("evil.example.test", denied); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("denied upload: %d %q", resp.StatusCode, body)
	}
	resp, body := post("www.example.test", allowed)
	if resp.StatusCode != 200 {
		t.Fatalf("allowed upload: %d %q", resp.StatusCode, body)
	}
	c.Close()
	sv.waitDoneOnce(t)
	up.waitClosed(t)
	recs := ofKind(r.records(), "tls")
	if len(recs) != 1 {
		t.Fatalf("tls records %+v, want one", recs)
	}
	rec := recs[0]
	// The allowed upload, its head and TLS's own bytes; not the denied one.
	if rec.BytesOut < allowed || rec.BytesOut >= denied {
		t.Errorf("tls record bytes_out %d: want at least the allowed upload (%d), less than the denied one (%d)",
			rec.BytesOut, allowed, denied)
	}
	if rec.BytesIn < int64(len(body)) || rec.BytesIn > 64<<10 {
		t.Errorf("tls record bytes_in %d: want the upstream's response (%d bytes of body) and TLS's own bytes",
			rec.BytesIn, len(body))
	}
}
