package proxy

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// A bumped WebSocket tunnel whose destination resets its connection while
// the appliance is still writing the client's upload to it: the write
// that fails is the destination's doing, and the tunnel's result (reset),
// however the read from it then ends (the reset taken by the write, the
// read sees only the tunnel's own close). It was recorded ok in 3 to 8
// tries of 10: goproxy ended the tunnel on the failed write, and the
// pending read, cut by the tunnel's close, looked like a clean end.
func TestBumpedWebSocketDestinationResetDuringUploadRecordsReset(t *testing.T) {
	const tries = 10
	for _, tc := range []struct {
		fin         bool  // the client half-closes after its upload
		upload      int64 // the client's upload
		read, write int64 // what the destination reads, then writes, before its reset
	}{
		{false, 184731, 1000, 0}, {true, 184731, 1000, 0}, {true, 184731, 92365, 26876},
		{false, 184731, 92365, 26876}, {true, 184731, 1000, 26876},
		// All of it written into the sockets before the reset, which
		// then meets the tunnel's end (its close_notify) or the read.
		{true, 141913, 70956, 8315}, {true, 99604, 49802, 0},
	} {
		upload := tc.upload
		t.Run(fmt.Sprintf("clientFIN=%v,upload=%d,destRead=%d,destWrote=%d", tc.fin, upload, tc.read, tc.write), func(t *testing.T) {
			destRead := make(chan int64, 1)
			r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: 5 * time.Second,
				handler: func(_ *bumpStallRig, w http.ResponseWriter, _ *http.Request) {
					conn, brw := switchToWebSocket(w)
					if conn == nil {
						return
					}
					n, _ := io.CopyN(io.Discard, brw, tc.read)
					destRead <- n
					conn.Write(make([]byte, tc.write))
					resetConn(conn)
				}})
			for i := range tries {
				rc, c, br := dialWebSocket(t, r)
				wrote := make(chan struct{})
				go func() {
					defer close(wrote)
					if _, err := c.Write(make([]byte, upload)); err == nil && tc.fin {
						c.CloseWrite()
						rc.halfClose()
					}
				}()
				io.Copy(io.Discard, br)
				read := <-destRead
				tlsRec, tunRec := connRecords(t, r, rc, 10*time.Second, "the tunnel's records")
				if tunRec.Result != "reset" || !strings.HasPrefix(tunRec.Error, "WebSocket tunnel ") || !strings.Contains(tunRec.Error, "the destination, after ") {
					t.Errorf("try %d: the destination reset the tunnel; its record says %s %q", i, tunRec.Result, tunRec.Error)
				}
				if tunRec.BytesOut < read || tunRec.BytesOut > upload {
					t.Errorf("try %d: bytes_out %d, the destination read %d of the %d-byte upload", i, tunRec.BytesOut, read, upload)
				}
				// The connection's record is the client's side: a
				// destination's failure is its request's (docs/records.md,
				// result), however the tunnel learnt of it.
				if tlsRec.Result != "ok" || tlsRec.Error != "" {
					t.Errorf("try %d: the tls record says %s %q, the tunnel's %s %q", i, tlsRec.Result, tlsRec.Error, tunRec.Result, tunRec.Error)
				}
				<-wrote // its write ends with the connection, within rc's deadline
			}
		})
	}
}

// resetConn resets c, a destination's connection (TLS or not), with a
// RST: a zero linger.
func resetConn(c net.Conn) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	c.Close()
}
