package intercept

import (
	"errors"
	"io"
	"net"
	"testing"
)

// The end of a chunked response endChunked wrote is swallowed when goproxy
// writes it again, piece by piece as net/http writes a trailer; a write
// that differs fails the connection rather than reach the client after
// that end, where it would be read as the start of the next response. The
// CONNECT response's swallow, which goproxy may not write, lets a
// different write through.
func TestSwallowedEndMismatchFails(t *testing.T) {
	newConn := func() (*hijackedConn, net.Conn) {
		a, b := net.Pipe()
		t.Cleanup(func() { a.Close(); b.Close() })
		go io.Copy(io.Discard, b)
		return &hijackedConn{Conn: a}, b
	}

	c, _ := newConn()
	c.swallow, c.swallowEnd = []byte("X-Sum: abc\r\n\r\n"), true
	for _, piece := range []string{"X-Sum", ": ", "abc", "\r\n", "\r\n"} {
		if n, err := c.Write([]byte(piece)); n != len(piece) || err != nil {
			t.Fatalf("write of %q, the end sent already: %d, %v", piece, n, err)
		}
	}
	if c.swallow != nil || c.swallowEnd {
		t.Fatalf("after the whole end: swallow %q, end %v", c.swallow, c.swallowEnd)
	}

	c, _ = newConn()
	c.swallow, c.swallowEnd = []byte("X-Sum: abc\r\n\r\n"), true
	if n, err := c.Write([]byte("\r\n")); n != 0 || !errors.Is(err, errEndMismatch) {
		t.Fatalf("a write other than the end sent already: %d, %v; want 0, errEndMismatch", n, err)
	}
	if p := c.werr.Load(); p == nil || !errors.Is(*p, errEndMismatch) {
		t.Fatalf("werr %v, want errEndMismatch", p)
	}

	c, _ = newConn()
	c.swallow = []byte("HTTP/1.1 200 OK\r\n\r\n") // goproxy's CONNECT response
	if n, err := c.Write([]byte("HTTP/1.1 502 Bad Gateway\r\n\r\n")); n == 0 || err != nil {
		t.Fatalf("a write other than the CONNECT response: %d, %v; want it written", n, err)
	}
}
