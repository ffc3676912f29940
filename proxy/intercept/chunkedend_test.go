package intercept_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"
)

// tapConn keeps a copy of what the client reads off the wire.
type tapConn struct {
	net.Conn
	mu  sync.Mutex
	got bytes.Buffer
}

func (c *tapConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.mu.Lock()
	c.got.Write(b[:n])
	c.mu.Unlock()
	return n, err
}

// records takes what was read since the last call and counts its TLS
// records.
func (c *tapConn) records(t *testing.T) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.got.Bytes()
	n := 0
	for len(b) >= 5 {
		l := 5 + int(binary.BigEndian.Uint16(b[3:5]))
		if l > len(b) {
			t.Fatalf("a partial TLS record read: %d of %d bytes", len(b), l)
		}
		b, n = b[l:], n+1
	}
	if len(b) != 0 {
		t.Fatalf("%d bytes left after %d TLS records", len(b), n)
	}
	c.got.Reset()
	return n
}

// A chunked answer to a request without a body reaches the client in one
// TLS record (one segment, one GENEVE datagram), its end included: the
// record, written as goproxy closes the body, sent what was held before
// net/http wrote the last CRLF, which then went out on its own.
func TestChunkedAnswerToBodilessRequestOneRecord(t *testing.T) {
	r := newRig(t, testPolicy)
	upEnd, up := r.startUpstream(r.upLeaf("www.example.test"), "http/1.1")
	up.chunked.Store(true)
	c, _ := r.connect(upEnd, tlsDest)
	tap := &tapConn{Conn: c}
	tc := tls.Client(tap, &tls.Config{ServerName: "www.example.test", RootCAs: r.caPool(), NextProtos: []string{"http/1.1"}})
	tc.SetDeadline(time.Now().Add(waitLimit))
	br := bufio.NewReader(tc)
	for i := range 4 {
		if _, err := fmt.Fprintf(tc, "GET /p%d HTTP/1.1\r\nHost: www.example.test\r\n\r\n", i); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || len(resp.TransferEncoding) == 0 || string(body) != fmt.Sprintf("upstream: GET www.example.test /p%d HTTP/1.1", i) {
			t.Fatalf("request %d: body %q, %v, transfer encoding %v", i, body, err, resp.TransferEncoding)
		}
		if br.Buffered() != 0 {
			t.Fatalf("request %d: %d bytes past the answer", i, br.Buffered())
		}
		// The first answer may share the read with the handshake's
		// session tickets; from the second on, only answers are read.
		if n := tap.records(t); i > 0 && n != 1 {
			t.Fatalf("request %d: the answer came in %d TLS records, want 1", i, n)
		}
	}
}
