package intercept_test

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
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
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			o.accepted.Add(1)
			go o.serve(c)
		}
	}()
	return o
}

func (o *goAwayOrigin) serve(c net.Conn) {
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
			o.headers.Add(1)
			fr.WriteGoAway(0, http2.ErrCodeNo, nil)
			time.Sleep(10 * time.Millisecond)
			return
		}
	}
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
