package intercept_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// goAwayOrigin is an HTTP/2 origin that answers every request's HEADERS
// with GOAWAY naming no stream (last stream 0): it took none of them,
// and net/http tries the request again on a new connection.
type goAwayOrigin struct {
	ln       net.Listener
	accepted atomic.Int64 // connections
	headers  atomic.Int64 // requests seen
}

func startGoAwayOrigin(t *testing.T, cert *tls.Certificate) *goAwayOrigin {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{*cert}, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	o := &goAwayOrigin{ln: ln}
	acceptEach(t, ln, &o.accepted, o.serve)
	return o
}

func (o *goAwayOrigin) serve(c net.Conn) {
	serveH2Frames(c, func(fr *http2.Framer, _ *http2.HeadersFrame) bool {
		o.headers.Add(1)
		fr.WriteGoAway(0, http2.ErrCodeNo, nil)
		time.Sleep(10 * time.Millisecond)
		return false
	})
}

// TestOriginGoAwayEveryRequest: an HTTP/2 origin that answers every
// request with GOAWAY(last stream 0) gets the request on at most three
// connections (net/http alone tried it again, dialling and handshaking,
// thousands of times a second for as long as the client waited); the
// client gets a 502 at once, and the request's record blames the
// destination, not the client.
func TestOriginGoAwayEveryRequest(t *testing.T) {
	var o *goAwayOrigin
	r := newRig(t, testPolicy, func(c *intercept.Config) {
		c.Dial = func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", o.ln.Addr().String())
		}
	})
	o = startGoAwayOrigin(t, r.upLeaf("www.example.test"))
	upEnd, err := net.Dial("tcp", o.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c, _ := r.connectTCP(upEnd, tlsDest)
	tc := bumpClient(t, r, c, "www.example.test", "h2")
	tc.SetDeadline(time.Now().Add(waitLimit))
	cc, err := (&http2.Transport{}).NewClientConn(tc)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	// The client gives up after 8 s: without the bound, the request
	// would go on being tried until then.
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "https://www.example.test/x", nil)
	resp, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatalf("client: %v (origin: %d connections)", err, o.accepted.Load())
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("client got %d %q, want 502", resp.StatusCode, body)
	}
	time.Sleep(200 * time.Millisecond) // a stray further dial would show
	t.Logf("origin: %d connections, %d request HEADERS", o.accepted.Load(), o.headers.Load())
	if n, h := o.accepted.Load(), o.headers.Load(); n > 3 || h > 3 {
		t.Errorf("origin: %d connections, %d request HEADERS for one request; want 3 at most", n, h)
	}
	var found bool
	for _, rec := range ofKind(r.records(), "http") {
		found = true
		if rec.Status != http.StatusBadGateway || rec.Result != "error" || !strings.Contains(rec.Error, "refused the request on 3 connections") {
			t.Errorf("record: status %d result %q error %q; want 502, error, the destination refused it", rec.Status, rec.Result, rec.Error)
		}
	}
	if !found {
		t.Error("no http record")
	}
}

// closingIdleOrigin is a plain HTTP/1.1 origin whose connections serve
// one request each and are kept alive, but close when the next request
// on them comes, without answering: an origin whose keep-alive timeout
// closed its idle connections together, with the appliance's next
// request already on its way on each (the keep-alive race). net/http
// tries a GET on such a kept connection again, on another one.
type closingIdleOrigin struct {
	ln       net.Listener
	accepted atomic.Int64 // connections
	dropped  atomic.Int64 // requests read on a kept connection, then closed under
	warmN    int64
	warmIn   atomic.Int64
	warm     chan struct{} // closed once warmN /warm requests are in
}

func startClosingIdleOrigin(t *testing.T, warmN int64) *closingIdleOrigin {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	o := &closingIdleOrigin{ln: ln, warmN: warmN, warm: make(chan struct{})}
	acceptEach(t, ln, &o.accepted, o.serve)
	return o
}

