package intercept_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// laxOrigin is an HTTP/1 origin on loopback TCP that parses requests
// loosely, as real non-compliant front ends do, logs the raw bytes of each
// connection, and answers every head it parses. With cl0 it skips a GET's
// Content-Length (the "CL.0" behaviour of many front ends and static
// handlers), with expect0 it answers a request with Expect at once and
// leaves its body unread; with honourClose it processes nothing after a
// request with "Connection: close" (RFC 9112 §9.6), and its answer says
// "Connection: close" too, which must not close the client's connection
// (the appliance asked for the close, not the client). Requests for slowHost
// are answered after 300 ms: a late answer, which the probe before a kept
// connection's reuse cannot see.
type laxOrigin struct {
	t                         *testing.T
	cl0, expect0, honourClose bool
	slowHost                  string

	mu     sync.Mutex
	raw    []*bytes.Buffer // per connection
	served []string        // "conn N: METHOD host target"
}

type laxTee struct {
	o *laxOrigin
	b *bytes.Buffer
}

func (w laxTee) Write(p []byte) (int, error) {
	w.o.mu.Lock()
	defer w.o.mu.Unlock()
	return w.b.Write(p)
}

// conn returns the appliance's end of a new connection to the origin.
func (o *laxOrigin) conn() net.Conn {
	proxyEnd, serverEnd, n, buf := o.pair()
	go o.serve(n, serverEnd, bufio.NewReader(io.TeeReader(serverEnd, laxTee{o, buf})))
	return proxyEnd
}

// pair makes a connection's two ends and the buffer that keeps what the
// origin reads on it, the origin's connection n.
func (o *laxOrigin) pair() (proxyEnd, serverEnd net.Conn, n int, buf *bytes.Buffer) {
	proxyEnd, serverEnd = testnet.TCPPair(o.t)
	o.t.Cleanup(func() { proxyEnd.Close(); serverEnd.Close() })
	o.mu.Lock()
	defer o.mu.Unlock()
	buf = &bytes.Buffer{}
	o.raw = append(o.raw, buf)
	return proxyEnd, serverEnd, len(o.raw) - 1, buf
}

func (o *laxOrigin) serve(n int, c net.Conn, br *bufio.Reader) {
	defer c.Close()
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		if line = strings.TrimRight(line, "\r\n"); line == "" {
			continue
		}
		host, cl, expect, closing := "", 0, false, false
		for {
			h, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if h = strings.TrimRight(h, "\r\n"); h == "" {
				break
			}
			k, v, _ := strings.Cut(h, ":")
			v = strings.TrimSpace(v)
			switch strings.ToLower(strings.TrimSpace(k)) {
			case "host":
				if host == "" {
					host = v
				}
			case "expect":
				expect = true
			case "connection":
				closing = closing || strings.EqualFold(v, "close")
			case "content-length":
				cl, _ = strconv.Atoi(v)
			}
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			return
		}
		if !(o.cl0 && f[0] == "GET") && !(o.expect0 && expect) && cl > 0 {
			io.CopyN(io.Discard, br, int64(cl))
		}
		o.mu.Lock()
		o.served = append(o.served, fmt.Sprintf("conn %d: %s %s %s", n, f[0], host, f[1]))
		o.mu.Unlock()
		if host == o.slowHost {
			time.Sleep(300 * time.Millisecond)
		}
		body := "origin served " + f[0] + " " + host + " " + f[1]
		closeField := ""
		if closing && o.honourClose { // says so, as net/http and nginx do
			closeField = "Connection: close\r\n"
		}
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s", closeField, len(body), body)
		if closing && o.honourClose {
			return
		}
	}
}

func (o *laxOrigin) snapshot() (raw []string, served []string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, b := range o.raw {
		raw = append(raw, b.String())
	}
	return raw, append([]string(nil), o.served...)
}

// hiddenRequest is a body that is a request of its own, for a name
// testPolicy denies.
const hiddenRequest = "GET /secret HTTP/1.1\r\nHost: evil.example.test\r\n\r\n"

