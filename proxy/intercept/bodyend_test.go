package intercept_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// rawOrigin reads one request from c, the destination's end of its
// connection, and has respond answer it, byte by byte as the test wants.
func rawOrigin(c net.Conn, respond func(c net.Conn)) {
	go func() {
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			c.Close()
			return
		}
		io.Copy(io.Discard, req.Body)
		respond(c)
	}()
}

// getBody sends one GET for /x through c, the client's end of an
// intercepted cleartext connection, over HTTP/1.1 or with HTTP/2 prior
// knowledge, and returns the response and a function that ends the
// client's side (for HTTP/2, its connection; the stream ends with the
// body's Close).
func getBody(t *testing.T, c net.Conn, h2 bool) (*http.Response, func()) {
	t.Helper()
	return getBodyAs(t, c, h2, "HTTP/1.1")
}

// getBodyAs is getBody with the HTTP/1 request line's version given.
func getBodyAs(t *testing.T, c net.Conn, h2 bool, version string) (*http.Response, func()) {
	t.Helper()
	c.SetDeadline(time.Now().Add(waitLimit))
	if !h2 {
		io.WriteString(c, "GET /x "+version+"\r\nHost: ok.example.test\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("reading the response: %v", err)
		}
		return resp, func() {}
	}
	cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(c)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", "http://ok.example.test/x", nil)
	resp, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatalf("HTTP/2 round trip: %v", err)
	}
	return resp, func() { cc.Close() }
}

// wantStreamReset fails the test unless err, from reading an HTTP/2
// response body, is the server's RST_STREAM with INTERNAL_ERROR: the
// stream aborted, the connection (and its other streams) left alone.
func wantStreamReset(t *testing.T, err error) {
	t.Helper()
	var se http2.StreamError
	if !errors.As(err, &se) || se.Code != http2.ErrCodeInternal {
		t.Errorf("the HTTP/2 client's body read ended with %v, want the stream reset with INTERNAL_ERROR", err)
	}
}

// oneHTTPRecord returns the one http record r holds.
func oneHTTPRecord(t *testing.T, r *rig) records.Record {
	t.Helper()
	recs := ofKind(r.records(), "http")
	if len(recs) != 1 {
		t.Fatalf("http records %+v, want one", recs)
	}
	return recs[0]
}

// TestCutResponseRecord: a response the destination cuts short is not
// recorded as a success, nor taken by the client for a whole one. The
// origin promises a body and ends its connection partway: with a close (a
// Content-Length or a chunked body it never finishes), the record says
// error with the read error; with a reset, reset. Either way bytes_in is
// what came, and the client got, and the client's read of the body fails:
// an HTTP/1 client's connection closes before the length or the last
// chunk, an HTTP/2 client's stream is reset (goproxy relays HTTP/2 streams
// on another path, whose handler would otherwise end the stream cleanly
// after a body of unknown length cut short). An HTTP/1 request line that
// claims HTTP/2.0 is served by the HTTP/1 loop, where nothing may panic:
// its client sees the HTTP/1 ending, and the appliance lives on.
func TestCutResponseRecord(t *testing.T) {
	const (
		length = iota // Content-Length, then a close
		chunkedClose
		chunkedReset
	)
	for _, tc := range []struct {
		name    string
		h2      bool
		version string // of an HTTP/1 request line
		cut     int
		result  string
		error   string
	}{
		{"HTTP/1 close", false, "HTTP/1.1", length, "error", "unexpected EOF"},
		{"HTTP/1 chunked close", false, "HTTP/1.1", chunkedClose, "error", "unexpected EOF"},
		{"HTTP/1 reset", false, "HTTP/1.1", chunkedReset, "reset", "connection reset"},
		{"HTTP/1 claiming 2.0 reset", false, "HTTP/2.0", chunkedReset, "reset", "connection reset"},
		{"HTTP/2 close", true, "", length, "error", "unexpected EOF"},
		{"HTTP/2 chunked close", true, "", chunkedClose, "error", "unexpected EOF"},
		{"HTTP/2 reset", true, "", chunkedReset, "reset", "connection reset"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testPolicy)
			upEnd, originEnd := testnet.TCPPair(t)
			got := make(chan struct{}) // the client has the body's first bytes
			rawOrigin(originEnd, func(c net.Conn) {
				if tc.cut == length {
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n0123456789")
					c.Close()
					return
				}
				// Chunked, so that the appliance passes the bytes on
				// before the end: a reset could discard them unread.
				io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n")
				select {
				case <-got:
				case <-time.After(waitLimit):
				}
				if tc.cut == chunkedReset {
					c.(*net.TCPConn).SetLinger(0) // a RST
				}
				c.Close()
			})
			c, sv := r.connectTCP(upEnd, httpDest)
			resp, end := getBodyAs(t, c, tc.h2, tc.version)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			buf := make([]byte, 10)
			if _, err := io.ReadFull(resp.Body, buf); err != nil {
				t.Fatalf("reading the first bytes of the body: %v", err)
			}
			close(got)
			n, err := io.Copy(io.Discard, resp.Body)
			if err == nil {
				t.Errorf("the client read %d more bytes and saw the body end", n)
			} else if tc.h2 && tc.cut != length {
				// With a Content-Length the client sees the body fall
				// short by itself.
				wantStreamReset(t, err)
			}
			resp.Body.Close()
			end()
			c.Close()
			sv.waitDoneOnce(t)
			rec := oneHTTPRecord(t, r)
			if rec.Result != tc.result || !strings.Contains(rec.Error, tc.error) || rec.Status != 200 || rec.BytesIn != 10 {
				t.Errorf("record result %q error %q status %d bytes_in %d: want %s, %q, 200 and 10 bytes",
					rec.Result, rec.Error, rec.Status, rec.BytesIn, tc.result, tc.error)
			}
		})
	}
}

