package intercept_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// hostileOrigin reads one request on srvEnd, waits firstByte, then writes
// a response head: the status line, then fields of size bytes in all,
// then its end if finish, else nothing more. It keeps the connection open
// until the appliance closes it, then closes closed.
func hostileOrigin(srvEnd net.Conn, firstByte time.Duration, size int, finish bool) (closed chan struct{}) {
	closed = make(chan struct{})
	go func() {
		defer close(closed)
		br := bufio.NewReader(srvEnd)
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		time.Sleep(firstByte)
		bw := bufio.NewWriterSize(srvEnd, 64<<10)
		io.WriteString(bw, "HTTP/1.1 200 OK\r\n")
		bw.Flush() // the first byte comes on its own
		line := "X-A: " + strings.Repeat("a", 8000) + "\r\n"
		for n := 0; n < size/len(line); n++ {
			io.WriteString(bw, line)
		}
		if finish {
			io.WriteString(bw, "Content-Length: 2\r\n\r\nok")
		}
		bw.Flush()
		io.Copy(io.Discard, br)
	}()
	return closed
}

// h2cGetOne sends one GET over a new h2c client connection on c.
func h2cGetOne(t *testing.T, c net.Conn) *http.Response {
	t.Helper()
	cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(c)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://www.example.test/", nil)
	resp, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatalf("h2c round trip: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// wantRecord waits for the http record of the request, and checks its
// status and that its error says want.
func wantRecord(t *testing.T, r *rig, status int, want string) {
	t.Helper()
	var recs []string
	for end := time.Now().Add(waitLimit); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		recs = recs[:0]
		for _, rec := range ofKind(r.records(), "http") {
			if rec.Status == status && strings.Contains(rec.Error, want) {
				return
			}
			recs = append(recs, rec.Error)
		}
	}
	t.Fatalf("no http record with status %d and an error saying %q: %q", status, want, recs)
}

// A response head larger than the limit (1 MiB, net/http's 10 MiB before)
// is a 502 and a record saying so, over h1Transport and over
// http.Transport (an HTTP/2 client of an HTTP/1 origin); the upstream
// connection is closed. A head under the limit passes.
func TestResponseHeadTooLarge(t *testing.T) {
	const size = 2 << 20 // over the limit, under net/http's
	for _, h2c := range []bool{false, true} {
		name := "h1"
		if h2c {
			name = "h2c"
		}
		t.Run(name, func(t *testing.T) {
			r := newRig(t, testPolicy)
			upEnd, srvEnd := testnet.TCPPair(t)
			closed := hostileOrigin(srvEnd, 0, size, true)
			c, _ := r.connectTCP(upEnd, httpDest)
			var status int
			if h2c {
				status = h2cGetOne(t, c).StatusCode
			} else {
				resp, _ := newHTTPClient(t, c).do("GET / HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
				status = resp.StatusCode
			}
			if status != http.StatusBadGateway {
				t.Fatalf("a %d MiB response head: status %d, want 502", size>>20, status)
			}
			select {
			case <-closed:
			case <-time.After(waitLimit):
				t.Fatal("the upstream connection is still open")
			}
			want := "larger than"
			if h2c {
				want = "exceeded" // net/http's: "server response headers exceeded 1048576 bytes"
			}
			wantRecord(t, r, http.StatusBadGateway, want)
		})
	}
	t.Run("under", func(t *testing.T) {
		r := newRig(t, testPolicy)
		upEnd, srvEnd := testnet.TCPPair(t)
		hostileOrigin(srvEnd, 0, intercept.MaxResponseHead-64<<10, true)
		c, _ := r.connectTCP(upEnd, httpDest)
		if resp, body := newHTTPClient(t, c).do("GET / HTTP/1.1\r\nHost: www.example.test\r\n\r\n"); resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("a head under the limit: %d %q", resp.StatusCode, body)
		}
	})
}

// Once a response head's first byte has come, the rest has
// responseHeadTimeout: an origin that never ends its head gets the
// request a 502 and its connection closed, instead of holding it (and
// the head so far) for good. The wait for the first byte is not bounded:
// a long poll answering after several timeouts passes.
func TestResponseHeadTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	defer intercept.SetResponseHeadTimeout(timeout)()
	for _, h2c := range []bool{false, true} {
		name := "h1"
		if h2c {
			name = "h2c"
		}
		get := func(t *testing.T, c net.Conn) int {
			if h2c {
				return h2cGetOne(t, c).StatusCode
			}
			resp, _ := newHTTPClient(t, c).do("GET / HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
			return resp.StatusCode
		}
		t.Run(name+"/unfinished", func(t *testing.T) {
			r := newRig(t, testPolicy)
			upEnd, srvEnd := testnet.TCPPair(t)
			closed := hostileOrigin(srvEnd, 0, 64<<10, false)
			c, _ := r.connectTCP(upEnd, httpDest)
			start := time.Now()
			if status := get(t, c); status != http.StatusBadGateway {
				t.Fatalf("an unfinished response head: status %d, want 502", status)
			}
			if took := time.Since(start); took < timeout {
				t.Errorf("502 after %v, before the timeout (%v)", took, timeout)
			}
			select {
			case <-closed:
			case <-time.After(waitLimit):
				t.Fatal("the upstream connection is still open")
			}
			wantRecord(t, r, http.StatusBadGateway, "response head not complete")
		})
		t.Run(name+"/long poll", func(t *testing.T) {
			r := newRig(t, testPolicy)
			upEnd, srvEnd := testnet.TCPPair(t)
			hostileOrigin(srvEnd, 4*timeout, 1<<10, true)
			c, _ := r.connectTCP(upEnd, httpDest)
			if status := get(t, c); status != 200 {
				t.Fatalf("a response whose first byte came after %v: status %d, want 200", 4*timeout, status)
			}
		})
	}
}

// origin1xx reads one request on srvEnd (and its body), writes n 1xx
// heads of status code, waits final, then writes a 200 head: whole if
// finish, else its status line and one field line only. It keeps the
// connection open until the appliance closes it, then closes closed.
func origin1xx(srvEnd net.Conn, code, n int, final time.Duration, finish bool) (closed chan struct{}) {
	closed = make(chan struct{})
	go func() {
		defer close(closed)
		br := bufio.NewReader(srvEnd)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		bw := bufio.NewWriterSize(srvEnd, 64<<10)
		for range n {
			fmt.Fprintf(bw, "HTTP/1.1 %d %s\r\n\r\n", code, http.StatusText(code))
		}
		bw.Flush()
		io.Copy(io.Discard, req.Body)
		time.Sleep(final)
		if finish {
			io.WriteString(bw, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		} else {
			io.WriteString(bw, "HTTP/1.1 200 OK\r\nX-A: "+strings.Repeat("a", 60000)+"\r\n")
		}
		bw.Flush()
		io.Copy(io.Discard, br)
	}()
	return closed
}

// 1xx responses do not switch the response head bounds off. Over both
// upstream paths (h1Transport for an HTTP/1 client, http.Transport for an
// h2c one), more than five 1xx responses are a 502: http.Transport, given
// a Got1xxResponse hook, stops bounding them at all (net/http leaves it to
// the hook), and an origin could stream them for ever. Through
// http.Transport, which reports no first byte of the head after a 1xx,
// the upstream connection's next read times the next head: a 102 (or a
// 100: goproxy's HTTP/2 server answers a client's Expect itself) followed
// by a head never finished gets a 502 and the origin's connection closed.
func TestResponseHead1xx(t *testing.T) {
	const timeout = 300 * time.Millisecond
	defer intercept.SetResponseHeadTimeout(timeout)()
	get := func(t *testing.T, c net.Conn, h2c bool) int {
		if h2c {
			return h2cGetOne(t, c).StatusCode
		}
		resp, _ := newHTTPClient(t, c).do("GET / HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
		return resp.StatusCode
	}
	for _, h2c := range []bool{false, true} {
		name := "h1"
		if h2c {
			name = "h2c"
		}
		for _, tc := range []struct {
			n    int
			want int
		}{{5, 200}, {6, http.StatusBadGateway}, {60000, http.StatusBadGateway}} {
			t.Run(fmt.Sprintf("%s/%d x 102", name, tc.n), func(t *testing.T) {
				r := newRig(t, testPolicy)
				upEnd, srvEnd := testnet.TCPPair(t)
				closed := origin1xx(srvEnd, http.StatusProcessing, tc.n, 0, true)
				c, _ := r.connectTCP(upEnd, httpDest)
				if status := get(t, c, h2c); status != tc.want {
					t.Fatalf("%d x 102, then a 200: status %d, want %d", tc.n, status, tc.want)
				}
				if tc.want == http.StatusBadGateway {
					select {
					case <-closed:
					case <-time.After(waitLimit):
						t.Fatal("the upstream connection is still open")
					}
					wantRecord(t, r, http.StatusBadGateway, "too many 1xx")
				}
			})
		}
	}
	for _, code := range []int{http.StatusProcessing, http.StatusContinue} {
		t.Run(fmt.Sprintf("h2c/%d then unfinished", code), func(t *testing.T) {
			r := newRig(t, testPolicy)
			upEnd, srvEnd := testnet.TCPPair(t)
			closed := origin1xx(srvEnd, code, 1, 0, false)
			c, _ := r.connectTCP(upEnd, httpDest)
			start := time.Now()
			if status := h2cGetOne(t, c).StatusCode; status != http.StatusBadGateway {
				t.Fatalf("a %d, then an unfinished head: status %d, want 502", code, status)
			}
			if took := time.Since(start); took < timeout {
				t.Errorf("502 after %v, before the timeout (%v)", took, timeout)
			}
			select {
			case <-closed:
			case <-time.After(waitLimit):
				t.Fatal("the upstream connection is still open")
			}
			wantRecord(t, r, http.StatusBadGateway, "response head not complete")
		})
	}
}

// After a 100 Continue, the wait for the head is the upload and what
// follows it, which is not timed: an HTTP/1 client (offering http/1.1
// before h2) of an HTTP/2 origin that sends a 100 of its own (the client's
// Expect is answered by goproxy and goes no further: prepareForward) gets
// the 200 its origin sends well after the 100.
func TestResponseHeadAfter100Continue(t *testing.T) {
	const timeout = 300 * time.Millisecond
	defer intercept.SetResponseHeadTimeout(timeout)()
	r := newRig(t, testPolicy)
	upEnd, srvEnd := testnet.TCPPair(t)
	leaf := r.upLeaf("www.example.test")
	go func() {
		tc := tls.Server(srvEnd, &tls.Config{Certificates: []tls.Certificate{*leaf}, NextProtos: []string{"h2"}})
		if tc.Handshake() != nil {
			return
		}
		(&http2.Server{}).ServeConn(tc, &http2.ServeConnOpts{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			if req.Header.Get("Expect") != "" {
				t.Errorf("the origin was sent Expect: %q", req.Header.Get("Expect"))
			}
			w.WriteHeader(http.StatusContinue)
			io.Copy(io.Discard, req.Body)
			time.Sleep(3 * timeout)
			io.WriteString(w, "ok")
		})})
	}()
	c, _ := r.connectTCP(upEnd, tlsDest)
	tc := bumpClient(t, r, c, "www.example.test", "http/1.1", "h2")
	if p := tc.ConnectionState().NegotiatedProtocol; p != "http/1.1" {
		t.Fatalf("ALPN %q, want http/1.1", p)
	}
	h := newHTTPClient(t, tc)
	resp, body := h.do("POST / HTTP/1.1\r\nHost: www.example.test\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nbody")
	if resp.StatusCode == http.StatusContinue { // goproxy's own, for the client
		resp, body = h.read("POST /")
	}
	if resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("a 100 Continue asked for, then a 200 after %v: %d %q, want 200", 3*timeout, resp.StatusCode, body)
	}
}

