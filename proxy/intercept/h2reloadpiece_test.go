package intercept_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// TestH2ReloadResetCountsFullPieces: a reload resets an h2c stream whose
// known-length body's latest pieces filled their reads (more than 4 KiB:
// x/net's empty per-stream buffer passes such a write on whole, so
// streamEnd does not flush it). The record's bytes_in is what the
// client's stream got before the RST_STREAM, not what the last flush
// had sent (0 when only the head was flushed).
func TestH2ReloadResetCountsFullPieces(t *testing.T) {
	for _, tc := range []struct {
		name          string
		first, second int
	}{
		{"head-then-64k", 0, 65536},
		{"short-then-16k", 1000, 16384},
		{"short-then-20k", 1000, 20000},
		{"short-only", 1000, 0},
		{"head-only", 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var holder policy.Holder
			r := newRig(t, testPolicy, func(c *intercept.Config) { c.Policy = &holder })
			holder.Store(r.pol)
			proxyEnd, originEnd := testnet.TCPPair(t)
			steps := scriptOrigin(t, originEnd)
			c, sv := r.connectTCP(proxyEnd, httpDest)
			c.SetDeadline(time.Now().Add(4 * waitLimit))
			h := newH2Tally(t, c, 1<<30)
			h.loop()
			h.get(1, "http", "/x")
			steps <- append([]byte("HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"), bytes.Repeat([]byte("a"), tc.first)...)
			if !h.waitUntil(waitLimit, func(h *h2Tally) bool { return h.gotHd && h.data == tc.first }) {
				d, _, _, _, _ := h.snapshot()
				t.Fatalf("first bytes: got %d of %d", d, tc.first)
			}
			if tc.second > 0 {
				steps <- bytes.Repeat([]byte("b"), tc.second)
				if !h.waitUntil(waitLimit, func(h *h2Tally) bool { return h.data == tc.first+tc.second }) {
					d, _, _, _, _ := h.snapshot()
					t.Fatalf("second bytes: got %d of %d", d, tc.first+tc.second)
				}
			}
			// The reload is checked as the next read returns: the
			// origin's next bytes are denied, and the stream reset.
			reloadTo(t, &holder, tightenedPolicy)
			steps <- []byte("ccccc")
			if !h.waitUntil(waitLimit, func(h *h2Tally) bool { return h.rst || h.ended }) {
				t.Fatal("the stream neither ended nor was reset")
			}
			data, frames, status, rst, _ := h.snapshot()
			c.Close()
			sv.waitDoneOnce(t)
			rec := wwwRecord(t, r)
			t.Logf("client: status %s, %d bytes in %d DATA frames, rst %v; record: status %d bytes_in %d result %s",
				status, data, frames, rst, rec.Status, rec.BytesIn, rec.Result)
			if !rst {
				t.Error("the stream ended with END_STREAM, want RST_STREAM")
			}
			if rec.BytesIn != int64(data) {
				t.Errorf("bytes_in %d, but the client's stream got %d bytes before the RST_STREAM", rec.BytesIn, data)
			}
			if rec.Status != 200 {
				t.Errorf("status %d, the client got the head (200)", rec.Status)
			}
		})
	}
}
