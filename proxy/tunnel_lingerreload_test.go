package proxy

import (
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// TestBumpedWebSocketReloadDenyEndsLingerAfterCopiesEnded: a tunnel's
// destination talks once after the client's break (goproxy's copy towards
// the broken client fails and ends), then again after a deny-all reload,
// while the upstream lingers with the upload's tail. The reload's deny
// ends the linger: both records say denied, and the tail goes no further
// to the denied destination. Nothing checked the reload any more: both
// records said ok, and the destination got the whole upload.
func TestBumpedWebSocketReloadDenyEndsLingerAfterCopiesEnded(t *testing.T) {
	const size = 256 << 10
	defer intercept.SetTunnelLingerBound(20 * time.Second)()
	talk, early := make(chan struct{}), make(chan struct{})
	release := make(chan struct{})
	ends := make(chan destEnd, 1)
	handler := func(_ *bumpStallRig, w http.ResponseWriter, _ *http.Request) {
		conn, bw := switchToWebSocket(w)
		if conn == nil {
			return
		}
		defer conn.Close()
		go func() {
			<-early
			_, _ = conn.Write([]byte("early\n"))
			<-talk
			for k := 0; k < 50; k++ {
				if _, err := conn.Write([]byte("tick\n")); err != nil {
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		}()
		<-release
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := io.Copy(io.Discard, bw)
		ends <- destEnd{n, err}
	}
	r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: time.Hour, handler: handler, destRcvBuf: 4096})
	rc := wsUploadWhole(t, r, size)
	rc.reset()
	time.Sleep(300 * time.Millisecond)
	close(early)
	time.Sleep(500 * time.Millisecond) // lingering
	denyAll(t, r.p)
	close(talk)
	start := time.Now()
	time.Sleep(time.Second)
	close(release) // the destination reads from 1 s after the reload on
	tlsRec, tunRec := connRecords(t, r, rc, 20*time.Second, "the records of the tunnel")
	t.Logf("records %v after the reload", time.Since(start))
	left := socketsTo(t, r.dest.Port())
	var got destEnd
	select {
	case got = <-ends:
	case <-time.After(12 * time.Second):
	}
	t.Logf("tls %s action=%s out=%d %q", tlsRec.Result, tlsRec.Action, tlsRec.BytesOut, tlsRec.Error)
	t.Logf("tunnel %s action=%s out=%d %q", tunRec.Result, tunRec.Action, tunRec.BytesOut, tunRec.Error)
	t.Logf("sockets to the destination at the records: %d; the destination then read %d (%v)", left, got.n, got.err)
	if tlsRec.Result != "denied" || tunRec.Result != "denied" {
		t.Errorf("records %s/%s, want denied", tlsRec.Result, tunRec.Result)
	}
	if got.n >= size {
		t.Errorf("the destination got the whole upload after the reload denied the tunnel")
	}
	_ = net.IPv4len
}