// TestClientGoneRecord: a client that goes away in the middle of a download
// is no success either. It reads the first KiB of 16 MiB and goes: an
// HTTP/1 client resets its connection, an HTTP/2 one cancels the stream
// (and keeps its connection). The record says error, the client went away;
// bytes_in counts what the appliance passed on to the client's connection,
// not the bytes it read from the destination and failed to write.
func TestClientGoneRecord(t *testing.T) {
	// More than an HTTP/2 client's stream window (x/net's: 4 MiB) and
	// than loopback's socket buffers: the client that stops reading stops
	// the download.
	const size = 16 << 20
	for _, tc := range []struct {
		name string
		h2   bool
	}{{"HTTP/1", false}, {"HTTP/2", true}} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testPolicy)
			upEnd, originEnd := net.Pipe()
			sent := make(chan int64, 1)
			rawOrigin(originEnd, func(c net.Conn) {
				defer c.Close()
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", size)
				buf := make([]byte, 32<<10)
				var n int64
				c.SetWriteDeadline(time.Now().Add(waitLimit))
				for n < size {
					w, err := c.Write(buf)
					n += int64(w)
					if err != nil {
						break
					}
				}
				sent <- n
			})
			client, proxySide := testnet.TCPPair(t)
			toClient := &countingConn{Conn: proxySide}
			sv := r.serve(client, toClient, upEnd, httpDest)
			resp, end := getBody(t, client, tc.h2)
			if got, err := io.CopyN(io.Discard, resp.Body, 1<<10); err != nil {
				t.Fatalf("read %d bytes of the body: %v", got, err)
			}
			if tc.h2 {
				resp.Body.Close() // RST_STREAM
			} else {
				client.SetLinger(0)
				client.Close()
			}
			var n int64
			select {
			case n = <-sent:
			case <-time.After(2 * waitLimit):
				t.Fatal("the origin is still sending")
			}
			if n == size {
				t.Fatalf("the origin sent the whole body")
			}
			end()
			client.Close()
			sv.waitDoneOnce(t)
			rec := oneHTTPRecord(t, r)
			if rec.Result != "error" || !strings.Contains(rec.Error, "client went away") || rec.Status != 200 {
				t.Errorf("record result %q error %q status %d: want error, the client went away, 200", rec.Result, rec.Error, rec.Status)
			}
			if rec.BytesIn > n {
				t.Errorf("record bytes_in %d: more than the origin sent (%d)", rec.BytesIn, n)
			}
			// HTTP/1 writes the body as it is, after the head: bytes_in is
			// what the appliance wrote to the client, less the head and
			// the one piece (goproxy copies 32 KiB at a time) whose write
			// failed partway, if one did.
			const piece, head = 32 << 10, 1 << 10
			if wrote := toClient.wrote.Load(); !tc.h2 && (rec.BytesIn > wrote || rec.BytesIn < wrote-piece-head) {
				t.Errorf("record bytes_in %d: want what the appliance wrote to the client (%d, head included), give or take the piece whose write failed",
					rec.BytesIn, wrote)
			}
		})
	}
}
