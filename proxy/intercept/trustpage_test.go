package intercept_test

import (
	"bufio"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// trustRig is a rig whose trust host answers every request with page.
func trustRig(t *testing.T, page string) *rig {
	return newRig(t, testPolicy, func(c *intercept.Config) {
		c.TrustHost = "gwlbproxy.internal"
		c.Trust = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) { io.WriteString(w, page) })
	})
}

// waitTrustRecord waits for the one http record of a trust-page request.
func waitTrustRecord(t *testing.T, r *rig) records.Record {
	t.Helper()
	for end := time.Now().Add(waitLimit); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if recs := ofKind(r.records(), "http"); len(recs) > 0 {
			if len(recs) != 1 || recs[0].Rule != "trust-page" {
				t.Fatalf("http records %+v, want one of the trust page", recs)
			}
			return recs[0]
		}
	}
	t.Fatal("no http record")
	return records.Record{}
}

// A HEAD for the trust page gets its head and no body, and its record
// counts none: bytes_in was the page's length.
func TestTrustPageHEADRecord(t *testing.T) {
	page := strings.Repeat("P", 1234)
	r := trustRig(t, page)
	upEnd, _ := r.startUpstreamTCP(nil)
	c, _ := r.connectTCP(upEnd, httpDest)
	c.SetDeadline(time.Now().Add(waitLimit))
	io.WriteString(c, "HEAD / HTTP/1.1\r\nHost: gwlbproxy.internal\r\nConnection: close\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodHead})
	if err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(br)
	if resp.StatusCode != 200 || resp.ContentLength != int64(len(page)) || len(rest) != 0 {
		t.Fatalf("HEAD: status %d, Content-Length %d, %d bytes after the head; want 200, %d, none",
			resp.StatusCode, resp.ContentLength, len(rest), len(page))
	}
	if rec := waitTrustRecord(t, r); rec.Method != "HEAD" || rec.Status != 200 || rec.Result != "ok" || rec.BytesIn != 0 {
		t.Errorf("record method %s status %d result %s bytes_in %d; want HEAD 200 ok 0", rec.Method, rec.Status, rec.Result, rec.BytesIn)
	}
}

// A trust page is recorded once it has reached the client, or failed to,
// as any response is: a client that reads its head and resets the
// connection is not recorded ok with the whole page. Before, the record
// was written before anything was sent.
func TestTrustPageClientGone(t *testing.T) {
	page := strings.Repeat("P", 16<<20) // more than loopback buffers hold
	r := trustRig(t, page)
	upEnd, _ := r.startUpstreamTCP(nil)
	c, _ := r.connectTCP(upEnd, httpDest)
	// The head comes once the page's first bytes are ready, which takes
	// seconds under the race detector on a loaded machine.
	c.SetDeadline(time.Now().Add(3 * waitLimit))
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: gwlbproxy.internal\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("response %v, %v", resp, err)
	}
	c.SetLinger(0) // a reset: the appliance's writes fail
	c.Close()
	rec := waitTrustRecord(t, r)
	if rec.Result == "ok" || rec.BytesIn >= int64(len(page)) || rec.Error == "" {
		t.Errorf("record result %s bytes_in %d error %q; want the client gone, fewer than %d bytes",
			rec.Result, rec.BytesIn, rec.Error, len(page))
	}
	t.Logf("record result %s bytes_in %d error %q", rec.Result, rec.BytesIn, rec.Error)
}
