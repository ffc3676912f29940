package proxy

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// A client (bumped, or h2c) still uploading its request body when the
// destination resets the request (an HTTP/2 origin's RST_STREAM, an
// HTTP/1 origin's TCP reset) after reading the first 1000 bytes of it.
// The client is alive and sending: the failure is the destination's, and
// the record and the client's 502 must say so, not that the client went
// away. The upstream transport closing the body it was reading, on the
// reset, is no failure of the client's.
func TestUploadDestinationResetIsTheDestinations(t *testing.T) {
	// The destination reads the body's first 1000 bytes, then resets.
	origin := func(w http.ResponseWriter, req *http.Request) {
		_, _ = io.CopyN(io.Discard, req.Body, 1000)
		if hj, ok := w.(http.Hijacker); ok { // HTTP/1: reset the connection
			if c, _, err := hj.Hijack(); err == nil {
				resetHostConn(c)
				return
			}
		}
		panic(http.ErrAbortHandler) // HTTP/2: RST_STREAM INTERNAL_ERROR
	}
	// stall: the client sends 64 KiB of its 1 MiB body, then neither ends
	// nor resets it: it is alive, reading for the answer. Else it uploads
	// on until its writes fail. (An h2c client that stalls is left out:
	// net/http's HTTP/1 transport, which carries its request, waits for
	// its write of the body to end before it returns the reset, and the
	// body stays open.)
	for _, tc := range []struct {
		name, client, dest string
		stall              bool
	}{
		{"bumped h2 client stalled, h2 origin", "h2", "h2", true},
		{"bumped h2 client uploading, h2 origin", "h2", "h2", false},
		{"bumped http/1.1 client stalled, http/1.1 origin", "http/1.1", "http/1.1", true},
		{"bumped http/1.1 client uploading, http/1.1 origin", "http/1.1", "http/1.1", false},
		{"bumped http/1.1 client stalled, h2 origin", "http/1.1,h2", "h2", true},
		{"bumped http/1.1 client uploading, h2 origin", "http/1.1,h2", "h2", false},
		{"h2c client uploading, http/1.1 origin", "h2c", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newBumpStallRig(t, 5*time.Second, func(_ *bumpStallRig, w http.ResponseWriter, req *http.Request) {
				origin(w, req)
			}, tc.dest)
			var status int
			var body string
			switch tc.client {
			case "h2":
				_, c := r.dialRawTLS(t, "h2")
				status, body = uploadH2(t, c, "https://big.example/up", tc.stall)
			case "h2c":
				status, body = uploadH2(t, r.dial0(t, plainOrigin(t, origin)), "http://plain.example/up", tc.stall)
			default:
				status, body = uploadH1(t, r, strings.Split(tc.client, ","), tc.stall)
			}
			rec, ok := httpRecord(t, r.sink, 5*time.Second)
			if !ok {
				t.Fatal("no http record")
			}
			t.Logf("record: %s %q, status %d; the client got %d %q", rec.Result, rec.Error, rec.Status, status, body)
			if rec.Status != http.StatusBadGateway || rec.Result != "error" || rec.Error == "" ||
				strings.Contains(rec.Error, "client went away") {
				t.Errorf("the destination reset the request while the client was uploading: record %s %q, status %d; want error, the destination's failure, status 502",
					rec.Result, rec.Error, rec.Status)
			}
			if status != http.StatusBadGateway || strings.Contains(body, "client went away") {
				t.Errorf("the client was answered %d %q; want a 502 that does not say the client went away", status, body)
			}
		})
	}
}

// plainOrigin serves h on a cleartext HTTP/1 listener on loopback.
func plainOrigin(t *testing.T, h http.HandlerFunc) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// uploadH2 posts a body of 1 MiB to url over an HTTP/2 stream on c, and
// returns the answer's status and body; stall leaves the body open after
// its first 64 KiB.
func uploadH2(t *testing.T, c net.Conn, url string, stall bool) (int, string) {
	t.Helper()
	cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(c)
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	t.Cleanup(func() { pw.Close() })
	go func() {
		if stall {
			_, _ = pw.Write(make([]byte, 64<<10))
			return
		}
		_, _ = pw.Write(make([]byte, 1<<20)) // fails once the client's transport closes the body
	}()
	req, _ := http.NewRequest("POST", url, pr)
	req.ContentLength = 1 << 20
	resp, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatalf("round trip: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(b)
}

// uploadH1 is uploadH2 over HTTP/1.1, the client offering protos. Its
// offer of "http/1.1" before "h2" has the appliance speak HTTP/1.1 to it
// and, to an origin that speaks only h2, HTTP/2 upstream.
func uploadH1(t *testing.T, r *bumpStallRig, protos []string, stall bool) (int, string) {
	t.Helper()
	c := tls.Client(dialRaw(t, r.client, r.dest), &tls.Config{ServerName: "big.example", RootCAs: r.roots, NextProtos: protos})
	if err := c.Handshake(); err != nil {
		t.Fatalf("TLS handshake with the appliance: %v", err)
	}
	if p := c.ConnectionState().NegotiatedProtocol; p != "http/1.1" {
		t.Fatalf("the appliance negotiated %q with the client, want http/1.1", p)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	head := fmt.Sprintf("POST /up HTTP/1.1\r\nHost: big.example\r\nContent-Length: %d\r\n\r\n", 1<<20)
	n := 1 << 20
	if stall {
		n = 64 << 10
	}
	go func() { _, _ = c.Write(append([]byte(head), make([]byte, n)...)) }()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(b)
}

// resetHostConn resets a host TCP connection (a zero linger), under its
// TLS if it has one.
func resetHostConn(c net.Conn) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	c.Close()
}