// An origin that sends a 1xx at once (103 Early Hints, 102) and its final
// response only after longer than the response-head timeout (a slow
// backend behind a CDN that sends early hints) is no slow head: nothing of
// the final head had come. The client gets the 200 over every path:
// h1Transport (an HTTP/1 client), http.Transport to an HTTP/1 origin (an
// h2c client: the head is timed from its own first byte, which the
// transport reports only before a 1xx), and http.Transport to an HTTP/2
// origin (a bumped h2 client: HTTP/2 hands a head over whole, there is
// nothing to time).
func TestResponseHeadSlowAfter1xx(t *testing.T) {
	const timeout = 300 * time.Millisecond
	defer intercept.SetResponseHeadTimeout(timeout)()
	for _, h2c := range []bool{false, true} {
		for _, code := range []int{http.StatusEarlyHints, http.StatusProcessing} {
			t.Run(fmt.Sprintf("h2c=%v/%d", h2c, code), func(t *testing.T) {
				r := newRig(t, testPolicy)
				upEnd, srvEnd := testnet.TCPPair(t)
				origin1xx(srvEnd, code, 1, 3*timeout, true)
				c, _ := r.connectTCP(upEnd, httpDest)
				var status int
				if h2c {
					status = h2cGetOne(t, c).StatusCode
				} else {
					resp, _ := newHTTPClient(t, c).do("GET / HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
					status = resp.StatusCode
				}
				if status != 200 {
					t.Errorf("a %d, then a 200 after %v: status %d, want 200", code, 3*timeout, status)
				}
			})
		}
	}
	t.Run("h2c/unfinished after the wait", func(t *testing.T) {
		// The head that comes late is still timed from its first byte.
		r := newRig(t, testPolicy)
		upEnd, srvEnd := testnet.TCPPair(t)
		origin1xx(srvEnd, http.StatusEarlyHints, 1, 3*timeout, false)
		c, _ := r.connectTCP(upEnd, httpDest)
		start := time.Now()
		if status := h2cGetOne(t, c).StatusCode; status != http.StatusBadGateway {
			t.Fatalf("a 103, then an unfinished head after %v: status %d, want 502", 3*timeout, status)
		}
		if took := time.Since(start); took < 4*timeout {
			t.Errorf("502 after %v, before the head's first byte and the timeout (%v)", took, 4*timeout)
		}
		wantRecord(t, r, http.StatusBadGateway, "response head not complete")
	})
	t.Run("HTTP/2 origin", func(t *testing.T) {
		r := newRig(t, testPolicy)
		upEnd, originEnd := testnet.TCPPair(t)
		h2Origin(r, originEnd, func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusEarlyHints)
			time.Sleep(3 * timeout)
			io.WriteString(w, "ok")
		})
		c, sv := r.connectTCP(upEnd, tlsDest)
		tlsc := bumpClient(t, r, c, "www.example.test", "h2")
		cc, err := (&http2.Transport{}).NewClientConn(tlsc)
		if err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequest("GET", "https://www.example.test/", nil)
		resp, err := cc.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "ok" {
			t.Errorf("a 103, then a 200 after %v: %d %q, want 200", 3*timeout, resp.StatusCode, body)
		}
		cc.Close()
		c.Close()
		sv.waitDoneOnce(t)
	})
}
