package intercept_test

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestBumpedRecordBytes: a bumped connection's tls record counts what
// reached the destination and came back, not what the client sent: a
// big upload in a denied request is in neither, an allowed one is.
func TestBumpedRecordBytes(t *testing.T) {
	// The denied body within the 256 KiB the appliance reads of a body
	// left unread (bodyfault.go): past it the connection would close.
	const denied, allowed = 200 << 10, 64 << 10
	r := newRig(t, testPolicy)
	upEnd, up := r.startUpstream(r.upLeaf("www.example.test"), "http/1.1")
	raw, sv := r.connect(upEnd, tlsDest)
	c := bumpClient(t, r, raw, "www.example.test", "http/1.1")
	hc := newHTTPClient(t, c)
	post := func(host string, n int) (*http.Response, string) {
		t.Helper()
		// On the side: a pipe has no buffer, and the 403 comes before
		// the body is read.
		wrote := make(chan error, 1)
		go func() {
			_, err := io.WriteString(c, fmt.Sprintf("POST /up HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n%s",
				host, n, strings.Repeat("u", n)))
			wrote <- err
		}()
		resp, body := hc.read("POST to " + host)
		if err := <-wrote; err != nil {
			t.Fatalf("writing the POST to %s: %v", host, err)
		}
		return resp, body
	}
	if resp, body := post("evil.example.test", denied); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("denied upload: %d %q", resp.StatusCode, body)
	}
	resp, body := post("www.example.test", allowed)
	if resp.StatusCode != 200 {
		t.Fatalf("allowed upload: %d %q", resp.StatusCode, body)
	}
	c.Close()
	sv.waitDoneOnce(t)
	up.waitClosed(t)
	recs := ofKind(r.records(), "tls")
	if len(recs) != 1 {
		t.Fatalf("tls records %+v, want one", recs)
	}
	rec := recs[0]
	// The allowed upload, its head and TLS's own bytes; not the denied one.
	if rec.BytesOut < allowed || rec.BytesOut >= denied {
		t.Errorf("tls record bytes_out %d: want at least the allowed upload (%d), less than the denied one (%d)",
			rec.BytesOut, allowed, denied)
	}
	if rec.BytesIn < int64(len(body)) || rec.BytesIn > 64<<10 {
		t.Errorf("tls record bytes_in %d: want the upstream's response (%d bytes of body) and TLS's own bytes",
			rec.BytesIn, len(body))
	}
}

// TestBumpRefusedRecordBytes: a bump that ends before any request, after
// its upstream handshake ran, still counts that handshake in its tls record.
// The destination got the appliance's ClientHello, with the client's SNI,
// and answered with its certificate: bytes_out is what the destination
// read, bytes_in what it wrote, as for any bumped connection.
func TestBumpRefusedRecordBytes(t *testing.T) {
	for _, tc := range []struct {
		name         string
		clientTrusts bool // the client trusts the appliance's CA
		upstreamGood bool // the destination's certificate verifies
		action       string
	}{
		{"unverified destination", true, false, "deny"},
		{"client rejects the leaf", false, true, "bump"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testPolicy)
			cert := r.upLeaf("www.example.test")
			if !tc.upstreamGood {
				cert = r.strangerLeaf("www.example.test")
			}
			proxyEnd, serverEnd := net.Pipe()
			dest := &countingConn{Conn: serverEnd}
			up := r.serveUpstream(dest, cert, "http/1.1")
			raw, sv := r.connectTCP(proxyEnd, tlsDest)
			var roots *x509.CertPool
			if tc.clientTrusts {
				roots = r.caPool()
			}
			c := tls.Client(raw, &tls.Config{ServerName: "www.example.test", RootCAs: roots})
			c.SetDeadline(time.Now().Add(waitLimit))
			if err := c.Handshake(); err == nil {
				t.Fatal("the client's handshake succeeded")
			}
			sv.waitDoneOnce(t)
			up.waitClosed(t)
			recs := ofKind(r.records(), "tls")
			if len(recs) != 1 {
				t.Fatalf("tls records %+v, want one", recs)
			}
			rec := recs[0]
			if rec.Action != tc.action || rec.Result == "ok" {
				t.Errorf("record action %q result %q: want %q, not ok", rec.Action, rec.Result, tc.action)
			}
			read, wrote := dest.read.Load(), dest.wrote.Load()
			if read == 0 || wrote == 0 {
				t.Fatalf("the destination read %d bytes and wrote %d: no handshake ran", read, wrote)
			}
			if rec.BytesOut != read || rec.BytesIn != wrote {
				t.Errorf("record bytes_out %d bytes_in %d: want what the destination read (%d) and wrote (%d)",
					rec.BytesOut, rec.BytesIn, read, wrote)
			}
		})
	}
}

// countingConn counts what the destination's end of a connection reads
// and writes.
type countingConn struct {
	net.Conn
	read, wrote atomic.Int64
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.read.Add(int64(n))
	return n, err
}

func (c *countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.wrote.Add(int64(n))
	return n, err
}
