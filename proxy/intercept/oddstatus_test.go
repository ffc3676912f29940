package intercept_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// oddStatusH2Origin answers every request with the given :status and a
// 10-byte body, its content-length said.
func oddStatusH2Origin(status string) func(net.Conn) {
	return func(c net.Conn) {
		serveH2Frames(c, func(fr *http2.Framer, f *http2.HeadersFrame) bool {
			var hb bytes.Buffer
			enc := hpack.NewEncoder(&hb)
			enc.WriteField(hpack.HeaderField{Name: ":status", Value: status})
			enc.WriteField(hpack.HeaderField{Name: "content-length", Value: "10"})
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, BlockFragment: hb.Bytes(), EndHeaders: true})
			fr.WriteData(f.StreamID, true, []byte("0123456789"))
			return true
		})
	}
}

// wantInvalidStatusRecord checks the request's one http record: a 502,
// the destination's error, naming the status it sent.
func wantInvalidStatusRecord(t *testing.T, r *rig, status string) {
	t.Helper()
	wantRecord(t, r, http.StatusBadGateway, "invalid status "+status+" from the destination")
	for _, rec := range ofKind(r.records(), "http") {
		if rec.Status != http.StatusBadGateway || rec.Result != "error" {
			t.Errorf("record status=%d result=%s error=%q, want 502 error", rec.Status, rec.Result, rec.Error)
		}
	}
}

// getXStatus sends GET /x for www.example.test on c, as an HTTP/1 client,
// and returns the response's status.
func getXStatus(t *testing.T, c net.Conn) int {
	t.Helper()
	resp, _ := newHTTPClient(t, c).do("GET /x HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
	return resp.StatusCode
}

// wantClient502 fails the test unless the client got, got, a 502; what
// names the status the origin sent.
func wantClient502(t *testing.T, got int, what string) {
	t.Helper()
	if got != http.StatusBadGateway {
		t.Fatalf("%s: the client got %d, want 502", what, got)
	}
}

// TestOddStatusH2Origin: an HTTP/2 origin's :status that is no final
// status (x/net takes any integer) gets the client, HTTP/1 or HTTP/2, a
// 502 and a record blaming the destination. Before, the HTTP/2 server
// panicked in WriteHeader and reset the stream, and the record said ok
// (-7, 099) or that the client went away (1000).
func TestOddStatusH2Origin(t *testing.T) {
	for _, status := range []string{"-7", "1000", "099"} {
		for _, proto := range []string{"http/1.1", "h2"} {
			t.Run(status+"/"+proto, func(t *testing.T) {
				var ln net.Listener
				r := newRig(t, testPolicy, func(c *intercept.Config) {
					c.Dial = func(ctx context.Context, _ string) (net.Conn, error) {
						var d net.Dialer
						return d.DialContext(ctx, "tcp", ln.Addr().String())
					}
				})
				var err error
				ln, err = tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
					Certificates: []tls.Certificate{*r.upLeaf("www.example.test")}, NextProtos: []string{"h2"}})
				if err != nil {
					t.Fatal(err)
				}
				var n atomic.Int64
				acceptEach(t, ln, &n, oddStatusH2Origin(status))
				upEnd, err := net.Dial("tcp", ln.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				c, _ := r.connectTCP(upEnd, tlsDest)
				// An HTTP/1 client offering h2 after http/1.1: the appliance
				// offers the origin h2 too (responsehead_test.go).
				protos := []string{proto}
				if proto != "h2" {
					protos = append(protos, "h2")
				}
				tc := bumpClient(t, r, c, "www.example.test", protos...)
				defer tc.Close()
				if p := tc.ConnectionState().NegotiatedProtocol; p != proto {
					t.Fatalf("ALPN %q, want %q", p, proto)
				}
				var got int
				if proto == "h2" {
					cc, err := (&http2.Transport{}).NewClientConn(tc)
					if err != nil {
						t.Fatal(err)
					}
					defer cc.Close()
					req, _ := http.NewRequest("GET", "https://www.example.test/x", nil)
					resp, err := cc.RoundTrip(req)
					if err != nil {
						t.Fatalf("client: %v", err)
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					got = resp.StatusCode
				} else {
					got = getXStatus(t, tc)
				}
				wantClient502(t, got, ":status "+status)
				wantInvalidStatusRecord(t, r, status)
			})
		}
	}
}

// TestOddStatusH1Origin: an HTTP/1 origin's status under 100 (three
// digits, so net/http reads it, and takes it as final), with a body cut
// short, gets the client, HTTP/1 (h1Transport) or h2c (http.Transport),
// a 502 and a record blaming the destination. Before, the record said ok
// while the client got 10 of 100 bytes under a doubled status line.
func TestOddStatusH1Origin(t *testing.T) {
	for _, status := range []string{"099", "000"} {
		for _, h2c := range []bool{false, true} {
			name := status + "/h1"
			if h2c {
				name = status + "/h2c"
			}
			t.Run(name, func(t *testing.T) {
				r := newRig(t, testPolicy)
				upEnd, srvEnd := testnet.TCPPair(t)
				go func() {
					defer srvEnd.Close()
					if _, err := http.ReadRequest(bufio.NewReader(srvEnd)); err != nil {
						return
					}
					io.WriteString(srvEnd, "HTTP/1.1 "+status+" Odd\r\nContent-Length: 100\r\n\r\n0123456789")
				}()
				c, _ := r.connectTCP(upEnd, httpDest)
				var got int
				if h2c {
					got = h2cGetOne(t, c).StatusCode
				} else {
					got = getXStatus(t, c)
				}
				wantClient502(t, got, "status "+status)
				wantInvalidStatusRecord(t, r, status)
			})
		}
	}
}

// TestOddStatusConnNotKept: h1Transport does not keep the connection of
// an origin that sent an invalid status, even with its (empty) body read
// whole: the client's connection stays open, the origin's is closed.
func TestOddStatusConnNotKept(t *testing.T) {
	r := newRig(t, testPolicy)
	upEnd, srvEnd := testnet.TCPPair(t)
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		br := bufio.NewReader(srvEnd)
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(srvEnd, "HTTP/1.1 000 Odd\r\nContent-Length: 0\r\n\r\n")
		io.Copy(io.Discard, br) // until the appliance closes
	}()
	c, _ := r.connectTCP(upEnd, httpDest)
	wantClient502(t, getXStatus(t, c), "status 000")
	select {
	case <-closed:
	case <-time.After(waitLimit):
		t.Fatal("the origin's connection is still open: kept for another request")
	}
	wantInvalidStatusRecord(t, r, "000")
}
