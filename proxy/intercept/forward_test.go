package intercept_test

import (
	"bufio"
	"crypto/tls"
	"io"
	"log"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"

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

// uaUpstream serves HTTP on its end of a loopback connection (TLS with
// cert, offering protos) and sends each request's User-Agent values,
// exactly as they came, to the channel.
func uaUpstream(t *testing.T, cert *tls.Certificate, protos ...string) (net.Conn, <-chan []string) {
	proxyEnd, serverEnd := testnet.TCPPair(t)
	got := make(chan []string, 4)
	var conn net.Conn = serverEnd
	if cert != nil {
		conn = tls.Server(serverEnd, &tls.Config{Certificates: []tls.Certificate{*cert}, NextProtos: protos})
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			got <- req.Header["User-Agent"]
			io.WriteString(w, "ok")
		}),
		ErrorLog: log.New(io.Discard, "", 0),
	}
	go srv.Serve(newOneConnListener(conn))
	t.Cleanup(func() { srv.Close(); serverEnd.Close() })
	return proxyEnd, got
}

// TestNoAddedUserAgent: a request without a User-Agent reaches the
// destination without one, over each transport: net/http added its own
// (Go-http-client/1.1 or /2.0), which the destination took for the
// client's while the record said there was none, and which fingerprints
// the appliance. A client's own User-Agent goes through as it is.
func TestNoAddedUserAgent(t *testing.T) {
	wantUA := func(t *testing.T, r *rig, got <-chan []string, want []string) {
		t.Helper()
		select {
		case ua := <-got:
			if !slices.Equal(ua, want) {
				t.Errorf("the destination got User-Agent %q, want %q", ua, want)
			}
		case <-time.After(waitLimit):
			t.Fatal("the destination got no request")
		}
		recs := ofKind(r.records(), "http")
		if len(recs) != 1 || recs[0].UserAgent != strings.Join(want, "") {
			t.Errorf("records %+v, want one with user_agent %q", recs, want)
		}
	}
	for _, ua := range []string{"", "curl/8.5.0"} {
		var want []string
		if ua != "" {
			want = []string{ua}
		}
		t.Run("http1/"+ua, func(t *testing.T) {
			r := newRig(t, testPolicy)
			upEnd, got := uaUpstream(t, nil)
			c, sv := r.connectTCP(upEnd, httpDest)
			head := "GET /a HTTP/1.1\r\nHost: www.example.test\r\n"
			if ua != "" {
				head += "User-Agent: " + ua + "\r\n"
			}
			resp, body := newHTTPClient(t, c).do(head + "\r\n")
			if resp.StatusCode != 200 || body != "ok" {
				t.Fatalf("response %d %q", resp.StatusCode, body)
			}
			c.Close()
			sv.waitDoneOnce(t)
			wantUA(t, r, got, want)
		})
		// An h2c client, its requests sent on over HTTP/1 by http.Transport;
		// a bumped h2 one, sent on over HTTP/2.
		for _, bumped := range []bool{false, true} {
			t.Run(map[bool]string{false: "h2c/", true: "bumped-h2/"}[bumped]+ua, func(t *testing.T) {
				r := newRig(t, testPolicy)
				var cc *http2.ClientConn
				var sv *served
				var got <-chan []string
				url := "http://www.example.test/a"
				if bumped {
					var upEnd net.Conn
					upEnd, got = uaUpstream(t, r.upLeaf("www.example.test"), "h2")
					c, s := r.connect(upEnd, tlsDest)
					tc := bumpClient(t, r, c, "www.example.test", "h2")
					var err error
					if cc, err = (&http2.Transport{}).NewClientConn(tc); err != nil {
						t.Fatal(err)
					}
					sv, url = s, "https://www.example.test/a"
				} else {
					var upEnd net.Conn
					upEnd, got = uaUpstream(t, nil)
					cc, sv = r.h2cClient(t, upEnd)
				}
				req, _ := http.NewRequest("GET", url, nil)
				req.Header["User-Agent"] = []string{ua} // "": the Go client sends none
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
				wantUA(t, r, got, want)
			})
		}
	}
}