// checkNoDesync checks what a lax origin was sent after a request whose
// body was hiddenRequest and then GET /c: the client's /c got /c's own
// answer, on a connection of its own, and a origin that honours
// "Connection: close" served nothing for the denied name.
func checkNoDesync(t *testing.T, r *rig, o *laxOrigin, cBody string) {
	t.Helper()
	time.Sleep(400 * time.Millisecond) // any late answer has come by now
	raw, served := o.snapshot()
	t.Logf("origin served: %q", served)
	if want := "origin served GET www.example.test /c"; cBody != want {
		t.Errorf("the client's GET /c got %q, want %q", cBody, want)
	}
	if len(raw) == 0 || !strings.Contains(raw[0], "\r\nConnection: close\r\n") {
		t.Errorf("the request with the body did not ask to close its upstream connection: %q", raw)
	}
	// By its connection, not its place: the origin's connections read
	// apart, and the hidden request, read on the first, may be noted
	// after /c under load.
	onNew := 0
	for _, s := range served {
		if strings.Contains(s, "GET www.example.test /c") {
			if !strings.HasPrefix(s, "conn 1: ") {
				onNew = -1
				break
			}
			onNew++
		}
	}
	if onNew != 1 {
		t.Errorf("GET /c did not go, once, on a new upstream connection: %q", served)
	}
	for _, s := range served {
		if o.honourClose && strings.Contains(s, "evil") {
			t.Errorf("an origin that honours close served the body's request: %q", s)
		}
	}
	for _, rec := range ofKind(r.records(), "http") {
		if rec.Path == "/c" && (rec.Status != 200 || rec.Result != "ok") {
			t.Errorf("/c's record: status %d result %s", rec.Status, rec.Result)
		}
	}
}

