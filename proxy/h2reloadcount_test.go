package proxy

import (
	"io"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// TestBumpH2ReloadResetCountsWhatWent: the full appliance (stream watch
// on): a bumped h2 client has read 64 KiB of a known-length body from an
// h2 origin when a reload denies it; the origin sends more, and the
// stream is reset. The record's bytes_in is what the client got, not the
// bytes the last flush had sent (the head only: 0).
func TestBumpH2ReloadResetCountsWhatWent(t *testing.T) {
	more := make(chan struct{})
	r := newBumpStallRig(t, time.Hour, func(_ *bumpStallRig, w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Length", "10000000")
		w.Write(make([]byte, 65536))
		w.(http.Flusher).Flush()
		select {
		case <-more:
		case <-req.Context().Done():
			return
		}
		w.Write(make([]byte, 65536))
	}, "h2")
	cc, err := (&http2.Transport{}).NewClientConn(r.dialTLS(t, "h2"))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	req, _ := http.NewRequest("GET", "https://big.example/dl", nil)
	resp, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 65536)); err != nil {
		t.Fatal(err)
	}
	// Checked as the origin's next bytes are read (more).
	r.p.cfg.Policy.Store(clsMust(policy.Parse("deny.yaml", []byte("policy: {default: deny}\n")))(t))
	close(more)
	n, err := io.Copy(io.Discard, resp.Body)
	if err == nil {
		t.Error("the body ended whole after the reload's deny, want the stream reset")
	}
	had := 65536 + n
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		for _, rec := range r.sink.parse(t) {
			if rec.Kind != "http" {
				continue
			}
			if rec.Result != "denied" || rec.BytesIn != had || rec.Status != 200 {
				t.Errorf("record: status %d bytes_in %d result %s; want 200, %d (what the client had), denied",
					rec.Status, rec.BytesIn, rec.Result, had)
			}
			return
		}
	}
	t.Fatal("no http record")
}
