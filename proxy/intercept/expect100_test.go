package intercept_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// expectOrigin is an HTTP/1 origin on loopback TCP that honours "Expect:
// 100-continue": refusing, it answers 413 (keeping the connection, as
// RFC 9110 §10.1.1 lets it: it will read and discard what comes) as soon
// as it has the head, and counts the body bytes that come after all, until
// the appliance closes; else it sends "100 Continue" when asked for one,
// reads the body, and answers 200 with the number of bytes it read, and
// goes on to the connection's next request.
type expectOrigin struct {
	t      *testing.T
	refuse bool
	ignore bool             // sends no 100 (an HTTP/1.0 origin's way)
	leaf   *tls.Certificate // TLS, when set

	sawExpect atomic.Bool  // a head asked for 100-continue
	sent100   atomic.Bool  // the origin sent its 100 Continue
	body      chan int64   // per request: the body bytes received
	conns     atomic.Int64 // connections made (conn), numbered from 1
	lastConn  atomic.Int64 // the connection of the latest request
}

func newExpectOrigin(t *testing.T, refuse bool) *expectOrigin {
	return &expectOrigin{t: t, refuse: refuse, body: make(chan int64, 8)}
}

// conn returns the appliance's end of a new connection to the origin.
func (o *expectOrigin) conn() net.Conn {
	proxyEnd, serverEnd := testnet.TCPPair(o.t)
	o.t.Cleanup(func() { proxyEnd.Close(); serverEnd.Close() })
	go o.serve(h1OriginSide(serverEnd, o.leaf))
	return proxyEnd
}

func (o *expectOrigin) serve(c net.Conn) {
	defer c.Close()
	id := o.conns.Add(1)
	c.SetDeadline(time.Now().Add(waitLimit))
	br := bufio.NewReader(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		o.lastConn.Store(id)
		expect := strings.EqualFold(req.Header.Get("Expect"), "100-continue")
		if expect {
			o.sawExpect.Store(true)
		}
		if o.refuse {
			io.WriteString(c, "HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 0\r\n\r\n")
			n, _ := io.Copy(io.Discard, br) // until the appliance closes (or the deadline)
			o.body <- n
			return
		}
		if expect && !o.ignore {
			o.sent100.Store(true)
			io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n")
		}
		n, _ := io.Copy(io.Discard, req.Body)
		s := strconv.FormatInt(n, 10)
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(s), s)
		o.body <- n
	}
}

// received returns the body bytes the origin received for a request.
func (o *expectOrigin) received(t *testing.T) int64 {
	t.Helper()
	select {
	case n := <-o.body:
		return n
	case <-time.After(2 * waitLimit):
		t.Fatal("the origin's request never ended")
		return 0
	}
}

// expectBodySize is the upload: larger than what the measured defect let
// through (1.2 MB), and than any buffer on the way.
const expectBodySize = 4 << 20

// TestExpectContinueEarlyAnswerSendsNoBody: a client uploads 4 MiB with
// "Expect: 100-continue" to an origin that answers 413 to the head at
// once. As a proxy must (RFC 9110 §10.1.1), the appliance forwards the
// expectation and waits for the origin's 100 before it forwards the body:
// the origin must get none of it, the client its 413 and no "100
// Continue", and the record bytes_out 0. curl with its own default Expect
// and Go's client, over cleartext HTTP/1 and bumped HTTP/1. (An HTTP/2
// client's expectation never reaches the appliance: expect.go.) Before, the appliance dropped the Expect and sent
// the body right behind the head, and told the client "100 Continue" as
// it did, so the origin got megabytes it had refused.
func TestExpectContinueEarlyAnswerSendsNoBody(t *testing.T) {
	for _, client := range []string{"curl", "go-h1", "go-h1-bumped"} {
		t.Run(client, func(t *testing.T) {
			o := newExpectOrigin(t, true)
			r := newRig(t, testPolicy)
			status, got100, sv := expectUpload(t, r, o, client)
			if status != http.StatusRequestEntityTooLarge {
				t.Errorf("the client got %d, want the origin's 413", status)
			}
			if got100 {
				t.Errorf("the client was told 100 Continue, which the origin never said")
			}
			if n := o.received(t); n != 0 {
				t.Errorf("the origin, which refused the body, received %d bytes of it", n)
			}
			if !o.sawExpect.Load() {
				t.Errorf("the origin was not asked for 100-continue")
			}
			sv.waitDoneOnce(t)
			rec := oneHTTPRecord(t, r)
			if rec.Status != http.StatusRequestEntityTooLarge || rec.BytesOut != 0 || rec.Result != "ok" || rec.Error != "" {
				t.Errorf("record status %d bytes_out %d result %s error %q: want 413, 0, ok and no error", rec.Status, rec.BytesOut, rec.Result, rec.Error)
			}
		})
	}
}

