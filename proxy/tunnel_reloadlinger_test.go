package proxy

import (
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// TestTunnelLingerReloadDenyRecordsAgree: a bumped WebSocket's client
// uploads 3000 KiB, its close_notify and FIN, and resets; the destination
// reads slowly, and the tunnel's upstream lingers. A reload that denies
// the tunnel 3 s in ends the linger: the tls record said the tail cut and
// the reload, the tunnel's the reload alone. The two records of a tunnel
// never disagree (docs/records.md).
func TestTunnelLingerReloadDenyRecordsAgree(t *testing.T) {
	const (
		size  = 3000 << 10
		bound = 20 * time.Second
	)
	defer intercept.SetTunnelLingerBound(bound)()
	ends := make(chan destEnd, 1)
	r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: time.Hour,
		handler: wsSteadyTalker(400*time.Millisecond, ends), destRcvBuf: 4096})
	rc := wsUploadWholeThenReset(t, r, size)
	time.Sleep(3 * time.Second) // into the linger: the reload's moment is the scenario
	r.p.cfg.Policy.Store(mustPolicy(t, "policy: {default: deny}\n"))
	tlsRec, tunRec := connRecords(t, r, rc, bound+5*time.Second, "the records")
	if tlsRec.Result != "denied" || tunRec.Result != "denied" || tlsRec.Error != tunRec.Error {
		t.Errorf("tls record %s %q, tunnel record %s %q; want both denied, the same error", tlsRec.Result, tlsRec.Error, tunRec.Result, tunRec.Error)
	}
}
