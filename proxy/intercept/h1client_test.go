package intercept_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// handlerUpstream serves h over TLS (HTTP/1.1, a leaf for www.example.test)
// on loopback TCP and returns the interceptor's end, and a channel closed
// when the server's side of the connection has closed.
func (r *rig) handlerUpstream(t *testing.T, h http.Handler) (net.Conn, chan struct{}) {
	proxyEnd, serverEnd := testnet.TCPPair(t)
	closed := make(chan struct{})
	var once atomic.Bool
	tc := tls.Server(serverEnd, &tls.Config{Certificates: []tls.Certificate{*r.upLeaf("www.example.test")}, NextProtos: []string{"http/1.1"}})
	srv := &http.Server{
		Handler:  h,
		ErrorLog: log.New(io.Discard, "", 0),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if (s == http.StateClosed || s == http.StateHijacked) && !once.Swap(true) {
				close(closed)
			}
		},
	}
	go srv.Serve(newOneConnListener(tc))
	t.Cleanup(func() { srv.Close(); serverEnd.Close() })
	return proxyEnd, closed
}

// bumpedHTTP1 opens a bumped HTTP/1.1 connection for www.example.test to
// upEnd.
func bumpedHTTP1(t *testing.T, r *rig, upEnd net.Conn) (*tls.Conn, *served) {
	t.Helper()
	c, sv := r.connect(upEnd, tlsDest)
	tc := tls.Client(c, &tls.Config{ServerName: "www.example.test", RootCAs: r.caPool(), NextProtos: []string{"http/1.1"}})
	t.Cleanup(func() { tc.Close() })
	return tc, sv
}

// TestH1UpstreamKeepAlive: an HTTP/1 client's requests to an HTTP/1
// upstream share the one upstream connection, informational responses
// before the final one are not passed on, and no further connection is
// dialled.
func TestH1UpstreamKeepAlive(t *testing.T) {
	r := newRig(t, testPolicy)
	upEnd, _ := r.handlerUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/hints" {
			w.Header().Set("Link", "</style.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
		}
		fmt.Fprintf(w, "hello %s", req.URL.Path)
	}))
	tc, _ := bumpedHTTP1(t, r, upEnd)
	hc := newHTTPClient(t, tc)
	for _, p := range []string{"/a", "/hints", "/c"} {
		resp, body := hc.do("GET " + p + " HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
		if resp.StatusCode != http.StatusOK || body != "hello "+p {
			t.Fatalf("GET %s: %d %q", p, resp.StatusCode, body)
		}
	}
	if n := r.dials.Load(); n != 0 {
		t.Errorf("%d further upstream connections dialled, want 0", n)
	}
}

// TestH1UpstreamClientLeavesMidBody: a client that leaves in the middle of
// a long response ends the upstream connection too: the rest of the body
// is not fetched for nobody.
func TestH1UpstreamClientLeavesMidBody(t *testing.T) {
	r := newRig(t, testPolicy)
	const size = 1 << 30
	var sent atomic.Int64
	upEnd, upClosed := r.handlerUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(size))
		buf := make([]byte, 32<<10)
		for sent.Load() < size {
			n, err := w.Write(buf)
			sent.Add(int64(n))
			if err != nil {
				return
			}
		}
	}))
	tc, sv := bumpedHTTP1(t, r, upEnd)
	tc.SetDeadline(time.Now().Add(waitLimit))
	if _, err := io.WriteString(tc, "GET /big HTTP/1.1\r\nHost: www.example.test\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 64<<10)); err != nil {
		t.Fatal(err)
	}
	tc.NetConn().Close() // not tc.Close: its close_notify would wait for a reader on the pipe
	select {
	case <-upClosed:
	case <-time.After(waitLimit):
		t.Fatalf("the upstream connection is still open after the client left; %d bytes sent", sent.Load())
	}
	sv.waitDoneOnce(t)
	if n := sent.Load(); n > 64<<20 {
		t.Errorf("the upstream sent %d bytes of a response nobody reads any more", n)
	}
}

// TestH1UpstreamHeadTooLarge: an upstream whose response head has no end
// gets the client a 502, not the appliance's memory.
func TestH1UpstreamHeadTooLarge(t *testing.T) {
	r := newRig(t, testPolicy)
	upEnd, _ := r.handlerUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		c, bw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		bw.WriteString("HTTP/1.1 200 OK\r\nX-Endless: ")
		line := strings.Repeat("a", 64<<10)
		for range 12 << 20 / len(line) { // 12 MiB: past the 10 MiB bound
			if _, err := bw.WriteString(line); err != nil {
				return
			}
		}
		bw.Flush()
	}))
	tc, _ := bumpedHTTP1(t, r, upEnd)
	hc := newHTTPClient(t, tc)
	resp, body := hc.do("GET /h HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, "larger than") {
		t.Fatalf("response %d %q, want 502 saying the head is too large", resp.StatusCode, body)
	}
}