// TestBodyOnGetClosesUpstream: a GET whose body is a request for a denied
// name, to an origin that ignores a GET's body (CL.0), then an allowed GET
// /c. The origin must not be left reading the body as a request on a
// connection /c goes over: the GET goes with "Connection: close" and /c on
// a new connection, so the hidden request's late answer reaches nobody
// (and an origin that honours close never serves it).
func TestBodyOnGetClosesUpstream(t *testing.T) {
	for _, honour := range []bool{true, false} {
		t.Run("HTTP/1 client, honourClose="+strconv.FormatBool(honour), func(t *testing.T) {
			r := newRig(t, testPolicy)
			o := &laxOrigin{t: t, cl0: true, honourClose: honour, slowHost: "evil.example.test"}
			c, _ := r.connectTCP(o.conn(), httpDest)
			r.offerRedial(o.conn())
			h := newHTTPClient(t, c)
			resp, _ := h.do("GET /a HTTP/1.1\r\nHost: www.example.test\r\nConnection: keep-alive\r\nContent-Length: " +
				strconv.Itoa(len(hiddenRequest)) + "\r\n\r\n" + hiddenRequest)
			if resp.StatusCode != 200 || resp.Close {
				t.Fatalf("GET /a: %d, close %v: want 200 on a client connection that stays", resp.StatusCode, resp.Close)
			}
			_, body := h.do("GET /c HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
			c.Close()
			checkNoDesync(t, r, o, body)
		})
		t.Run("h2c client, honourClose="+strconv.FormatBool(honour), func(t *testing.T) {
			r := newRig(t, testPolicy)
			o := &laxOrigin{t: t, cl0: true, honourClose: honour, slowHost: "evil.example.test"}
			cc, _ := r.h2cClient(t, o.conn())
			r.offerRedial(o.conn())
			req, _ := http.NewRequest("GET", "http://www.example.test/a", strings.NewReader(hiddenRequest))
			req.ContentLength = int64(len(hiddenRequest))
			resp, err := cc.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			_, body := h2cGet(t, cc, "http://www.example.test/c")
			cc.Close()
			checkNoDesync(t, r, o, body)
		})
	}
}

// TestExpectEarlyAnswerNoDesync: an HTTP/1 client's POST with "Expect:
// 100-continue" whose body is a request for a denied name, to an origin
// that answers an expectation at once and leaves the body unread. The
// appliance forwards the expectation and holds the body for the origin's
// 100 (expect.go): answered first, it sends none of the body, the client
// gets the answer and no 100, and a body the client sends all the same
// is neither relayed nor read as a request: the connection ends. Before,
// the expectation was dropped and the body sent behind the head; with it
// forwarded and not waited for, the origin read the body as a request of
// its own on the kept connection.
func TestExpectEarlyAnswerNoDesync(t *testing.T) {
	r := newRig(t, testPolicy)
	o := &laxOrigin{t: t, expect0: true, slowHost: "evil.example.test"}
	c, _ := r.connectTCP(o.conn(), httpDest)
	r.offerRedial(o.conn())
	h := newHTTPClient(t, c)
	io.WriteString(c, "POST /a HTTP/1.1\r\nHost: www.example.test\r\nExpect: 100-continue\r\nContent-Length: "+
		strconv.Itoa(len(hiddenRequest))+"\r\n\r\n")
	if resp, body := h.read("POST /a"); resp.StatusCode != 200 || body != "origin served POST www.example.test /a" {
		t.Errorf("POST /a: %d %q, want the origin's answer, and no 100", resp.StatusCode, body)
	}
	io.WriteString(c, hiddenRequest) // a client that sends it all the same
	h.wantClosed()
	c.Close()
	raw, served := o.snapshot()
	t.Logf("origin served: %q", served)
	if len(raw) == 0 || !strings.Contains(strings.ToLower(raw[0]), "\r\nexpect: 100-continue\r\n") {
		t.Errorf("the origin was not sent the expectation: %q", raw)
	}
	for _, s := range raw {
		if strings.Contains(s, "evil") {
			t.Errorf("the origin was sent the body: %q", s)
		}
	}
	if len(served) != 1 {
		t.Errorf("the origin served %q, want POST /a alone", served)
	}
}

// TestBodyWithoutMeaningClosesUpstream: every method whose body has no
// defined meaning (GET, HEAD, DELETE, OPTIONS, TRACE), when it carries
// one, goes upstream with "Connection: close", and so does an h2c GET
// whose body has no content-length: an origin that ignores such a body
// would read it as a request of its own on a kept connection, served
// undecided and its answer taken for the client's next request's. The
// client's answer is the event: the origin answers only once the head it
// logged has come. Holds closeAfter's method list (mutants R26, DELETE
// dropped; R27, HEAD and OPTIONS dropped) and its HTTP/2 case (R28, a
// ContentLength of -1 taken for no body).
func TestBodyWithoutMeaningClosesUpstream(t *testing.T) {
	for _, m := range []string{"GET", "HEAD", "DELETE", "OPTIONS", "TRACE"} {
		t.Run("http1/"+m, func(t *testing.T) {
			r := newRig(t, testPolicy)
			o := &laxOrigin{t: t}
			c, _ := r.connectTCP(o.conn(), httpDest)
			r.offerRedial(o.conn())
			c.SetDeadline(time.Now().Add(waitLimit))
			io.WriteString(c, m+" /a HTTP/1.1\r\nHost: www.example.test\r\nContent-Length: "+
				strconv.Itoa(len(hiddenRequest))+"\r\n\r\n"+hiddenRequest)
			resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: m})
			if err != nil {
				t.Fatalf("no response to %s /a: %v", m, err)
			}
			io.ReadAll(resp.Body)
			c.Close()
			if raw, _ := o.snapshot(); len(raw) == 0 || !strings.Contains(raw[0], "\r\nConnection: close\r\n") {
				t.Errorf("%s with a body did not ask to close its upstream connection: %q", m, raw)
			}
		})
	}
	t.Run("h2c/GET without content-length", func(t *testing.T) {
		r := newRig(t, testPolicy)
		o := &laxOrigin{t: t}
		cc, _ := r.h2cClient(t, o.conn())
		r.offerRedial(o.conn())
		req, _ := http.NewRequest("GET", "http://www.example.test/a", io.NopCloser(strings.NewReader(hiddenRequest)))
		req.ContentLength = -1
		resp, err := cc.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		cc.Close()
		if raw, _ := o.snapshot(); len(raw) == 0 || !strings.Contains(raw[0], "\r\nConnection: close\r\n") {
			t.Errorf("an h2c GET with an unsized body did not ask to close its upstream connection: %q", raw)
		}
	})
}
