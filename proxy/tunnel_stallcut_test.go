package proxy

import (
	"strings"
	"testing"
	"time"
)

// TestTunnelBreakAfterFINStallWhileUploadBlockedIsTailCut: a bumped
// WebSocket's client uploads more than a deaf destination takes, its
// close_notify and FIN, and resets: goproxy's write of the upload is
// blocked. Memory turns short (the write-stall timeout becomes 1 s), and
// the session's stall watch ends it. Its records said `stalled`, where the
// same tunnel with its write not blocked (the linger's bound, shortened)
// says `reset`, the client's break after its FIN and the upload's tail not
// delivered: both now say the latter.
func TestTunnelBreakAfterFINStallWhileUploadBlockedIsTailCut(t *testing.T) {
	for _, talk := range []bool{false, true} {
		t.Run(map[bool]string{false: "silent", true: "talks"}[talk], func(t *testing.T) {
			talkCh, hold := make(chan struct{}), make(chan struct{})
			defer close(hold)
			if talk {
				close(talkCh)
			}
			r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: time.Hour,
				handler: wsDeafDest(false, talkCh, hold), destRcvBuf: 4096})
			rc := wsUploadWholeThenReset(t, r, 3000<<10)
			// After the break, whose bound of the write (60 s) is taken
			// then: memory turning short later is the scenario.
			time.Sleep(500 * time.Millisecond)
			r.p.SetWriteStallTimeout(time.Second)
			tlsRec, tunRec := connRecords(t, r, rc, 10*time.Second, "the records")
			t.Logf("tls %s %q; tunnel %s %q", tlsRec.Result, tlsRec.Error, tunRec.Result, tunRec.Error)
			for _, rec := range []struct{ kind, result, err string }{{"tls", tlsRec.Result, tlsRec.Error}, {"tunnel", tunRec.Result, tunRec.Error}} {
				if rec.result != "reset" || !strings.Contains(rec.err, "the client's connection broke after its FIN, and the upload's tail was not delivered: ") {
					t.Errorf("%s record %s %q; want reset, the upload's tail not delivered", rec.kind, rec.result, rec.err)
				}
			}
		})
	}
}