// TestExpectContinueRelayed: an origin that sends "100 Continue" gets the
// expectation and then the whole body, the client its 100 only after the
// origin's, and the origin's answer; the record counts the body.
func TestExpectContinueRelayed(t *testing.T) {
	for _, client := range []string{"curl", "go-h1", "go-h1-bumped"} {
		t.Run(client, func(t *testing.T) {
			o := newExpectOrigin(t, false)
			r := newRig(t, testPolicy)
			status, _, sv := expectUpload(t, r, o, client)
			if status != http.StatusOK {
				t.Errorf("the client got %d, want 200", status)
			}
			if n := o.received(t); n != expectBodySize {
				t.Errorf("the origin received %d body bytes, want %d", n, expectBodySize)
			}
			if !o.sawExpect.Load() || !o.sent100.Load() {
				t.Errorf("the origin saw Expect %v, sent 100 %v: want both", o.sawExpect.Load(), o.sent100.Load())
			}
			sv.waitDoneOnce(t)
			rec := oneHTTPRecord(t, r)
			if rec.Status != http.StatusOK || rec.BytesOut != expectBodySize {
				t.Errorf("record status %d bytes_out %d (result %s, error %q): want 200, %d", rec.Status, rec.BytesOut, rec.Result, rec.Error, expectBodySize)
			}
		})
	}
}

// TestExpectContinueNotBeforeOrigin: a client that waits for its "100
// Continue" gets it only once the origin has sent its own, whichever
// way it connects.
func TestExpectContinueNotBeforeOrigin(t *testing.T) {
	cleartextAndBumped(t, func(t *testing.T, bumped bool) {
		o := newExpectOrigin(t, false)
		r := newRig(t, testPolicy)
		var c net.Conn
		var sv *served
		if bumped {
			o.leaf = r.upLeaf("www.example.test")
			c, sv = bumpedHTTP1(t, r, o.conn())
		} else {
			c, sv = r.connectTCP(o.conn(), httpDest)
		}
		c.SetDeadline(time.Now().Add(waitLimit))
		br := expectRelayed(t, c, o)
		// The origin asked for the body and read it: the connection is
		// kept for the next request.
		getAfter(t, c, br)
		if n := o.lastConn.Load(); n != 1 {
			t.Errorf("the GET came on the origin's connection %d, want 1: the first kept", n)
		}
		c.Close()
		sv.waitDoneOnce(t)
	})
}

// TestExpectContinueOriginSilent: an origin that never answers the
// expectation (an HTTP/1.0 one, or one that ignores it) gets the body
// once the appliance has waited expectContinueTimeout (1 s, net/http's
// ExpectContinueTimeout), and the client its 100 then.
func TestExpectContinueOriginSilent(t *testing.T) {
	o := newExpectOrigin(t, false)
	o.ignore = true
	r := newRig(t, testPolicy)
	c, sv := r.connectTCP(o.conn(), httpDest)
	c.SetDeadline(time.Now().Add(waitLimit))
	br := expectRelayed(t, c, o)
	// The body went without the origin's 100: the connection is not kept.
	r.offerRedial(o.conn())
	getAfter(t, c, br)
	if n := o.lastConn.Load(); n != 2 {
		t.Errorf("the GET came on the origin's connection %d, want 2: the first not kept", n)
	}
	c.Close()
	sv.waitDoneOnce(t)
}

// getAfter sends a GET on c, whose replies br reads, and checks its 200.
func getAfter(t *testing.T, c net.Conn, br *bufio.Reader) {
	t.Helper()
	io.WriteString(c, "GET /b HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer to the GET: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET: %d, want 200", resp.StatusCode)
	}
}

