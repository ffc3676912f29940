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
// reset.
func TestH2CutShortBodyResetsStream(t *testing.T) {
	for _, tc := range []struct {
		name, answer string
		got          int
	}{
		{"length-10-of-100", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789", 10},
		{"length-0-of-100", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", 0},
		{"length-20000-of-40000", "HTTP/1.1 200 OK\r\nContent-Length: 40000\r\n\r\n" + string(make([]byte, 20000)), 20000},
		{"chunked-cut", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n", 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testPolicy)
			proxyEnd, originEnd := testnet.TCPPair(t)
			steps := scriptOrigin(t, originEnd)
			c, sv := r.connectTCP(proxyEnd, httpDest)
			c.SetDeadline(time.Now().Add(4 * waitLimit))
			h := newH2Tally(t, c, 1<<30)
			h.loop()
			h.get(1, "http", "/x")
			steps <- []byte(tc.answer)
			// The head and the bytes before the cut reach the client
			// first (flushed: the origin has nothing more for now).
			if !h.waitUntil(waitLimit, func(h *h2Tally) bool { return h.gotHd && h.data == tc.got }) {
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
			if status != "200" || data != tc.got {
				t.Errorf("client: status %q, %d bytes; want 200, %d", status, data, tc.got)
			}
			if rec.Status != 200 || rec.BytesIn != int64(data) || rec.Result != "error" {
				t.Errorf("record: status %d bytes_in %d result %s error %q; want 200, %d (what the client got), error",
					rec.Status, rec.BytesIn, rec.Result, rec.Error, data)
			}
		})
	}
}

// TestH2CutBeforeFirstBytesNoStatus: a chunked answer's head goes to an
// HTTP/2 client with its first bytes; an origin that closes before any
// has the stream reset before the client saw a head, and the record then
// has no status (it said 200, a status the client never got).
func TestH2CutBeforeFirstBytesNoStatus(t *testing.T) {
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
	steps <- []byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
	select {
	case <-reading: // the head is goproxy's; the body's first read waits
	case <-time.After(waitLimit):
		t.Fatal("the response body was never read")
	}
	steps <- nil // the origin closes
	if !h.waitUntil(waitLimit, func(h *h2Tally) bool { return h.ended || h.rst }) {
		t.Fatal("the stream neither ended nor was reset")
	}
	data, _, status, rst, ended := h.snapshot()
	c.Close()
	sv.waitDoneOnce(t)
	rec := wwwRecord(t, r)
	if ended || !rst || status != "" || data != 0 {
		t.Errorf("client: END_STREAM %v, RST_STREAM %v, status %q, %d bytes; want a reset alone", ended, rst, status, data)
	}
	if rec.Status != 0 || rec.BytesIn != 0 || rec.Result != "error" {
		t.Errorf("record: status %d bytes_in %d result %s error %q; want no status, 0, error", rec.Status, rec.BytesIn, rec.Result, rec.Error)
	}
}
