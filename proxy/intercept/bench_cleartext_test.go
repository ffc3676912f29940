package intercept_test

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"
)

// BenchmarkCleartextRequests: HTTP/1.1 requests one after another over
// one cleartext connection: what a request costs through the interceptor
// when the connection stays open, client and upstream included.
func BenchmarkCleartextRequests(b *testing.B) {
	defer slog.SetDefault(slog.Default())
	slog.SetDefault(slog.New(slog.DiscardHandler))
	r := newRig(b, testPolicy)
	upEnd, _ := r.startUpstreamTCP(nil)
	c, _ := r.connectTCP(upEnd, httpDest)
	c.SetDeadline(time.Now().Add(time.Minute))
	br := bufio.NewReader(c)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if _, err := fmt.Fprintf(c, "GET /p%d HTTP/1.1\r\nHost: www.example.test\r\n\r\n", i%10); err != nil {
			b.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}

// BenchmarkCleartextConnections: new cleartext connections, one after
// another, each with one request whose answer the appliance ends by
// closing the connection: an HTTP/1.0 request answered chunked by the
// origin (unchunked, delimited by the close: http10.go), and an HTTP/1.1
// request with Connection: close. The client reads to the connection's
// end and closes: what a connection's end costs (clientend.go), with the
// client, the upstream and the rig's per-connection set-up in the
// numbers too.
func BenchmarkCleartextConnections(b *testing.B) {
	defer slog.SetDefault(slog.Default())
	slog.SetDefault(slog.New(slog.DiscardHandler))
	for _, tc := range []struct{ name, head string }{
		{"http/1.0", "GET /p%d HTTP/1.0\r\nHost: www.example.test\r\n\r\n"},
		{"http/1.1 close", "GET /p%d HTTP/1.1\r\nHost: www.example.test\r\nConnection: close\r\n\r\n"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			r := newRig(b, testPolicy)
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				upEnd, u := r.startUpstreamTCP(nil)
				u.chunked.Store(true)
				c, _ := r.connectTCP(upEnd, httpDest)
				c.SetDeadline(time.Now().Add(time.Minute))
				if _, err := fmt.Fprintf(c, tc.head, i%10); err != nil {
					b.Fatal(err)
				}
				got, err := io.ReadAll(c)
				if err != nil || !strings.HasPrefix(string(got), "HTTP/1.1 200 ") {
					b.Fatalf("%.40q, %v", got, err)
				}
				c.Close()
			}
		})
	}
}
