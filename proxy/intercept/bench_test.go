package intercept_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// BenchmarkBumpedRequests: requests one after another over one bumped
// connection, HTTP/1.1 and HTTP/2, to an upstream at the end of a pipe:
// what a request costs through the interceptor (decision, record, head or
// header list limit), with the client, the upstream and TLS on both sides
// in the numbers too.
func BenchmarkBumpedRequests(b *testing.B) {
	// A record written as a rig closes its writer warns: not a result.
	defer slog.SetDefault(slog.Default())
	slog.SetDefault(slog.New(slog.DiscardHandler))
	header := http.Header{
		"User-Agent": {"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"},
		"Accept":     {"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"},
		"Cookie":     {"session=" + strings.Repeat("c", 400)},
	}
	for _, proto := range []string{"http/1.1", "h2"} {
		b.Run(proto, func(b *testing.B) {
			r := newRig(b, testPolicy)
			upEnd, _ := r.startUpstream(r.upLeaf("www.example.test"), "h2", "http/1.1")
			c, _ := r.connect(upEnd, tlsDest)
			tc := tls.Client(c, &tls.Config{ServerName: "www.example.test", RootCAs: r.caPool(), NextProtos: []string{proto}})
			tc.SetDeadline(time.Now().Add(time.Minute))
			if err := tc.Handshake(); err != nil {
				b.Fatal(err)
			}
			defer tc.Close()
			var do func(i int) error
			if proto == "h2" {
				cc, err := (&http2.Transport{}).NewClientConn(tc)
				if err != nil {
					b.Fatal(err)
				}
				do = func(i int) error {
					req, _ := http.NewRequest("GET", fmt.Sprintf("https://www.example.test/p%d", i%10), nil)
					req.Header = header.Clone()
					resp, err := cc.RoundTrip(req)
					if err != nil {
						return err
					}
					io.Copy(io.Discard, resp.Body)
					return resp.Body.Close()
				}
			} else {
				var head strings.Builder
				for k, v := range header {
					fmt.Fprintf(&head, "%s: %s\r\n", k, v[0])
				}
				br := bufio.NewReader(tc)
				do = func(i int) error {
					if _, err := fmt.Fprintf(tc, "GET /p%d HTTP/1.1\r\nHost: www.example.test\r\n%s\r\n", i%10, head.String()); err != nil {
						return err
					}
					resp, err := http.ReadResponse(br, nil)
					if err != nil {
						return err
					}
					io.Copy(io.Discard, resp.Body)
					return resp.Body.Close()
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				if err := do(i); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkBumpedConnections: new bumped connections, one after another,
// each with a full TLS handshake on both sides and one HTTP/1.1 request:
// what a connection costs through the interceptor (its allocations are
// the point: -benchmem, -memprofile), with the client, the upstream and
// the rig's own per-connection set-up in the numbers too. The leaf is
// minted once and then cached; each upstream has ticket keys of its own,
// so the interceptor's offer to resume the last one's session is refused.
// The rig's per-connection clean-ups (and each upstream's HTTP server
// goroutine) stay until the end of each b.N round: read allocations per
// connection from it, not memory in use.
func BenchmarkBumpedConnections(b *testing.B) {
	defer slog.SetDefault(slog.Default())
	slog.SetDefault(slog.New(slog.DiscardHandler))
	r := newRig(b, testPolicy)
	leaf := r.upLeaf("www.example.test")
	ccfg := &tls.Config{ServerName: "www.example.test", RootCAs: r.caPool(), NextProtos: []string{"http/1.1"}}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		// Loopback TCP, not pipes: a close_notify must not wait for a
		// peer that has stopped reading.
		upEnd, _ := r.startUpstreamTCP(leaf, "http/1.1")
		c, _ := r.connectTCP(upEnd, tlsDest)
		tc := tls.Client(c, ccfg)
		tc.SetDeadline(time.Now().Add(time.Minute))
		if _, err := fmt.Fprintf(tc, "GET /p%d HTTP/1.1\r\nHost: www.example.test\r\nConnection: close\r\n\r\n", i%10); err != nil {
			b.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
		if err != nil {
			b.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d", resp.StatusCode)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		tc.Close()
	}
}
