package intercept_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// cannedOrigin answers the first request head it reads with answer, and
// discards the rest.
func cannedOrigin(t *testing.T, answer string) net.Conn {
	a, b := testnet.TCPPair(t)
	t.Cleanup(func() { a.Close(); b.Close() })
	go func() {
		req, err := http.ReadRequest(bufio.NewReader(b))
		if err != nil {
			return
		}
		io.WriteString(b, answer)
		io.Copy(io.Discard, req.Body)
	}()
	return a
}

// rawAfter returns what the client reads within d.
func rawAfter(c net.Conn, br *bufio.Reader, d time.Duration) string {
	c.SetReadDeadline(time.Now().Add(d))
	var sb strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := br.Read(buf)
		sb.Write(buf[:n])
		if err != nil {
			return sb.String()
		}
	}
}

// TestNoBodyStatusSaidChunked: an origin answers 204 or 304 with
// "Transfer-Encoding: chunked" (it has no body all the same). The bytes
// the client gets must not depend on whether its request had a body: the
// early end of a chunked answer (nextHead.endChunked) must not add a CRLF
// after net/http has ended the answer itself, which a keep-alive client
// reads as the start of its next response.
func TestNoBodyStatusSaidChunked(t *testing.T) {
	for _, status := range []int{http.StatusNoContent, http.StatusNotModified} {
		got := map[bool]string{}
		for _, withBody := range []bool{false, true} {
			r := newRig(t, testPolicy)
			up := cannedOrigin(t, fmt.Sprintf("HTTP/1.1 %d X\r\nTransfer-Encoding: chunked\r\n\r\n", status))
			c, _ := r.connectTCP(up, httpDest)
			c.SetDeadline(time.Now().Add(waitLimit))
			if withBody {
				io.WriteString(c, "POST /a HTTP/1.1\r\nHost: www.example.test\r\nContent-Length: 3\r\n\r\nabc")
			} else {
				io.WriteString(c, "GET /a HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
			}
			got[withBody] = rawAfter(c, bufio.NewReader(c), 500*time.Millisecond)
			c.Close()
		}
		if got[true] != got[false] {
			t.Errorf("%d: a request with a body got %q, one without %q", status, got[true], got[false])
		}
	}
}

// TestExpectAnsweredOriginClosedBodyNotRead: a chunked POST asks for
// "100 Continue"; the origin answers at once and closes without reading.
// No 100 went out, so the client rightly sends no body: the appliance must
// not wait for one (the connection closes at once), and the record is ok
// with no error. Whether the transport's writer or goproxy closed the
// body first must not matter (it did: 2 of 18 runs waited out the drain's
// 2 s and recorded the body not read).
func TestExpectAnsweredOriginClosedBodyNotRead(t *testing.T) {
	for i := range 10 {
		r := newRig(t, testPolicy)
		upA, upB := net.Pipe()
		t.Cleanup(func() { upA.Close(); upB.Close() })
		go func() {
			io.WriteString(upB, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nxxxxx")
			upB.Close()
		}()
		c, _ := r.connectTCP(upA, httpDest)
		c.SetDeadline(time.Now().Add(waitLimit))
		io.WriteString(c, "POST /a HTTP/1.1\r\nHost: www.example.test\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n")
		start := time.Now()
		got := rawAfter(c, bufio.NewReader(c), 4*time.Second)
		took := time.Since(start)
		c.Close()
		if strings.Contains(got, "100 Continue") || !strings.Contains(got, "200 OK") {
			t.Fatalf("run %d: the client got %q, want the answer and no 100", i, got)
		}
		if took > time.Second {
			t.Errorf("run %d: the connection closed %v after the answer, want at once", i, took)
		}
		rec := awaitRecord(t, r, "/a", 4*time.Second)
		if rec == nil || rec.Result != "ok" || rec.Error != "" {
			t.Fatalf("run %d: record %+v, want ok with no error", i, rec)
		}
	}
}

// TestNoBodyStatusSaidChunkedSendsNoBody: a 204 or 304 has no body
// whatever its origin says (RFC 9112 6.3), so the client gets the head
// alone: a last chunk after it ("0\r\n\r\n") is what a keep-alive client
// reads as the start of its next answer ("malformed HTTP response").
func TestNoBodyStatusSaidChunkedSendsNoBody(t *testing.T) {
	for _, status := range []int{http.StatusNoContent, http.StatusNotModified} {
		r := newRig(t, testPolicy)
		up := cannedOrigin(t, fmt.Sprintf("HTTP/1.1 %d X\r\nTransfer-Encoding: chunked\r\n\r\n", status))
		c, _ := r.connectTCP(up, httpDest)
		c.SetDeadline(time.Now().Add(waitLimit))
		io.WriteString(c, "GET /a HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
		got := rawAfter(c, bufio.NewReader(c), 500*time.Millisecond)
		c.Close()
		head, rest, ok := strings.Cut(got, "\r\n\r\n")
		if !ok || !strings.HasPrefix(head, fmt.Sprintf("HTTP/1.1 %d ", status)) || rest != "" {
			t.Errorf("%d: the client got %q, want the head alone", status, got)
		}
		if strings.Contains(strings.ToLower(head), "transfer-encoding") {
			t.Errorf("%d: the head %q says chunked for no body", status, head)
		}
	}
}
