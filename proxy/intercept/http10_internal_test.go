package intercept

import (
	"bytes"
	"net"
	"net/http"
	"strings"
	"testing"
)

// writesConn keeps what is written to it.
type writesConn struct {
	net.Conn
	got bytes.Buffer
}

func (c *writesConn) Write(b []byte) (int, error) { return c.got.Write(b) }

// TestUnchunkSplits: an answer to an HTTP/1.0 request, as goproxy would
// write it, cut into writes of every size from 1 byte: the client gets
// the same unchunked answer whatever the cut (a head in pieces, a size line
// with an extension, a chunk's CRLF split, a trailer).
func TestUnchunkSplits(t *testing.T) {
	in := "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\nX-A: b\r\n\r\n" +
		"5;ext=\"a\"\r\nhello\r\n1A\r\n" + strings.Repeat("z", 26) + "\r\n0\r\nX-Sum: abc\r\n\r\n"
	want := "HTTP/1.1 200 OK\r\nConnection: close\r\nX-A: b\r\n\r\nhello" + strings.Repeat("z", 26)
	req := &http.Request{Method: http.MethodGet, ProtoMajor: 1, ProtoMinor: 0}
	for size := 1; size <= len(in); size++ {
		c, wc := writeInPieces(t, req, in, size)
		if got := wc.got.String(); got != want {
			t.Fatalf("writes of %d: got %q, want %q", size, got, want)
		}
		if c.unchunk.state != unchunkDone || !c.unchunking() {
			t.Fatalf("writes of %d: state %d at the end", size, c.unchunk.state)
		}
	}
}

// TestUnchunkPassesOthers: answers that are not chunked, or have no body
// (a HEAD's that does not say chunked), pass as they are, and so does
// every answer to an HTTP/1.1 request.
func TestUnchunkPassesOthers(t *testing.T) {
	http10 := &http.Request{Method: http.MethodGet, ProtoMajor: 1, ProtoMinor: 0}
	http11 := &http.Request{Method: http.MethodGet, ProtoMajor: 1, ProtoMinor: 1}
	for _, tc := range []struct {
		req *http.Request
		in  string
	}{
		{http10, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"},
		{http10, "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
		{http10, "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
		{&http.Request{Method: http.MethodHead, ProtoMajor: 1}, "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nConnection: keep-alive\r\n\r\n"},
		{http11, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"},
	} {
		wc := &writesConn{}
		c := &hijackedConn{Conn: wc}
		c.startUnchunk(tc.req)
		if _, err := c.Write([]byte(tc.in)); err != nil {
			t.Fatal(err)
		}
		if wc.got.String() != tc.in || c.unchunking() {
			t.Errorf("%s %q: got %q (unchunking %v)", tc.req.Method, tc.in, wc.got.String(), c.unchunking())
		}
	}
}

// TestUnchunkHEADHeadOnly: an HTTP/1.0 HEAD's answer the origin said
// chunked loses its Transfer-Encoding and Trailer fields (RFC 9112 §6.1
// holds for a HEAD's answer too), whatever the cut of its writes, and
// nothing else: it has no body to unchunk, so its Connection field stays
// and the connection does not end with it.
func TestUnchunkHEADHeadOnly(t *testing.T) {
	in := "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\nX-A: b\r\n\r\n"
	want := "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nX-A: b\r\n\r\n"
	req := &http.Request{Method: http.MethodHead, ProtoMajor: 1, ProtoMinor: 0}
	for size := 1; size <= len(in); size++ {
		c, wc := writeInPieces(t, req, in, size)
		if got := wc.got.String(); got != want || c.unchunking() {
			t.Fatalf("writes of %d: got %q (unchunking %v), want %q", size, got, c.unchunking(), want)
		}
	}
}

// TestUnchunkBadFraming: framing net/http's chunked writer never writes
// fails the write, and the connection with it: no byte of it reaches the
// client as body.
func TestUnchunkBadFraming(t *testing.T) {
	for _, body := range []string{"zz\r\n", ";x\r\n", "\r\n", "5\r\nhelloXY", "fffffffffffffffff\r\n"} {
		wc := &writesConn{}
		c := &hijackedConn{Conn: wc}
		c.startUnchunk(&http.Request{Method: http.MethodGet, ProtoMajor: 1})
		_, _ = c.Write([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"))
		if _, err := c.Write([]byte(body)); err != errUnchunk || c.werr.Load() == nil {
			t.Errorf("%q: Write: %v, werr %v: want errUnchunk, and the write failed", body, err, c.werr.Load())
		}
		if _, got, _ := strings.Cut(wc.got.String(), "\r\n\r\n"); strings.Contains(got, "XY") || strings.Contains(got, "z") {
			t.Errorf("%q: the client got %q", body, got)
		}
	}
}

// writeInPieces writes in, the answer to req, to a client connection, in
// writes of size bytes (the last shorter), and returns the connection and
// what reached its socket.
func writeInPieces(t *testing.T, req *http.Request, in string, size int) (*hijackedConn, *writesConn) {
	t.Helper()
	wc := &writesConn{}
	c := &hijackedConn{Conn: wc}
	c.startUnchunk(req)
	for b := []byte(in); len(b) > 0; {
		k := min(size, len(b))
		if n, err := c.Write(b[:k]); n != k || err != nil {
			t.Fatalf("writes of %d: Write: %d, %v", size, n, err)
		}
		b = b[k:]
	}
	return c, wc
}