// expectRelayed sends a POST head with "Expect: 100-continue" on c, waits
// for the 100, checks the origin sent its own first (unless it sends
// none), sends the body and checks the origin's answer; it returns the
// reader of c's replies.
func expectRelayed(t *testing.T, c net.Conn, o *expectOrigin) *bufio.Reader {
	t.Helper()
	const size = 300 << 10
	fmt.Fprintf(c, "POST /a HTTP/1.1\r\nHost: www.example.test\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n", size)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer to the head: %v", err)
	}
	if resp.StatusCode != http.StatusContinue {
		t.Fatalf("the client got %d, want 100 Continue", resp.StatusCode)
	}
	if !o.sent100.Load() && !o.ignore {
		t.Fatalf("the client was told 100 Continue before the origin said it")
	}
	go c.Write(bytes.Repeat([]byte("b"), size))
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no final answer: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || string(b) != strconv.Itoa(size) {
		t.Errorf("answer %d %q, want 200 %d", resp.StatusCode, b, size)
	}
	return br
}

// expectUpload uploads expectBodySize bytes to o with "Expect:
// 100-continue" as client says (curl, or Go's client over cleartext
// HTTP/1 or bumped HTTP/1), and returns the final status and whether
// the client was told 100 Continue; the connection is closed after.
func expectUpload(t *testing.T, r *rig, o *expectOrigin, client string) (status int, got100 bool, sv *served) {
	t.Helper()
	body := bytes.Repeat([]byte("z"), expectBodySize)
	var saw100 atomic.Bool
	got100Trace := func(ctx context.Context) context.Context {
		return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{Got100Continue: func() { saw100.Store(true) }})
	}
	switch client {
	case "curl":
		if _, err := exec.LookPath("curl"); err != nil {
			t.Skip("no curl")
		}
		file := t.TempDir() + "/body"
		if err := os.WriteFile(file, body, 0o600); err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		svc := make(chan *served, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				svc <- nil
				return
			}
			svc <- r.serve(c, c, o.conn(), httpDest)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 2*waitLimit)
		defer cancel()
		var out bytes.Buffer
		// -v: curl says on stderr which responses it read ("< HTTP/1.1 100").
		cmd := exec.CommandContext(ctx, "curl", "-v", "-sS", "-o", "/dev/null", "-w", "code=%{http_code}\n", "--max-time", "8",
			"-H", "Host: www.example.test", "--data-binary", "@"+file, "http://"+ln.Addr().String()+"/a")
		cmd.Stdout, cmd.Stderr = &out, &out
		_ = cmd.Run()
		text := out.String()
		if !strings.Contains(text, "> Expect: 100-continue") {
			t.Fatalf("curl sent no Expect:\n%s", text)
		}
		got100 = strings.Contains(text, "< HTTP/1.1 100")
		if i := strings.Index(text, "code="); i >= 0 {
			status, _ = strconv.Atoi(strings.TrimSpace(text[i+5 : i+8]))
		}
		if status == 0 {
			t.Logf("curl:\n%s", text)
		}
		return status, got100, <-svc
	case "go-h1", "go-h1-bumped":
		var c net.Conn
		url := "http://www.example.test/a"
		tr := &http.Transport{ExpectContinueTimeout: 2 * waitLimit, DisableKeepAlives: true}
		if client == "go-h1-bumped" {
			o.leaf = r.upLeaf("www.example.test")
			c, sv = r.connect(o.conn(), tlsDest)
			url = "https://www.example.test/a"
			tr.TLSClientConfig = &tls.Config{RootCAs: r.caPool(), NextProtos: []string{"http/1.1"}}
		} else {
			c, sv = r.connectTCP(o.conn(), httpDest)
		}
		tr.DialContext = func(context.Context, string, string) (net.Conn, error) { return c, nil }
		req, _ := http.NewRequestWithContext(got100Trace(context.Background()), http.MethodPost, url, bytes.NewReader(body))
		req.Header.Set("Expect", "100-continue")
		resp, err := (&http.Client{Transport: tr, Timeout: 2 * waitLimit}).Do(req)
		if err != nil {
			t.Fatalf("round trip: %v", err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		c.Close()
		return resp.StatusCode, saw100.Load(), sv
	}
	t.Fatalf("no client %q", client)
	return 0, false, nil
}
