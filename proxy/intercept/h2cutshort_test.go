package intercept_test

import (
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// TestH2CutShortBodyResetsStream: an origin that closes its connection
// before the end of its body, of a known length or chunked, has an h2c
// client's stream reset (RST_STREAM, INTERNAL_ERROR), never ended with
// END_STREAM: a stream that ends short of its content-length is a
// malformed response, which an intermediary must not forward (RFC 9113
// §8.1.1), and a client or cache that trusts END_STREAM would take it
// whole. The record counts the body bytes the client got before the
// reset. A chunked answer's head goes with its first bytes: cut before
// any, the client saw no head, and the record has no status (it said
// 200, a status the client never got).
func TestH2CutShortBodyResetsStream(t *testing.T) {
	for _, tc := range []struct {
		name, answer string
		got          int
		noHead       bool // the head does not go before the cut
	}{
		{"length-10-of-100", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789", 10, false},
		{"length-0-of-100", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", 0, false},
		{"length-20000-of-40000", "HTTP/1.1 200 OK\r\nContent-Length: 40000\r\n\r\n" + string(make([]byte, 20000)), 20000, false},
		{"chunked-cut", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n", 10, false},
		{"chunked-cut-before-data", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testPolicy)
			reading := make(chan struct{})
			var once sync.Once
			defer intercept.OnBodyRead(func() { once.Do(func() { close(reading) }) })()
			proxyEnd, originEnd := testnet.TCPPair(t)
			steps := scriptOrigin(t, originEnd)
			c, sv := r.connectTCP(proxyEnd, httpDest)
			c.SetDeadline(time.Now().Add(4 * waitLimit))
			h := newH2Tally(t, c, 1<<30)
			h.loop()
			h.get(1, "http", "/x")
			steps <- []byte(tc.answer)
			// The head and the bytes before the cut reach the client
			// first (flushed: the origin has nothing more for now); a
			// head alone waits in goproxy for the body's first read.
			if tc.noHead {
				select {
				case <-reading:
				case <-time.After(waitLimit):
					t.Fatal("the response body was never read")
				}
			} else if !h.waitUntil(waitLimit, func(h *h2Tally) bool { return h.gotHd && h.data == tc.got }) {
				d, _, _, _, _ := h.snapshot()
				t.Fatalf("before the cut: got %d bytes of %d", d, tc.got)
			}
			steps <- nil // the origin closes
			if !h.waitUntil(waitLimit, func(h *h2Tally) bool { return h.ended || h.rst }) {
				t.Fatal("the stream neither ended nor was reset")
			}
			data, _, status, rst, ended := h.snapshot()
			c.Close()
			sv.waitDoneOnce(t)
			rec := wwwRecord(t, r)
			if ended || !rst || h.rstErr != http2.ErrCodeInternal {
				t.Errorf("client: END_STREAM %v, RST_STREAM %v (%v) after %d bytes of a body cut short; want RST_STREAM INTERNAL_ERROR",
					ended, rst, h.rstErr, data)
			}
			wantStatus, wantHead := 200, "200"
			if tc.noHead {
				wantStatus, wantHead = 0, ""
			}
			if status != wantHead || data != tc.got {
				t.Errorf("client: status %q, %d bytes; want %q, %d", status, data, wantHead, tc.got)
			}
			if rec.Status != wantStatus || rec.BytesIn != int64(data) || rec.Result != "error" {
				t.Errorf("record: status %d bytes_in %d result %s error %q; want %d (0: none), %d (what the client got), error",
					rec.Status, rec.BytesIn, rec.Result, rec.Error, wantStatus, data)
			}
		})
	}
}
