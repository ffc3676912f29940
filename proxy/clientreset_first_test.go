package proxy

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestBumpedClientResetBeforeFirstRequestTLSRecord: a bumped client that
// completes its TLS handshake and resets (a RST, no FIN) before it sends
// a byte of a request, while goproxy waits for its first one, lost
// nothing: its tls record says ok, as for a reset between requests. The
// handshake itself, and what comes before it, count as under way
// (docs/records.md).
func TestBumpedClientResetBeforeFirstRequestTLSRecord(t *testing.T) {
	for _, proto := range []string{"http/1.1", "h2"} {
		t.Run(proto, func(t *testing.T) {
			r := newBumpStallRig(t, time.Hour, func(_ *bumpStallRig, w http.ResponseWriter, _ *http.Request) {
				io.WriteString(w, "hello")
			}, proto)
			for i := range resetAfterResponsesConns {
				rc := dialRaw(t, r.client, r.dest)
				c := tls.Client(rc, &tls.Config{ServerName: "big.example", RootCAs: r.roots, NextProtos: []string{proto}})
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				err := c.HandshakeContext(ctx)
				cancel()
				if err != nil {
					t.Fatalf("connection %d: %v", i, err)
				}
				waitGoproxyReading(t)
				rc.reset()
				// Its session over before the next one: the goroutine
				// waited for is the next one's.
				port := uint16(rc.LocalAddr().(*net.TCPAddr).Port)
				waitUntil(t, 10*time.Second, func() bool {
					for _, rec := range r.sink.parse(t) {
						if rec.Kind == "tls" && rec.ClientPort == port {
							return true
						}
					}
					return false
				}, "the connection's record")
			}
			expectTLSRecordsOK(t, r)
		})
	}
}

// waitGoproxyReading waits until goproxy reads a client's first bytes
// (its HTTP/1 request loop, or its peek for the HTTP/2 preface): the
// session serves requests. The tests using it have one session at a time.
func waitGoproxyReading(t *testing.T) {
	t.Helper()
	buf := make([]byte, 1<<20)
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
			if strings.Contains(g, "elazarl/goproxy.(*ProxyHttpServer).handleHttps") && strings.Contains(g, "bufio.(*Reader)") {
				return
			}
		}
		if time.Now().After(end) {
			t.Fatal("goproxy did not start reading the client's first request")
		}
	}
}
