package sniff

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"slices"
	"testing"
	"time"
)

// FuzzParseClientHello checks, on arbitrary input seeded with real
// crypto/tls ClientHellos: no panic; exactly one documented error class; a
// NeedMoreError asks for more than it got; a success is stable when bytes
// are appended, reports a Size within the input, a validated SNI, and is
// preceded by prefixes that all ask for more.
func FuzzParseClientHello(f *testing.F) {
	for _, tc := range helloCases() {
		raw := captureHello(f, tc.cfg)
		f.Add(raw)
		f.Add(refragment(f, raw, 3, 200))
	}
	f.Add(record(helloBody(sniExt(hostName("a.example")), alpnExt("h2"))))
	f.Add([]byte("GET / HTTP/1.1\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseClientHello(b)
		if err != nil {
			if !knownError(err) {
				t.Fatalf("unclassified error %v", err)
			}
			var nm *NeedMoreError
			if errors.As(err, &nm) && nm.Need <= len(b) {
				t.Fatalf("Need %d <= len %d", nm.Need, len(b))
			}
			return
		}
		if h.Size < 9 || h.Size > len(b) {
			t.Fatalf("Size %d of %d", h.Size, len(b))
		}
		if h.ServerName != "" && !validHostName([]byte(h.ServerName)) {
			t.Fatalf("invalid ServerName %q", h.ServerName)
		}
		h2, err := ParseClientHello(append(slices.Clip(b), 0xff, 0x00))
		if err != nil || h2.ServerName != h.ServerName || h2.Size != h.Size || !slices.Equal(h2.ALPN, h.ALPN) {
			t.Fatalf("appending bytes changed the result: %+v %v", h2, err)
		}
		for _, k := range []int{0, 5, h.Size / 2, h.Size - 1} {
			if _, err := ParseClientHello(b[:k]); !errors.Is(err, ErrNeedMore) {
				t.Fatalf("prefix %d of a %d-byte hello: %v", k, h.Size, err)
			}
		}
	})
}

// fakeConn reads from a fixed byte slice (EOF at its end); deadlines are
// recorded, not enforced.
type fakeConn struct {
	r        io.Reader
	deadline time.Time
}

func (c *fakeConn) Read(p []byte) (int, error)        { return c.r.Read(p) }
func (c *fakeConn) SetReadDeadline(t time.Time) error { c.deadline = t; return nil }

// FuzzSniffHTTP fuzzes the request-line parser and Sniff over it: no
// panic; documented errors only; a success survives appended bytes and
// every prefix of a success is need-more or the same success; Sniff
// consumes nothing and leaves no deadline behind.
func FuzzSniffHTTP(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
		"GET http://a.example:8080/x?y HTTP/1.1\r\nUser-Agent: f\r\nHost: b.example\r\n\r\n",
		"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
		"POST /submit HTTP/1.0\nContent-Length: 0\n\n",
		"OPTIONS * HTTP/1.1\r\nHOST: [::1]:80\r\n\r\n",
		H2Preface,
		"SSH-2.0-OpenSSH_9.6\r\n",
		"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := ParseHTTPRequest(b)
		switch {
		case err == nil:
			if req.Method == "" || req.Target == "" || req.Proto == "" {
				t.Fatalf("success with empty fields: %+v", req)
			}
			_, _ = req.Authority(), req.Hostname()
			again, err := ParseHTTPRequest(append(slices.Clip(b), "\r\nX: y\r\n"...))
			if err != nil || again != req {
				t.Fatalf("appending changed %+v to %+v, %v", req, again, err)
			}
			for k := range min(len(b), 64) {
				p, err := ParseHTTPRequest(b[:k])
				if err == nil && p != req {
					t.Fatalf("prefix %d: %+v vs %+v", k, p, req)
				}
				if err != nil && !errors.Is(err, ErrNeedMore) {
					t.Fatalf("prefix %d of a request: %v", k, err)
				}
			}
		case errors.Is(err, ErrNeedMore):
			var nm *NeedMoreError
			if !errors.As(err, &nm) || nm.Need <= len(b) {
				t.Fatalf("bad need-more %v for %d bytes", err, len(b))
			}
		case errors.Is(err, ErrNotHTTP):
		default:
			t.Fatalf("unexpected error %v", err)
		}

		conn := &fakeConn{r: bytes.NewReader(b)}
		br := bufio.NewReaderSize(conn, 256) // small, to reach ErrTooLarge too
		res, err := sniff(br, conn, time.Millisecond, CompleteTimeout)
		if err != nil {
			t.Fatalf("Sniff: %v", err)
		}
		if !conn.deadline.IsZero() {
			t.Fatal("deadline left set")
		}
		if res.Kind == KindHTTP && res.HTTP.Method == "" {
			t.Fatalf("KindHTTP without method: %+v", res)
		}
		rest, err := io.ReadAll(br)
		if err != nil || !bytes.Equal(rest, b) {
			t.Fatalf("Sniff consumed bytes: %v", err)
		}
	})
}