func (o *closingIdleOrigin) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(waitLimit))
	br := bufio.NewReader(c)
	for served := 0; ; served++ {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.Copy(io.Discard, req.Body)
		if served > 0 {
			o.dropped.Add(1)
			return
		}
		if req.URL.Path == "/warm" {
			// Held until every /warm request is in: each on a connection
			// of its own.
			if o.warmIn.Add(1) == o.warmN {
				close(o.warm)
			}
			select {
			case <-o.warm:
			case <-time.After(waitLimit):
				return
			}
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	}
}

// TestKeepAliveRaceNotRefused: the bound on the connections a request is
// tried on counts new connections only. A request that loses the
// keep-alive race on each of the session's kept connections (three, all
// closed under it by the origin) is tried on a new connection and
// served, as net/http alone would: not a 502 blaming the destination
// for refusing it "on 3 connections".
func TestKeepAliveRaceNotRefused(t *testing.T) {
	const kept = 3
	var o *closingIdleOrigin
	r := newRig(t, testPolicy, func(c *intercept.Config) {
		c.Dial = func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", o.ln.Addr().String())
		}
	})
	o = startClosingIdleOrigin(t, kept)
	upEnd, err := net.Dial("tcp", o.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	// An HTTP/2 client (h2c) to an HTTP/1 origin: its streams go over
	// http.Transport, which keeps the upstream connections.
	cc, _ := r.h2cClient(t, upEnd)
	get := func(path string) (int, string, error) {
		req, _ := http.NewRequest("GET", "http://www.example.test"+path, nil)
		resp, err := cc.RoundTrip(req)
		if err != nil {
			return 0, "", err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(body), nil
	}
	var wg sync.WaitGroup
	for range kept {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if code, body, err := get("/warm"); err != nil || code != http.StatusOK {
				t.Errorf("warm-up: %d %q %v", code, body, err)
			}
		}()
	}
	wg.Wait()
	time.Sleep(100 * time.Millisecond) // their connections back in the pool
	code, body, err := get("/late")
	t.Logf("the late request: %d %q %v; origin: %d connections, %d requests closed under", code, body, err, o.accepted.Load(), o.dropped.Load())
	if err != nil || code != http.StatusOK || body != "ok" {
		t.Errorf("the late request: %d %q %v; want 200 ok on a new connection", code, body, err)
	}
	if d := o.dropped.Load(); d != kept {
		t.Errorf("%d requests closed under on kept connections, want %d: the race was not played", d, kept)
	}
	if n := o.accepted.Load(); n != kept+1 {
		t.Errorf("origin: %d connections, want %d", n, kept+1)
	}
	var oks int
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		oks = 0
		for _, rec := range ofKind(r.records(), "http") {
			if rec.Status == http.StatusOK && rec.Result == "ok" {
				oks++
			} else {
				t.Logf("record: status %d result %q error %q", rec.Status, rec.Result, rec.Error)
			}
		}
		if oks == kept+1 {
			break
		}
	}
	if oks != kept+1 {
		t.Errorf("%d http records 200 ok, want %d", oks, kept+1)
	}
}

// acceptEach serves each connection ln accepts with serve, on a goroutine
// of its own, counting them in accepted, until the test ends and closes ln.
// serveH2Frames is a bare HTTP/2 origin on c, for waitLimit at the most:
// it reads the client preface, sends its SETTINGS, acknowledges the
// client's and hands each HEADERS frame to onHeaders, until a read fails
// or onHeaders returns false; then it closes c.
func serveH2Frames(c net.Conn, onHeaders func(*http2.Framer, *http2.HeadersFrame) bool) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(waitLimit))
	pre := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c, pre); err != nil {
		return
	}
	fr := http2.NewFramer(c, c)
	fr.WriteSettings()
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.HeadersFrame:
			if !onHeaders(fr, f) {
				return
			}
		}
	}
}

func acceptEach(t *testing.T, ln net.Listener, accepted *atomic.Int64, serve func(net.Conn)) {
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go serve(c)
		}
	}()
}
