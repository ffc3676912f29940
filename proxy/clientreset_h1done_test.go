package proxy

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// h1DoneResetConns is how many connections the tests of a client that
// resets right after its whole response open: the reset races the end of
// the request (its record, goproxy's loop), and lost it in a few percent
// of them.
const h1DoneResetConns = 200

// TestBumpedH1ClientResetRightAfterResponseRecordsOK: an HTTP/1 client
// reads its whole response and resets at once (a socket closed with
// SO_LINGER 0, or with bytes unread), not waiting for the appliance's
// record as TestBumpedH1ClientResetAfterResponseTLSRecord does. The
// response's last byte was written: the request is over, and the reset
// comes between requests (docs/records.md). The request's record said ok,
// and the tls record said reset, "the client's connection broke", in a
// few percent of the connections: the request counted as under way until
// goproxy's loop closed its body and its record was written.
func TestBumpedH1ClientResetRightAfterResponseRecordsOK(t *testing.T) {
	bumpedH1ResetRightAfterResponse(t, false)
}

// TestBumpedH1ClientCloseThenResetRightAfterResponseRecordsOK is the same
// for a client that sends its close_notify and its FIN before the reset.
func TestBumpedH1ClientCloseThenResetRightAfterResponseRecordsOK(t *testing.T) {
	bumpedH1ResetRightAfterResponse(t, true)
}

func bumpedH1ResetRightAfterResponse(t *testing.T, fin bool) {
	r := newBumpStallRig(t, time.Hour, func(_ *bumpStallRig, w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "hello")
	}, "http/1.1")
	ports := make(map[uint16]bool, h1DoneResetConns)
	for i := range h1DoneResetConns {
		c := dialRaw(t, r.client, r.dest)
		ports[uint16(c.LocalAddr().(*net.TCPAddr).Port)] = true
		tc := tls.Client(c, &tls.Config{ServerName: "big.example", RootCAs: r.roots, NextProtos: []string{"http/1.1"}})
		if _, err := io.WriteString(tc, "GET /small HTTP/1.1\r\nHost: big.example\r\n\r\n"); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		if body, err := io.ReadAll(resp.Body); err != nil || string(body) != "hello" {
			t.Fatalf("connection %d: body %q, %v; want hello", i, body, err)
		}
		if fin {
			_ = tc.CloseWrite() // close_notify
			_ = c.halfClose()
		}
		c.reset()
	}
	byPort := map[uint16][]records.Record{}
	waitUntil(t, 15*time.Second, func() bool {
		clear(byPort)
		for _, rec := range r.sink.parse(t) {
			if ports[rec.ClientPort] {
				byPort[rec.ClientPort] = append(byPort[rec.ClientPort], rec)
			}
		}
		for p := range ports {
			if len(byPort[p]) < 2 {
				return false
			}
		}
		return true
	}, "every connection's tls and http records")
	bad := 0
	for p, recs := range byPort {
		for _, rec := range recs {
			if rec.Result != "ok" || rec.Error != "" {
				bad++
				t.Errorf("client port %d: the %s record of a connection whose client reset after its whole response says %s, %q, bytes_in %d; want ok",
					p, rec.Kind, rec.Result, rec.Error, rec.BytesIn)
			}
		}
	}
	if bad > 0 {
		t.Logf("%d records not ok, of %d connections", bad, h1DoneResetConns)
	}
}
