package proxy

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// A reload denies a bumped WebSocket tunnel whose client then sends
// nothing: only the destination's bytes (and maybe its end) come after
// it. Their read is the only place the reload is checked, and none of
// them may reach the client: the tunnel ends, both records say denied,
// and bytes_in counts what was relayed before the reload. (With the
// destination direction's check unwired, the client got the 500 bytes and
// the tunnel ran on for 20 s under deny-all, recorded timeout: review
// r2s27 F1.)
func TestBumpedWebSocketReloadDeniesDestinationBytes(t *testing.T) {
	for _, mode := range []string{"data", "data+close_notify", "data+RST"} {
		t.Run(mode, func(t *testing.T) {
			sendNow := make(chan struct{})
			r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: 30 * time.Second,
				handler: func(_ *bumpStallRig, w http.ResponseWriter, _ *http.Request) {
					conn, _ := switchToWebSocket(w)
					if conn == nil {
						return
					}
					defer conn.Close()
					_, _ = conn.Write(make([]byte, 1000))
					<-sendNow
					tc := conn.(*tls.Conn)
					raw := tc.NetConn().(*net.TCPConn)
					_, _ = conn.Write(make([]byte, 500))
					switch mode {
					case "data+close_notify":
						_ = tc.CloseWrite()
						_ = raw.CloseWrite()
					case "data+RST":
						_ = raw.SetLinger(0)
						raw.Close()
						return
					}
					time.Sleep(10 * time.Second) // the tunnel must end before this
				}})
			rc, _, br := dialWebSocket(t, r)
			rc.SetDeadline(time.Now().Add(30 * time.Second))
			if _, err := io.ReadFull(br, make([]byte, 1000)); err != nil {
				t.Fatal(err)
			}
			r.p.cfg.Policy.Store(mustPolicy(t, "policy: {default: deny}\n"))
			start := time.Now()
			close(sendNow)
			n, _ := io.Copy(io.Discard, br)
			if n != 0 {
				t.Errorf("the client got %d of the destination's bytes sent after the reload that denied the tunnel", n)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("the tunnel ended %v after the reload denied it and its destination sent", d.Round(time.Millisecond))
			}
			tlsRec, tunRec := connRecords(t, r, rc, 25*time.Second, "the tunnel's records")
			for _, rec := range []struct {
				name, result, err string
			}{{"tunnel", tunRec.Result, tunRec.Error}, {"tls", tlsRec.Result, tlsRec.Error}} {
				if rec.result != "denied" || !strings.Contains(rec.err, "ended by a policy reload") {
					t.Errorf("the %s record says %s %q, want denied, ended by a policy reload", rec.name, rec.result, rec.err)
				}
			}
			if tunRec.BytesIn != 1000 {
				t.Errorf("bytes_in %d, want the 1000 bytes relayed before the reload", tunRec.BytesIn)
			}
		})
	}
}
