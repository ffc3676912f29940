package intercept_test

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// piecesOrigin is an HTTP/1 origin (over TLS with leaf, when not nil) that
// reads one request head and writes pieces, one write each; then it closes
// its connection when cut, else leaves it open until the test ends.
func piecesOrigin(t *testing.T, leaf *tls.Certificate, cut bool, pieces ...string) net.Conn {
	proxyEnd, serverEnd := testnet.TCPPair(t)
	t.Cleanup(func() { proxyEnd.Close(); serverEnd.Close() })
	go func() {
		c := h1OriginSide(serverEnd, leaf)
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			return
		}
		req.Body.Close()
		for _, p := range pieces {
			if _, err := io.WriteString(c, p); err != nil {
				return
			}
		}
		if cut {
			c.Close()
		}
	}()
	return proxyEnd
}

// http10Client opens a client connection to an origin (cleartext, or
// bumped TLS when leaf is set), writes head, and returns what it read up to
// the connection's end, and the error that ended its reading (nil for the
// connection's close).
func http10Client(t *testing.T, r *rig, up net.Conn, bumped bool, head string) (string, error) {
	t.Helper()
	var c net.Conn
	if bumped {
		pc, _ := r.connectTCP(up, tlsDest) // TCP, not a pipe: a reset shows
		c = tls.Client(pc, &tls.Config{ServerName: "www.example.test", RootCAs: r.caPool(), NextProtos: []string{"http/1.1"}})
	} else {
		c, _ = r.connectTCP(up, httpDest)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(waitLimit))
	if _, err := io.WriteString(c, head); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	return string(b), err
}

const http10Get = "GET /a HTTP/1.0\r\nHost: www.example.test\r\n\r\n"

// checkUnchunked checks an answer to an HTTP/1.0 request that the origin
// sent of unknown length: no Transfer-Encoding or Trailer field, a
// "Connection: close", the body's bytes as they are, and the connection's
// close after them (end, the error that ended the client's reading).
func checkUnchunked(t *testing.T, got string, end error, wantBody string) {
	t.Helper()
	head, body, ok := strings.Cut(got, "\r\n\r\n")
	if !ok {
		t.Fatalf("no whole head in %q (%v)", got, end)
	}
	if end != nil {
		t.Errorf("the answer did not end with the connection's close: %v", end)
	}
	lines := strings.Split(head, "\r\n")
	if !strings.HasPrefix(lines[0], "HTTP/1.1 200 ") {
		t.Errorf("status line %q", lines[0])
	}
	closes := 0
	for _, l := range lines[1:] {
		name, value, _ := strings.Cut(l, ":")
		switch strings.ToLower(name) {
		case "transfer-encoding", "trailer":
			t.Errorf("an HTTP/1.0 client got %q (RFC 9112 6.1)", l)
		case "connection":
			if strings.TrimSpace(value) == "close" {
				closes++
			}
		}
	}
	if closes != 1 {
		t.Errorf("head %q: want one Connection: close", head)
	}
	if body != wantBody {
		t.Errorf("body: %d bytes %.80q, want %d bytes %.80q", len(body), body, len(wantBody), wantBody)
	}
}

