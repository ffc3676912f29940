package intercept_test

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// chunkedCutOrigin answers one request on c, the destination's end of its
// connection, with a chunked body whose first chunk is "0123456789", then
// closes the connection without the last chunk once got is closed.
func chunkedCutOrigin(c net.Conn, got <-chan struct{}) {
	rawOrigin(c, func(c net.Conn) {
		io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n")
		select {
		case <-got:
		case <-time.After(waitLimit):
		}
		c.Close()
	})
}

// h2Origin serves HTTP/2 over TLS on c, the destination's end of its
// connection, as www.example.test, with h.
func h2Origin(r *rig, c net.Conn, h http.HandlerFunc) {
	tc := tls.Server(c, &tls.Config{
		Certificates: []tls.Certificate{*r.upLeaf("www.example.test")}, NextProtos: []string{"h2"},
	})
	go func() {
		tc.SetDeadline(time.Now().Add(waitLimit))
		if err := tc.Handshake(); err != nil {
			c.Close()
			return
		}
		tc.SetDeadline(time.Time{})
		(&http2.Server{}).ServeConn(tc, &http2.ServeConnOpts{Handler: h})
	}()
}

// TestCutResponseBumpedH2: a bumped HTTP/2 client (Go's, over TLS with the
// appliance's certificate) whose response the destination cuts short sees
// its stream reset, not a clean end. The destination, HTTP/2 too, sends
// the head and ten bytes of a body of no declared length, then resets the
// stream, or closes its connection. A stream reset is recorded as one:
// result reset, not error.
func TestCutResponseBumpedH2(t *testing.T) {
	for _, tc := range []struct {
		name   string
		reset  bool // the stream; else the connection closes
		result string
		error  string
		clen   string // the head's content-length, sent as is
	}{
		{"stream reset", true, "reset", "stream error: stream ID 1; INTERNAL_ERROR", ""},
		{"connection closed", false, "error", "unexpected EOF", ""},
		// A length that is no number: Go's transport leaves the header
		// and takes the length as unknown, the client is sent none.
		{"unparsable length", true, "reset", "stream error: stream ID 1; INTERNAL_ERROR", "abc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testPolicy)
			upEnd, originEnd := testnet.TCPPair(t)
			got := make(chan struct{})
			h2Origin(r, originEnd, func(w http.ResponseWriter, _ *http.Request) {
				if tc.clen != "" {
					// Lower case, so that x/net's server neither checks
					// nor drops it: it goes out as written.
					w.Header()["content-length"] = []string{tc.clen}
				}
				io.WriteString(w, "0123456789")
				w.(http.Flusher).Flush()
				select {
				case <-got:
				case <-time.After(waitLimit):
				}
				if !tc.reset {
					originEnd.Close()
				}
				panic(http.ErrAbortHandler) // RST_STREAM, if the connection is still there
			})
			c, sv := r.connectTCP(upEnd, tlsDest)
			tlsc := bumpClient(t, r, c, "www.example.test", "h2")
			if p := tlsc.ConnectionState().NegotiatedProtocol; p != "h2" {
				t.Fatalf("negotiated %q with the client, want h2", p)
			}
			cc, err := (&http2.Transport{}).NewClientConn(tlsc)
			if err != nil {
				t.Fatal(err)
			}
			req, _ := http.NewRequest("GET", "https://www.example.test/x", nil)
			resp, err := cc.RoundTrip(req)
			if err != nil {
				t.Fatalf("HTTP/2 round trip: %v", err)
			}
			buf := make([]byte, 10)
			if _, err := io.ReadFull(resp.Body, buf); err != nil {
				t.Fatalf("reading the first bytes of the body: %v", err)
			}
			close(got)
			if n, err := io.Copy(io.Discard, resp.Body); err == nil {
				t.Errorf("the client read %d more bytes and saw the body end", n)
			} else {
				wantStreamReset(t, err)
			}
			resp.Body.Close()
			cc.Close()
			c.Close()
			sv.waitDoneOnce(t)
			rec := oneHTTPRecord(t, r)
			if rec.Result != tc.result || !strings.Contains(rec.Error, tc.error) || rec.BytesIn != 10 {
				t.Errorf("record result %q error %q bytes_in %d: want %s, %q, 10 bytes", rec.Result, rec.Error, rec.BytesIn, tc.result, tc.error)
			}
		})
	}
}

// TestCutResponseCurl: curl, over HTTP/1.1 and with HTTP/2 prior knowledge
// (h2c), fails a download the destination cuts short in the middle of a
// chunked body, rather than saving the part as the whole: exit status 18
// (partial file) over HTTP/1.1, 92 (HTTP/2 stream not closed cleanly) over
// HTTP/2.
func TestCutResponseCurl(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("no curl")
	}
	for _, tc := range []struct {
		name string
		flag string
		exit int
	}{{"HTTP/1.1", "--http1.1", 18}, {"h2c", "--http2-prior-knowledge", 92}} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testPolicy)
			upEnd, originEnd := testnet.TCPPair(t)
			got := make(chan struct{})
			chunkedCutOrigin(originEnd, got)
			var out bytes.Buffer
			// The first chunk may go along with the end: curl sees both.
			err := curlThroughRig(t, r, upEnd, curl, nil, &out, func() { close(got) },
				"-sS", tc.flag, "-H", "Host: ok.example.test", "-o", "/dev/null")
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != tc.exit {
				t.Errorf("curl ended with %v (%s), want exit status %d", err, strings.TrimSpace(out.String()), tc.exit)
			}
			rec := oneHTTPRecord(t, r)
			if rec.Result != "error" || !strings.Contains(rec.Error, "unexpected EOF") {
				t.Errorf("record result %q error %q: want error, unexpected EOF", rec.Result, rec.Error)
			}
		})
	}
}
