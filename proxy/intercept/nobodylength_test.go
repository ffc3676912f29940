package intercept_test

import (
	"bufio"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// TestNoContentAnswerHasNoLength: an origin's 204 that says
// "Content-Length: 5" reaches the client without a Content-Length, over
// HTTP/1 and HTTP/2 (RFC 9110 §8.6: a server MUST NOT send one in a 204);
// a 304's stays for an HTTP/2 client (allowed there: the length its 200
// would have had).
func TestNoContentAnswerHasNoLength(t *testing.T) {
	for _, tc := range []struct {
		status, answer string
		length         string // the HTTP/2 client's content-length
	}{
		{"204", "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", ""},
		{"304", "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", "5"},
	} {
		t.Run(tc.status+"/h2", func(t *testing.T) {
			r := newRig(t, testPolicy)
			proxyEnd, originEnd := testnet.TCPPair(t)
			steps := scriptOrigin(t, originEnd)
			c, sv := r.connectTCP(proxyEnd, httpDest)
			c.SetDeadline(time.Now().Add(4 * waitLimit))
			h := newH2Tally(t, c, 1<<30)
			h.loop()
			h.get(1, "http", "/x")
			steps <- []byte(tc.answer)
			if !h.waitUntil(waitLimit, func(h *h2Tally) bool { return h.ended || h.rst }) {
				t.Fatal("the stream neither ended nor was reset")
			}
			h.mu.Lock()
			status, length := h.status, ""
			for _, f := range h.fields {
				if f.Name == "content-length" {
					length = f.Value
				}
			}
			h.mu.Unlock()
			c.Close()
			sv.waitDoneOnce(t)
			if status != tc.status || length != tc.length {
				t.Errorf("client: status %s, content-length %q; want %s, %q", status, length, tc.status, tc.length)
			}
		})
	}
	t.Run("204/http1", func(t *testing.T) {
		r := newRig(t, testPolicy)
		proxyEnd, originEnd := testnet.TCPPair(t)
		steps := scriptOrigin(t, originEnd)
		c, sv := r.connectTCP(proxyEnd, httpDest)
		c.SetDeadline(time.Now().Add(4 * waitLimit))
		io.WriteString(c, "GET /x HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
		steps <- []byte("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		c.Close()
		sv.waitDoneOnce(t)
		if resp.StatusCode != 204 || resp.Header.Get("Content-Length") != "" {
			t.Errorf("client: status %d, Content-Length %q; want 204, none", resp.StatusCode, resp.Header.Get("Content-Length"))
		}
	})
}