// TestHTTP10ClientChunkedAnswer: an HTTP/1.0 client's request whose
// answer has no length known to the appliance (chunked by the origin,
// with or without a trailer, empty or large; or delimited by the origin's
// close) gets the body's bytes as they are, delimited by the connection's
// close, as RFC 9112 6.1 asks: goproxy chunks every answer of unknown
// length whatever the request's version, and the client read the chunk
// framing as the body. A client that asked to keep the connection alive
// has it closed all the same. The record says ok, and bytes_in counts the
// body's bytes.
func TestHTTP10ClientChunkedAnswer(t *testing.T) {
	const chunkedHead = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
	var large, largeBody strings.Builder
	for i := range 5 {
		data := strings.Repeat(string(rune('a'+i)), 20000)
		fmt.Fprintf(&large, "%x;piece=%d\r\n%s\r\n", len(data), i, data)
		largeBody.WriteString(data)
	}
	for _, tc := range []struct {
		name, head string
		pieces     []string
		cut        bool
		want       string
	}{
		{"trailer", http10Get, []string{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: abc\r\n\r\n"}, false, "hello"},
		{"no trailer", http10Get, []string{chunkedHead + "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"}, false, "hello world"},
		{"empty", http10Get, []string{chunkedHead + "0\r\n\r\n"}, false, ""},
		{"large", http10Get, []string{chunkedHead, large.String()[:30000], large.String()[30000:], "0\r\n\r\n"}, false, largeBody.String()},
		{"keep-alive asked", "GET /a HTTP/1.0\r\nHost: www.example.test\r\nConnection: keep-alive\r\n\r\n",
			[]string{chunkedHead + "5\r\nhello\r\n0\r\n\r\n"}, false, "hello"},
		{"origin's close", http10Get, []string{"HTTP/1.1 200 OK\r\n\r\nhello"}, true, "hello"},
	} {
		for _, bumped := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/bumped=%v", tc.name, bumped), func(t *testing.T) {
				r := newRig(t, testPolicy)
				var leaf *tls.Certificate
				if bumped {
					leaf = r.upLeaf("www.example.test")
				}
				got, end := http10Client(t, r, piecesOrigin(t, leaf, tc.cut, tc.pieces...), bumped, tc.head)
				checkUnchunked(t, got, end, tc.want)
				rec := awaitRecord(t, r, "/a", waitLimit)
				if rec == nil {
					t.Fatal("no record")
				}
				if rec.Result != "ok" || rec.BytesIn != int64(len(tc.want)) {
					t.Errorf("record: %s %q bytes_in %d, want ok and %d", rec.Result, rec.Error, rec.BytesIn, len(tc.want))
				}
			})
		}
	}
}

// TestHTTP10ClientChunkedAnswerCut: a chunked answer to an HTTP/1.0
// request that the origin cuts short. The client gets what came, and the
// connection's end at once (not a wait for an end that never comes): a
// reset, since the body is delimited by the close, and a close (a FIN, or
// a close_notify) would tell the client it had the whole body. The record
// does not say ok. With the plaintext tap (--capture-plaintext) too: the
// tap's wrapper hid the TLS connection, and the bumped client got a
// close_notify and a FIN after half the body; the tap's stream is ended
// once all the same.
func TestHTTP10ClientChunkedAnswerCut(t *testing.T) {
	for _, mode := range []string{"clear", "bumped", "bumped+tap"} {
		t.Run(mode, func(t *testing.T) {
			sink := &plainSink{}
			r := newRig(t, testPolicy, func(c *intercept.Config) {
				if mode == "bumped+tap" {
					c.Plaintext = sink
				}
			})
			var leaf *tls.Certificate
			bumped := mode != "clear"
			if bumped {
				leaf = r.upLeaf("www.example.test")
			}
			// A chunk of 1 MiB, then the cut: all of it is written to the
			// client connection before the cut is seen, and the reset
			// must not throw it away (it did: 96 KiB of 2 MiB reached the
			// client, while the record counted it all).
			const size = 1 << 20
			want := strings.Repeat("a", size)
			up := piecesOrigin(t, leaf, true, fmt.Sprintf("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n", size, want))
			got, end := http10Client(t, r, up, bumped, http10Get)
			if ne, ok := errors.AsType[net.Error](end); ok && ne.Timeout() {
				t.Fatalf("the client waited for the answer's end: got %d bytes", len(got))
			}
			_, body, _ := strings.Cut(got, "\r\n\r\n")
			if body != want {
				t.Errorf("the client got %d body bytes, want all %d that came", len(body), size)
			}
			if !errors.Is(end, syscall.ECONNRESET) {
				t.Errorf("the connection's end after the cut body (%d bytes): %v, want a reset (a close says the body was whole)", len(body), end)
			}
			rec := awaitRecord(t, r, "/a", waitLimit)
			if rec == nil {
				t.Fatal("no record")
			}
			if rec.Result == "ok" {
				t.Errorf("an answer the origin cut short is recorded ok (%q)", rec.Error)
			}
			if mode != "bumped+tap" {
				return
			}
			_, streams := sink.get()
			if len(streams) != 1 {
				t.Fatalf("%d plaintext streams, want 1", len(streams))
			}
			for end := time.Now().Add(waitLimit); ; time.Sleep(5 * time.Millisecond) {
				_, s2c, closes, _ := streams[0].snapshot()
				if closes == 1 {
					if _, tapped, _ := strings.Cut(s2c, "\r\n\r\n"); tapped != want {
						t.Errorf("the tap got %d body bytes, want the %d written", len(tapped), size)
					}
					// The IDS is shown the appliance's RST, as the client
					// got it: FINs would say the body was whole.
					streams[0].mu.Lock()
					resets := streams[0].serverResets
					streams[0].mu.Unlock()
					if resets != 1 {
						t.Errorf("the tap's stream ended with %d RSTs of the destination's side, want 1", resets)
					}
					break
				}
				if closes > 1 || time.Now().After(end) {
					t.Fatalf("the tap's stream was closed %d times, want once", closes)
				}
			}
		})
	}
}