// TestH1UpstreamUnaskedBytes: bytes an upstream sends after a response
// (here a whole response of their own) are neither delivered nor recorded
// as the response to the client's next request: that goes on a new
// upstream connection. They may come in a TLS record of their own, still
// in the socket when the body ends, or in the body's last record, read
// and decrypted already. The next request is sent once they are written
// (on loopback, in the appliance's socket): bytes that come only after the
// request has gone upstream cannot be told from its response, by any
// proxy.
func TestH1UpstreamUnaskedBytes(t *testing.T) {
	for _, sameRecord := range []bool{false, true} {
		t.Run(fmt.Sprintf("same record %v", sameRecord), func(t *testing.T) {
			r := newRig(t, testPolicy)
			junkSent := make(chan struct{})
			upEnd, _ := r.handlerUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
				c, bw, err := w.(http.Hijacker).Hijack()
				if err != nil {
					return
				}
				defer c.Close()
				junk := "HTTP/1.1 201 Created\r\nContent-Length: 8\r\nX-Smuggled: 1\r\n\r\nSMUGGLED"
				bw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n" + strings.Repeat("a", 10000))
				if sameRecord {
					bw.WriteString(junk)
				}
				bw.Flush()
				if !sameRecord {
					c.Write([]byte(junk))
				}
				close(junkSent)
				// Further requests on this connection are answered as the
				// unasked-for response says.
				io.Copy(io.Discard, bw)
			}))
			up2, _ := r.handlerUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
				fmt.Fprint(w, "real "+req.URL.Path)
			}))
			r.offerRedial(up2)
			tc, _ := bumpedHTTP1(t, r, upEnd)
			hc := newHTTPClient(t, tc)
			if resp, body := hc.do("GET /first HTTP/1.1\r\nHost: www.example.test\r\n\r\n"); resp.StatusCode != 200 || len(body) != 10000 {
				t.Fatalf("GET /first: %d, %d bytes", resp.StatusCode, len(body))
			}
			select {
			case <-junkSent:
			case <-time.After(5 * time.Second):
				t.Fatal("the upstream never wrote its unasked-for response")
			}
			resp, body := hc.do("GET /second HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
			if resp.StatusCode != 200 || body != "real /second" {
				t.Errorf("GET /second answered %d %q (X-Smuggled %q)", resp.StatusCode, body, resp.Header.Get("X-Smuggled"))
			}
			tc.Close()
			var got []string
			for _, rec := range ofKind(r.records(), "http") {
				got = append(got, fmt.Sprintf("%s %d %d", rec.Path, rec.Status, rec.BytesIn))
			}
			if want := []string{"/first 200 10000", "/second 200 12"}; fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("records %q, want %q", got, want)
			}
		})
	}
}

// TestH1UpstreamPostNotResent: a POST without a body that the upstream
// took on the kept connection, then closed it without answering, reaches
// the upstream once: the client gets a 502, and the record says so.
func TestH1UpstreamPostNotResent(t *testing.T) {
	r := newRig(t, testPolicy)
	var posts atomic.Int32
	upEnd, _ := r.handlerUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method == http.MethodPost {
			posts.Add(1)
			if c, _, err := w.(http.Hijacker).Hijack(); err == nil {
				c.Close() // acted on, then the connection died before the answer
			}
			return
		}
		fmt.Fprint(w, "ok")
	}))
	up2, _ := r.handlerUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method == http.MethodPost {
			posts.Add(1)
		}
		fmt.Fprint(w, "ok")
	}))
	r.offerRedial(up2)
	tc, _ := bumpedHTTP1(t, r, upEnd)
	hc := newHTTPClient(t, tc)
	hc.do("GET / HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
	resp, _ := hc.do("POST /pay HTTP/1.1\r\nHost: www.example.test\r\nContent-Length: 0\r\n\r\n")
	tc.Close()
	if p := posts.Load(); p != 1 {
		t.Errorf("the upstream received the POST %d times, want 1", p)
	}
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("the POST answered %d, want 502", resp.StatusCode)
	}
	for _, rec := range ofKind(r.records(), "http") {
		if rec.Method == http.MethodPost && rec.Status != http.StatusBadGateway {
			t.Errorf("the POST's record says %d, want 502", rec.Status)
		}
	}
}

// TestH1UpstreamClientLeavesMidUpload: a client that leaves in the middle
// of a request body ends the exchange, though the upstream, waiting for
// the rest of the body, never answers: its connection is closed and the
// session ends.
func TestH1UpstreamClientLeavesMidUpload(t *testing.T) {
	r := newRig(t, testPolicy)
	upEnd, upClosed := r.handlerUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		io.Copy(io.Discard, req.Body)
		fmt.Fprint(w, "ok")
	}))
	c, sv := r.connectTCP(upEnd, tlsDest)
	tc := tls.Client(c, &tls.Config{ServerName: "www.example.test", RootCAs: r.caPool(), NextProtos: []string{"http/1.1"}})
	tc.SetDeadline(time.Now().Add(waitLimit))
	fmt.Fprintf(tc, "POST /upload HTTP/1.1\r\nHost: www.example.test\r\nContent-Length: 100000\r\n\r\n%s", strings.Repeat("x", 5000))
	time.Sleep(50 * time.Millisecond)
	c.Close()
	select {
	case <-upClosed:
	case <-time.After(waitLimit):
		t.Fatal("the upstream connection is still open after the client left")
	}
	sv.waitDoneOnce(t)
}
