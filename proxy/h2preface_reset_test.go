package proxy

import (
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// TestBumpedH2PrefaceThenReset: bumped HTTP/2 clients that send the
// connection preface and reset at once. goproxy peeks the preface and
// hands the connection to x/net's server, which begins with
// c.RemoteAddr().String(): the stack's conn, reset, said nil there, and
// the panic, on goproxy's goroutine, which nothing recovers, ended the
// process (the first try, most runs). Each connection gets its tls record.
func TestBumpedH2PrefaceThenReset(t *testing.T) {
	r := newBumpStallRig(t, time.Hour, func(_ *bumpStallRig, w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "hello")
	}, "h2")
	for i := range 30 {
		rc, tc := r.dialRawTLS(t, "h2")
		if _, err := io.WriteString(tc, http2.ClientPreface); err != nil {
			t.Fatal(err)
		}
		rc.reset()
		port := uint16(rc.LocalAddr().(*net.TCPAddr).Port)
		found := false
		for end := time.Now().Add(5 * time.Second); !found && time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
			for _, rec := range r.sink.parse(t) {
				found = found || rec.Kind == "tls" && rec.ClientPort == port
			}
		}
		if !found {
			t.Fatalf("try %d: no tls record for the connection", i)
		}
	}
}
