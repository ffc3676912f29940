package intercept

import (
	"net/http"
	"testing"
)

// discardConn takes every write and keeps nothing.
type discardConn struct{ writesConn }

func (*discardConn) Write(b []byte) (int, error) { return len(b), nil }

// TestUnchunkAllocatesNothingPerRequest: once a connection has served one
// answer, the next of the same shape costs no allocation, whatever the
// request's version. An HTTP/1.0 request answered with a known length
// cost 3: rewriteHead built a rewritten head and threw it away.
func TestUnchunkAllocatesNothingPerRequest(t *testing.T) {
	http10 := &http.Request{Method: http.MethodGet, ProtoMajor: 1, ProtoMinor: 0}
	http11 := &http.Request{Method: http.MethodGet, ProtoMajor: 1, ProtoMinor: 1}
	head10 := &http.Request{Method: http.MethodHead, ProtoMajor: 1, ProtoMinor: 0}
	chunked := []string{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n", "5\r\n", "hello", "\r\n", "0\r\n", "\r\n"}
	for _, tc := range []struct {
		name string
		req  *http.Request
		in   []string
	}{
		{"1.1 chunked", http11, chunked},
		{"1.0 content-length", http10, []string{"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\nX-A: b\r\n\r\n", "ok"}},
		{"1.0 content-length, head in pieces", http10, []string{"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n", "X-A: b\r\n\r", "\nok"}},
		{"1.0 chunked", http10, chunked},
		{"1.0 204", http10, []string{"HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n"}},
		{"1.0 HEAD content-length", head10, []string{"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"}},
		{"1.0 HEAD chunked", head10, []string{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"}},
	} {
		c := &hijackedConn{Conn: &discardConn{}}
		in := make([][]byte, len(tc.in))
		for i, s := range tc.in {
			in[i] = []byte(s)
		}
		answer := func() {
			c.startUnchunk(tc.req)
			for _, b := range in {
				if _, err := c.Write(b); err != nil {
					t.Fatalf("%s: %v", tc.name, err)
				}
			}
		}
		answer() // the connection's first answer may size its head buffer
		if n := testing.AllocsPerRun(200, answer); n != 0 {
			t.Errorf("%s: %.1f allocations per request, want none", tc.name, n)
		}
	}
}
