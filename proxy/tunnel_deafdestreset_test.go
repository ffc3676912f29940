package proxy

import (
	"crypto/tls"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// wsDeafThenResets answers a WebSocket upgrade, reads nothing (pinging the
// client every 100 ms when talk), and resets its connection (SO_LINGER 0)
// after wait; it says so on ends.
func wsDeafThenResets(wait time.Duration, talk bool, ends chan<- struct{}) func(*bumpStallRig, http.ResponseWriter, *http.Request) {
	return func(_ *bumpStallRig, w http.ResponseWriter, _ *http.Request) {
		conn, _ := switchToWebSocket(w)
		if conn == nil {
			return
		}
		for end := time.Now().Add(wait); time.Now().Before(end); {
			time.Sleep(100 * time.Millisecond) // the pings' pace: the scenario
			if talk {
				if _, err := conn.Write(make([]byte, 100)); err != nil {
					break
				}
			}
		}
		if tc, ok := conn.(*tls.Conn); ok {
			if tcpc, ok := tc.NetConn().(*net.TCPConn); ok {
				_ = tcpc.SetLinger(0)
			}
		}
		conn.Close()
		close(ends)
	}
}

// TestTunnelBreakAfterFINDeafDestinationResetIsNamed: the client uploads
// 3000 KiB over a bumped WebSocket, its close_notify and FIN, and resets;
// the destination reads nothing, so goproxy's write of the upload waits on
// it, and resets 3 s in. The write took the reset, and the read after it
// a plain end: the records said the connection ended "its error read
// elsewhere", where they name the destination's reset.
func TestTunnelBreakAfterFINDeafDestinationResetIsNamed(t *testing.T) {
	const size = 3000 << 10
	defer intercept.SetTunnelLingerBound(20 * time.Second)()
	for _, talk := range []bool{false, true} {
		t.Run(map[bool]string{false: "silent", true: "talks"}[talk], func(t *testing.T) {
			ends := make(chan struct{})
			r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: time.Hour,
				handler: wsDeafThenResets(3*time.Second, talk, ends), destRcvBuf: 4096})
			rc := wsUploadWholeThenReset(t, r, size)
			select {
			case <-ends:
			case <-time.After(20 * time.Second):
				t.Fatal("the destination did not reset")
			}
			tlsRec, tunRec := connRecords(t, r, rc, 10*time.Second, "the records")
			for _, rec := range []struct{ kind, result, err string }{{"tls", tlsRec.Result, tlsRec.Error}, {"tunnel", tunRec.Result, tunRec.Error}} {
				if rec.result != "reset" || !strings.Contains(rec.err, "the destination reset its connection with ") ||
					!strings.Contains(rec.err, " bytes of the upload unacknowledged") {
					t.Errorf("%s record %s %q; want reset, the destination reset its connection with N bytes of the upload unacknowledged", rec.kind, rec.result, rec.err)
				}
			}
		})
	}
}
