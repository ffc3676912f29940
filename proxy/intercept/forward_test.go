package intercept_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// captureUpstream answers every request on its end of a loopback
// connection with a 200 "ok" after reading it whole, trailers and all;
// bytes returns what it read, byte for byte.
func captureUpstream(t *testing.T) (net.Conn, func() string) {
	proxyEnd, serverEnd := testnet.TCPPair(t)
	var mu sync.Mutex
	var got strings.Builder
	go func() {
		defer serverEnd.Close()
		serverEnd.SetDeadline(time.Now().Add(2 * waitLimit))
		br := bufio.NewReader(io.TeeReader(serverEnd, writerFunc(func(b []byte) (int, error) {
			mu.Lock()
			defer mu.Unlock()
			return got.Write(b)
		})))
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			if _, err := io.WriteString(serverEnd, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"); err != nil {
				return
			}
		}
	}()
	return proxyEnd, func() string {
		mu.Lock()
		defer mu.Unlock()
		return got.String()
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// TestRequestTrailersDropped: a request's trailers are not forwarded. They
// come after the decision, are recorded nowhere, and a destination merging
// them into the head would take "Host: evil.example.test" for the
// request's Host. The body is relayed whole, and the response comes back.
func TestRequestTrailersDropped(t *testing.T) {
	t.Run("http1", func(t *testing.T) {
		r := newRig(t, testPolicy)
		upEnd, sent := captureUpstream(t)
		c, sv := r.connectTCP(upEnd, httpDest)
		hc := newHTTPClient(t, c)
		resp, body := hc.do("POST /up HTTP/1.1\r\nHost: www.example.test\r\nTrailer: Host, X-Other\r\n" +
			"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nHost: evil.example.test\r\nX-Other: smuggled\r\n\r\n")
		c.Close()
		sv.waitDoneOnce(t)
		if resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("response %d %q", resp.StatusCode, body)
		}
		wantNoTrailers(t, sent())
	})
	t.Run("h2c", func(t *testing.T) {
		r := newRig(t, testPolicy)
		upEnd, sent := captureUpstream(t)
		cc, sv := r.h2cClient(t, upEnd)
		pr, pw := io.Pipe()
		req, _ := http.NewRequest("POST", "http://www.example.test/up", pr)
		req.Trailer = http.Header{"X-Other": nil}
		go func() {
			io.WriteString(pw, "abc")
			req.Trailer.Set("X-Other", "smuggled") // as http.Request.Trailer says: before the body's EOF
			pw.Close()
		}()
		resp, err := cc.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cc.Close()
		sv.waitDoneOnce(t)
		if resp.StatusCode != 200 || string(body) != "ok" {
			t.Fatalf("response %d %q", resp.StatusCode, body)
		}
		wantNoTrailers(t, sent())
	})
}

// wantNoTrailers checks what the destination got: the body, no trailer.
func wantNoTrailers(t *testing.T, sent string) {
	t.Helper()
	if !strings.Contains(sent, "\r\n\r\n3\r\nabc\r\n0\r\n\r\n") {
		t.Errorf("the destination got %q, want the chunked body abc and no trailer", sent)
	}
	for _, bad := range []string{"evil.example.test", "X-Other", "Trailer"} {
		if strings.Contains(sent, bad) {
			t.Errorf("the destination got %q: %q forwarded", sent, bad)
		}
	}
}
