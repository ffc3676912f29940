package proxy

import (
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// TestTunnelLingerTimeoutNamesTheWholeBound: a client uploads 3000 KiB
// over a bumped WebSocket, then its close_notify and FIN, and resets; the
// destination reads steadily but too slowly (about 400 KB/s: some 7.5 s)
// for a 3 s bound. The tunnel's end waits for the upload's copy (the
// part of the bound that took), then lingers for what is left of it, and
// resets the destination with the tail unacknowledged. The record names
// the bound the tunnel waited, 3 s, not what was left of it
// for the linger ("did not acknowledge all it was sent in 879ms"), which
// read as if the appliance had given up within a second.
func TestTunnelLingerTimeoutNamesTheWholeBound(t *testing.T) {
	const (
		size  = 3000 << 10
		bound = 3 * time.Second
	)
	defer intercept.SetTunnelLingerBound(bound)()
	ends := make(chan destEnd, 1)
	r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: time.Hour,
		handler: wsSteadyTalker(400*time.Millisecond, ends), destRcvBuf: 4096})
	rc := wsUploadWholeThenReset(t, r, size)
	tlsRec, tunRec := connRecords(t, r, rc, bound+5*time.Second, "the records of the tunnel whose destination was too slow for the linger's bound")
	t.Logf("records: tls %s %q, tunnel %s %q bytes_out %d", tlsRec.Result, tlsRec.Error, tunRec.Result, tunRec.Error, tunRec.BytesOut)
	const want = "the destination did not acknowledge all it was sent within the 3s bound ("
	for _, rec := range []struct{ name, result, errTxt string }{
		{"tls", tlsRec.Result, tlsRec.Error}, {"tunnel", tunRec.Result, tunRec.Error}} {
		if rec.result != "reset" || !strings.Contains(rec.errTxt, "the upload's tail was not delivered: "+want) ||
			!strings.Contains(rec.errTxt, " bytes unacknowledged)") {
			t.Errorf("%s record %s (%q), want reset, the upload's tail not delivered: %s… bytes unacknowledged)", rec.name, rec.result, rec.errTxt, want)
		}
	}
	select {
	case got := <-ends:
		if got.n >= size {
			t.Errorf("the destination read all %d bytes, yet the record says the tail was not delivered", got.n)
		}
	case <-time.After(5 * time.Second):
		t.Error("the destination's read did not end after the reset")
	}
}
