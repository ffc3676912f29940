package intercept_test

import (
	"bufio"
	"crypto/tls"
	"io"
	"log"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// TestEarlyChunkedAnswerTrailerEnds: the origin answers a POST at once
// with a chunked 401 that has a trailer, and reads nothing; the client,
// as curl does, stops its upload and waits for the answer's end. It must
// have the whole answer, trailer included, at once (within half the
// drain's 2 s), whatever the upload's framing; then the record (401, ok,
// the rest of the body not read) and the connection's end. Before,
// net/http's Response.Write wrote the trailer and the last CRLF only
// after closing the response body, whose close read the rest of the
// request body first: a Content-Length upload's end never came, and a
// chunked one's 2 s later, while the record already said ok. Cleartext
// and bumped.
func TestEarlyChunkedAnswerTrailerEnds(t *testing.T) {
	for _, tc := range []struct{ name, framing, body, notRead string }{
		{"content-length", "Content-Length: 1000000", "abc", "more than 256 KiB after the response"},
		{"chunked", "Transfer-Encoding: chunked", "3\r\nabc\r\n", "not ended 2s after the response"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cleartextAndBumped(t, func(t *testing.T, bumped bool) {
				o := &earlyOrigin{t: t, status: http.StatusUnauthorized, chunkedAnswer: true, trailer: "X-Why: no"}
				r := newRig(t, testPolicy)
				c, action := chunkClient(t, r, o, bumped)
				io.WriteString(c, "POST /a HTTP/1.1\r\nHost: www.example.test\r\n"+tc.framing+"\r\n\r\n"+tc.body)
				br := bufio.NewReader(c)
				resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodPost})
				if err != nil {
					t.Fatalf("no early answer: %v", err)
				}
				c.SetReadDeadline(time.Now().Add(time.Second))
				b, err := io.ReadAll(resp.Body)
				if err != nil || string(b) != "large" || resp.Trailer.Get("X-Why") != "no" {
					t.Fatalf("answer's body %q, trailer %v, %v: want all of it, at once", b, resp.Trailer, err)
				}
				rec := awaitRecord(t, r, "/a", 4*time.Second)
				if rec == nil {
					t.Fatal("no record 4 s after the answer")
				}
				checkNotRead(t, rec, action, http.StatusUnauthorized, tc.notRead)
				expectClosed(t, c, br, 3*time.Second)
			})
		})
	}
}

// trailerOrigin serves h on one loopback TCP connection, TLS with the
// rig's leaf when tlsOn.
func trailerOrigin(t *testing.T, r *rig, tlsOn bool, h http.Handler) net.Conn {
	proxyEnd, serverEnd := testnet.TCPPair(t)
	var c net.Conn = serverEnd
	if tlsOn {
		c = tls.Server(serverEnd, &tls.Config{Certificates: []tls.Certificate{*r.upLeaf("www.example.test")}, NextProtos: []string{"http/1.1"}})
	}
	srv := &http.Server{Handler: h, ErrorLog: log.New(io.Discard, "", 0)}
	go srv.Serve(newOneConnListener(c))
	t.Cleanup(func() { srv.Close(); serverEnd.Close(); proxyEnd.Close() })
	return proxyEnd
}

// TestChunkedAnswerTrailerKeepsStream: a kept-alive client POSTs a body
// the origin reads whole, and the origin answers chunked with a trailer,
// declared in a Trailer field or not (net/http's TrailerPrefix; an
// HTTP/2 origin's trailers are never declared). The client must get the
// answer's end exactly as net/http's Response.Write would write it
// (an undeclared trailer is not written), and nothing more: a stray byte
// before the next answer desyncs the connection (Go's client reads the
// next answer as "malformed HTTP response"). Cleartext and bumped.
func TestChunkedAnswerTrailerKeepsStream(t *testing.T) {
	for _, declared := range []bool{true, false} {
		t.Run(map[bool]string{true: "declared", false: "undeclared"}[declared], func(t *testing.T) {
			cleartextAndBumped(t, func(t *testing.T, bumped bool) {
				r := newRig(t, testPolicy)
				h := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
					io.Copy(io.Discard, req.Body)
					if declared {
						w.Header().Set("Trailer", "X-Sum")
					}
					io.WriteString(w, "hello")
					w.(http.Flusher).Flush()
					if declared {
						w.Header().Set("X-Sum", "abc")
					} else {
						w.Header().Set(http.TrailerPrefix+"X-Sum", "abc")
					}
				})
				var c net.Conn
				if bumped {
					c, _ = bumpedHTTP1(t, r, trailerOrigin(t, r, true, h))
					r.offerRedial(trailerOrigin(t, r, true, h))
				} else {
					c, _ = r.connectTCP(trailerOrigin(t, r, false, h), httpDest)
					r.offerRedial(trailerOrigin(t, r, false, h))
				}
				c.SetDeadline(time.Now().Add(10 * time.Second))
				io.WriteString(c, "POST /a HTTP/1.1\r\nHost: www.example.test\r\nContent-Length: 3\r\n\r\nabc")
				br := bufio.NewReader(c)
				resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodPost})
				if err != nil {
					t.Fatalf("first answer: %v", err)
				}
				b, err := io.ReadAll(resp.Body)
				if err != nil || string(b) != "hello" {
					t.Fatalf("first answer's body %q, %v", b, err)
				}
				if got := resp.Trailer.Get("X-Sum"); declared && got != "abc" || !declared && got != "" {
					t.Errorf("trailer %v: want X-Sum abc only when the origin declared it", resp.Trailer)
				}
				c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
				if _, err := br.Peek(1); err == nil {
					stray, _ := br.Peek(br.Buffered())
					t.Fatalf("bytes after the first answer's end, before any second request: %q", stray)
				}
				c.SetDeadline(time.Now().Add(5 * time.Second))
				io.WriteString(c, "GET /b HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
				resp2, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet})
				if err != nil {
					t.Fatalf("second answer on the kept connection: %v", err)
				}
				if b2, err := io.ReadAll(resp2.Body); err != nil || resp2.StatusCode != http.StatusOK || string(b2) != "hello" {
					t.Fatalf("second answer %d %q, %v", resp2.StatusCode, b2, err)
				}
			})
		})
	}
}
