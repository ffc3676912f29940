package proxy

import (
	"bufio"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// TestTunnelLingerHostTimeoutAtTheBoundIsTheBounds: a destination reads
// 256 KiB of a bumped WebSocket's upload and then nothing (its window
// closed); the client breaks after its FIN. The host's zero-window probes
// began before the linger, and the socket's user timeout, set to what was
// left of the bound, fired as the bound ran out: the records said
// `lingering: connection timed out`, a timeout of the destination's,
// where docs/records.md says the bound's, `the destination did not
// acknowledge all it was sent within the 2s bound (N bytes
// unacknowledged)`.
func TestTunnelLingerHostTimeoutAtTheBoundIsTheBounds(t *testing.T) {
	const (
		size  = 3000 << 10
		bound = 2 * time.Second
	)
	defer intercept.SetTunnelLingerBound(bound)()
	release := make(chan struct{})
	defer close(release)
	ends := make(chan destEnd, 1)
	r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: time.Hour,
		handler: wsPartReaderThenHeld(256<<10, release, ends), destRcvBuf: 4096})
	rc := wsUploadWholeThenReset(t, r, size)
	tlsRec, tunRec := connRecords(t, r, rc, bound+8*time.Second, "the records")
	t.Logf("tls %s %q; tunnel %s %q", tlsRec.Result, tlsRec.Error, tunRec.Result, tunRec.Error)
	for _, rec := range []struct{ kind, result, err string }{{"tls", tlsRec.Result, tlsRec.Error}, {"tunnel", tunRec.Result, tunRec.Error}} {
		if rec.result != "reset" || !strings.Contains(rec.err, "the destination did not acknowledge all it was sent within the 2s bound (") {
			t.Errorf("%s record %s %q; want reset, the destination did not acknowledge all it was sent within the 2s bound", rec.kind, rec.result, rec.err)
		}
	}
}

// wsPartReaderThenHeld answers a WebSocket upgrade, reads first bytes,
// then nothing until release; it says how many it read.
func wsPartReaderThenHeld(first int64, release <-chan struct{}, ends chan<- destEnd) func(*bumpStallRig, http.ResponseWriter, *http.Request) {
	return func(_ *bumpStallRig, w http.ResponseWriter, _ *http.Request) {
		conn, bw := switchToWebSocket(w)
		if conn == nil {
			return
		}
		defer conn.Close()
		n, err := io.CopyN(io.Discard, bufio.NewReaderSize(bw, 4096), first)
		<-release
		ends <- destEnd{n, err}
	}
}
