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
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// framingOrigin is an HTTP/1 origin on loopback that answers by path, and
// notes which of its connections served each request.
type framingOrigin struct {
	ln     net.Listener
	mu     sync.Mutex
	conns  int
	served []string // "conn path"
}

func startFramingOrigin(t *testing.T, cert *tls.Certificate) *framingOrigin {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	o := &framingOrigin{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			o.mu.Lock()
			o.conns++
			n := o.conns
			o.mu.Unlock()
			if cert == nil {
				go o.serve(c, n)
				continue
			}
			// TLS: HTTP/2 on the first connection (a bumped client then
			// speaks HTTP/2 too), which ends after its first response
			// (Connection: close is a GOAWAY); HTTP/1 on the others.
			proto := "http/1.1"
			if n == 1 {
				proto = "h2"
			}
			tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{*cert}, NextProtos: []string{proto}})
			if n > 1 {
				go o.serve(tc, n)
				continue
			}
			tc.SetDeadline(time.Now().Add(waitLimit))
			if tc.Handshake() != nil { // the server wants its state
				tc.Close()
				continue
			}
			go (&http2.Server{}).ServeConn(tc, &http2.ServeConnOpts{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
				o.mu.Lock()
				o.served = append(o.served, fmt.Sprintf("%d %s", n, req.URL.Path))
				o.mu.Unlock()
				w.Header().Set("Connection", "close")
				io.WriteString(w, "first")
			})})
		}
	}()
	return o
}

func (o *framingOrigin) serve(c net.Conn, n int) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(waitLimit))
	br := bufio.NewReader(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		o.mu.Lock()
		o.served = append(o.served, fmt.Sprintf("%d %s", n, req.URL.Path))
		o.mu.Unlock()
		switch req.URL.Path {
		case "/faulty": // framed twice: the chunked body is what net/http reads
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
		case "/faulty-1xx": // the same after an informational response
			io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"+
				"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 100\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
		case "/faulty-slow": // a body that comes in several reads
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n")
			for range 3 {
				time.Sleep(50 * time.Millisecond)
				fmt.Fprintf(c, "%x\r\n%s\r\n", 20000, strings.Repeat("a", 20000))
			}
			io.WriteString(c, "0\r\n\r\n")
		case "/faulty-head":
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n")
		case "/fine":
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
		default:
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext")
		}
	}
}

func (o *framingOrigin) log() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.served...)
}

// TestH2ClientFaultyFramingNotKept: an HTTP/2 client (h2c, or bumped h2)
// whose upstream speaks HTTP/1 goes through http.Transport, which drops
// the Content-Length of a response framed with both it and
// Transfer-Encoding, reads the body as chunked, and used to keep the
// connection for the next request: what the origin (or a server behind
// it) framed by its Content-Length would then be taken for the next
// response. The response is relayed whole, and the next request goes on a
// new connection, as h1Transport does it; a well-framed response keeps
// its connection.
func TestH2ClientFaultyFramingNotKept(t *testing.T) {
	for _, tc := range []struct {
		method, first, body string
		kept                bool
	}{
		{"GET", "/fine", "hello", true},
		{"GET", "/faulty", "hello", false},
		{"GET", "/faulty-1xx", "hello", false},
		{"GET", "/faulty-slow", strings.Repeat("a", 60000), false},
		// No body: net/http pooled the connection before it returned
		// the head; it is closed then.
		{"HEAD", "/faulty-head", "", false},
	} {
		t.Run(tc.method+tc.first, func(t *testing.T) {
			var o *framingOrigin
			r := newRig(t, testPolicy, func(c *intercept.Config) {
				c.Dial = func(ctx context.Context, _ string) (net.Conn, error) {
					return (&net.Dialer{}).DialContext(ctx, "tcp", o.ln.Addr().String())
				}
			})
			o = startFramingOrigin(t, nil)
			upEnd, err := net.Dial("tcp", o.ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			c, _ := r.connectTCP(upEnd, httpDest)
			c.SetDeadline(time.Now().Add(waitLimit))
			cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(c)
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			for i, p := range []string{tc.first, "/two"} {
				method := tc.method
				if i == 1 {
					method = "GET"
				}
				req, _ := http.NewRequest(method, "http://www.example.test"+p, nil)
				resp, err := cc.RoundTrip(req)
				if err != nil {
					t.Fatalf("%s: %v", p, err)
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				want := tc.body
				if i == 1 {
					want = "next"
				}
				if err != nil || resp.StatusCode != http.StatusOK || string(b) != want {
					t.Fatalf("%s: %d, %d bytes %.20q (%v), want 200 %.20q", p, resp.StatusCode, len(b), b, err, want)
				}
			}
			served := o.log()
			want := []string{"1 " + tc.first, "2 /two"}
			if tc.kept {
				want[1] = "1 /two"
			}
			if strings.Join(served, ",") != strings.Join(want, ",") {
				t.Fatalf("origin served (connection, path) %q, want %q", served, want)
			}
			// Each response was relayed whole, and its record says so.
			recs := ofKind(r.records(), "http")
			for deadline := time.Now().Add(waitLimit); len(recs) < 2 && time.Now().Before(deadline); recs = ofKind(r.records(), "http") {
				time.Sleep(10 * time.Millisecond)
			}
			if len(recs) != 2 {
				t.Fatalf("%d http records, want 2", len(recs))
			}
			for _, rec := range recs {
				if rec.Result != "ok" || (rec.BytesIn <= 0 && rec.Method != "HEAD") {
					t.Errorf("record of %s: %s, bytes_in %d (%s)", rec.Path, rec.Result, rec.BytesIn, rec.Error)
				}
			}
		})
	}
}

// TestBumpedFaultyFramingNotKept: the same over TLS, where a bumped HTTP/2
// client's further upstream connections speak HTTP/1 (the origin's first
// one spoke HTTP/2, then went away).
func TestBumpedFaultyFramingNotKept(t *testing.T) {
	var o *framingOrigin
	r := newRig(t, testPolicy, func(c *intercept.Config) {
		c.Dial = func(ctx context.Context, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", o.ln.Addr().String())
		}
	})
	o = startFramingOrigin(t, r.upLeaf("www.example.test"))
	upEnd, err := net.Dial("tcp", o.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c, _ := r.connectTCP(upEnd, tlsDest)
	tc := bumpClient(t, r, c, "www.example.test", "h2", "http/1.1")
	tc.SetDeadline(time.Now().Add(waitLimit))
	cc, err := (&http2.Transport{}).NewClientConn(tc)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	for _, step := range []struct{ path, body string }{{"/first", "first"}, {"/faulty", "hello"}, {"/two", "next"}} {
		req, _ := http.NewRequest("GET", "https://www.example.test"+step.path, nil)
		resp, err := cc.RoundTrip(req)
		if err != nil {
			t.Fatalf("%s: %v", step.path, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || string(b) != step.body {
			t.Fatalf("%s: %d %q (%v), want 200 %q", step.path, resp.StatusCode, b, err, step.body)
		}
	}
	served := strings.Join(o.log(), ",")
	if want := "1 /first,2 /faulty,3 /two"; served != want {
		t.Fatalf("origin served (connection, path) %q, want %q", served, want)
	}
}