// TestHTTP10ClientOtherAnswersUnchanged: answers to HTTP/1.0 requests
// that goproxy does not chunk (a Content-Length; no body: HEAD, 204, 304)
// reach the client as before, but that none says Transfer-Encoding (RFC
// 9112 §6.1): a HEAD's answer the origin said chunked loses it and its
// Trailer field, as a 204 or a 304 does (TestNoBodyStatusSaidChunkedSendsNoBody).
func TestHTTP10ClientOtherAnswersUnchanged(t *testing.T) {
	for _, tc := range []struct{ name, head, answer, want string }{
		{"content-length", http10Get, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
			"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"},
		{"HEAD chunked", "HEAD /a HTTP/1.0\r\nHost: www.example.test\r\n\r\n", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
			"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"},
		{"HEAD chunked trailer", "HEAD /a HTTP/1.0\r\nHost: www.example.test\r\n\r\n",
			"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\nX-A: b\r\n\r\n",
			"HTTP/1.1 200 OK\r\nConnection: close\r\nX-A: b\r\n\r\n"},
		{"204 chunked", http10Get, "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
			"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"},
		{"304 chunked", http10Get, "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
			"HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testPolicy)
			got, end := http10Client(t, r, piecesOrigin(t, nil, false, tc.answer), false, tc.head)
			if got != tc.want || end != nil {
				t.Errorf("got %q (%v), want %q and the close", got, end, tc.want)
			}
		})
	}
}

// TestCurlHTTP10ChunkedAnswer: curl --http1.0 through the appliance, to an
// origin that answers chunked with a trailer: curl gets the body, no
// Transfer-Encoding, and the connection's close.
func TestCurlHTTP10ChunkedAnswer(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("no curl")
	}
	r := newRig(t, testPolicy)
	o := &earlyOrigin{t: t, status: http.StatusOK, chunkedAnswer: true, trailer: "X-Sum: abc"}
	dir := t.TempDir()
	body, heads := filepath.Join(dir, "body"), filepath.Join(dir, "heads")
	out := curlRun(t, r, o, "-sS", "--http1.0", "-o", body, "-D", heads, "-w", "code=%{http_code}", "--max-time", "15")
	if out != "code=200" {
		t.Fatalf("curl: %s", out)
	}
	if b, _ := os.ReadFile(body); string(b) != "large" {
		t.Errorf("curl's body %q, want large", b)
	}
	h, _ := os.ReadFile(heads)
	if s := strings.ToLower(string(h)); strings.Contains(s, "transfer-encoding") || !strings.Contains(s, "connection: close") {
		t.Errorf("curl's head %q: want no Transfer-Encoding, and Connection: close", h)
	}
}
