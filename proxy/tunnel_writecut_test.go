package proxy

import (
	"crypto/tls"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// wsDeafDest answers a WebSocket upgrade with 101 and reads nothing.
// Once talk is closed it ends its side (a close_notify and a FIN), when
// end is set; else it writes a few bytes towards the client every tick,
// until a write fails. It holds its connection until hold is closed.
func wsDeafDest(end bool, talk, hold <-chan struct{}) func(*bumpStallRig, http.ResponseWriter, *http.Request) {
	return func(_ *bumpStallRig, w http.ResponseWriter, _ *http.Request) {
		conn, _ := switchToWebSocket(w)
		if conn == nil {
			return
		}
		defer conn.Close()
		select {
		case <-talk:
		case <-hold:
			return
		}
		if end {
			if tc, ok := conn.(*tls.Conn); ok {
				_ = tc.CloseWrite()
			}
			<-hold
			return
		}
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for range 300 {
			if _, err := conn.Write(make([]byte, 100)); err != nil {
				return
			}
			select {
			case <-tick.C:
			case <-hold:
				return
			}
		}
	}
}

// TestTunnelBreakAfterFINWithUploadWriteBlockedEndsInLingerBound: a
// client uploads more over a bumped WebSocket than a destination that
// never reads can hold, so that the tunnel's copy towards it is blocked
// in a write; the appliance acknowledges the rest and the client's FIN,
// and the client resets. The destination then talks, which ends the
// tunnel (its copy towards the client fails), or ends its side. The
// tunnel's end waits no longer than the linger's bound for the
// destination: both records say reset, the upload's tail not delivered,
// and bytes_out does not count the upload whole. The tunnel's
// close_notify waited for the blocked write (tls's write lock), so
// neither the drain nor the linger began: only the write-stall timeout
// (an hour here) ended it, and the record said stalled.
func TestTunnelBreakAfterFINWithUploadWriteBlockedEndsInLingerBound(t *testing.T) {
	const (
		// More than the appliance's host socket takes from the tunnel
		// towards a destination that reads nothing (about 2.8 MiB on
		// loopback), little enough for its packet stack to take the rest
		// and the FIN (its receive buffer starts at 256 KiB).
		size  = 3000 << 10
		bound = 2 * time.Second
	)
	defer intercept.SetTunnelLingerBound(bound)()
	for _, tc := range []struct {
		name string
		end  bool
	}{{"destination talks", false}, {"destination ends its side", true}} {
		t.Run(tc.name, func(t *testing.T) {
			talk, hold := make(chan struct{}), make(chan struct{})
			defer close(hold)
			r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: time.Hour,
				handler: wsDeafDest(tc.end, talk, hold), destRcvBuf: 4096})
			rc := wsUploadWholeThenReset(t, r, size)
			if tc.end {
				// The tunnel ends on the destination's end, and lingers
				// only when the client's reset came first: no event
				// says it has.
				time.Sleep(500 * time.Millisecond)
			}
			close(talk)
			// The bound, the wait for the session's abort (breakAbortWait,
			// 1 s), and a margin; far short of the write-stall timeout.
			tlsRec, tunRec := connRecords(t, r, rc, bound+5*time.Second,
				"the records of the tunnel whose client broke after its FIN, its upload's write blocked")
			t.Logf("records: tls %s %q, tunnel %s %q bytes_out %d", tlsRec.Result, tlsRec.Error, tunRec.Result, tunRec.Error, tunRec.BytesOut)
			for _, rec := range []struct{ name, result, errTxt string }{
				{"tls", tlsRec.Result, tlsRec.Error}, {"tunnel", tunRec.Result, tunRec.Error}} {
				if rec.result != "reset" || !strings.Contains(rec.errTxt, "the upload's tail was not delivered") {
					t.Errorf("%s record %s (%q), want reset, the upload's tail not delivered", rec.name, rec.result, rec.errTxt)
				}
			}
			// The reset throws away what was written and not yet
			// acknowledged: the record says how much.
			if !strings.Contains(tunRec.Error, "bytes on the wire unacknowledged") && !strings.Contains(tunRec.Error, "bytes unacknowledged") {
				t.Errorf("tunnel record %q does not say how much of what was written the destination had not acknowledged", tunRec.Error)
			}
			// bytes_out counts what was written: short of the upload,
			// as the copy's write was blocked.
			if tunRec.BytesOut >= size {
				t.Errorf("tunnel bytes_out %d, want less than the %d-byte upload: a destination that read nothing never had it all", tunRec.BytesOut, size)
			}
		})
	}
}
