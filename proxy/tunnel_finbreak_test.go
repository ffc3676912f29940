package proxy

import (
	"io"
	"net"
	"net/http"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// destListener listens on loopback; rcvBuf, when not 0, is its
// connections' SO_RCVBUF (set before listen, so that they inherit it).
func destListener(t *testing.T, rcvBuf int) net.Listener {
	t.Helper()
	if rcvBuf == 0 {
		return clsMust(net.Listen("tcp4", "127.0.0.1:0"))(t)
	}
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvBuf); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 8); err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "listener")
	defer f.Close()
	return clsMust(net.FileListener(f))(t)
}

// wsSlowReader answers a WebSocket upgrade with 101, then reads nothing
// until release is closed, and then reads the tunnel to its end, saying
// on ends how many bytes it got and how the stream ended.
func wsSlowReader(release <-chan struct{}, ends chan<- destEnd) func(*bumpStallRig, http.ResponseWriter, *http.Request) {
	return wsSlowReaderHeld(release, ends, nil)
}

// wsSlowReaderHeld is wsSlowReader whose connection, once read to its end,
// stays open until hold is closed (nil: not at all): the destination ends
// no tunnel.
func wsSlowReaderHeld(release <-chan struct{}, ends chan<- destEnd, hold <-chan struct{}) func(*bumpStallRig, http.ResponseWriter, *http.Request) {
	return func(_ *bumpStallRig, w http.ResponseWriter, _ *http.Request) {
		conn, bw := switchToWebSocket(w)
		if conn == nil {
			return
		}
		defer conn.Close()
		<-release
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := io.Copy(io.Discard, bw)
		ends <- destEnd{n, err}
		if hold != nil {
			<-hold
		}
	}
}

// TestBumpedWebSocketUploadSurvivesClientBreakAfterFIN: a client sends
// the last of its WebSocket tunnel and its FIN, all of it acknowledged by
// the appliance, and then resets or vanishes while the destination, slower
// than the client, still has the tail to read. The client had ended its
// side whole: the destination gets every byte and the end of the stream,
// as it would without the appliance, and both records say what
// docs/records.md says (ok for a reset after the FIN, timeout for a
// vanishing). The client watch's Abort reset the destination (a zero
// linger), which threw away the tail the host socket still held.
func TestBumpedWebSocketUploadSurvivesClientBreakAfterFIN(t *testing.T) {
	for _, tc := range []struct {
		name   string
		reset  bool
		fin    bool
		result string
	}{
		{"vanish", false, true, "timeout"},
		{"reset", true, true, "ok"},
		// A tunnel cut short: the destination is reset, never told
		// the end of the stream.
		{"vanish before FIN", false, false, "timeout"},
		{"reset before FIN", true, false, "reset"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const size = tunnelUploadSize
			release := make(chan struct{})
			ends := make(chan destEnd, 1)
			hold := make(chan struct{}) // the destination ends nothing: the client's break does
			defer close(hold)
			released := false
			defer func() {
				if !released {
					close(release)
				}
			}()
			r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: time.Hour,
				handler: wsSlowReaderHeld(release, ends, hold), destRcvBuf: 4096,
				tcp: netstack.TCPOptions{KeepaliveIdle: 300 * time.Millisecond, KeepaliveInterval: 200 * time.Millisecond, KeepaliveCount: 2}})
			rc, c := wsUpgradeAndUpload(t, r, size)
			if tc.fin {
				_ = c.CloseWrite() // close_notify
				if err := rc.halfClose(); err != nil {
					t.Fatal(err)
				}
				waitFINAcknowledged(t, rc) // the upload and its FIN acknowledged by the appliance
			}
			if tc.reset {
				rc.reset()
			} else {
				r.client.SetTap(func([]byte) bool { return true }) // the client is gone
			}
			// The destination reads from now on. The session ends once it
			// has seen the break; after the FIN, once the destination has
			// taken the tail and the end (the upstream lingers till then).
			close(release)
			released = true
			var got destEnd
			select {
			case got = <-ends:
			case <-time.After(15 * time.Second):
				t.Fatal("the destination's read did not end")
			}
			tlsRec, tunRec := connRecords(t, r, rc, 10*time.Second, "the records of the tunnel whose client broke")
			t.Logf("destination got %d of %d bytes, ended by %v; records: tls %s %q, tunnel %s %q bytes_out %d",
				got.n, size, got.err, tlsRec.Result, tlsRec.Error, tunRec.Result, tunRec.Error, tunRec.BytesOut)
			switch {
			case !tc.fin:
				if got.err == nil {
					t.Errorf("the destination read the end of a tunnel its client cut short (%d bytes); want a reset", got.n)
				}
			case got.n != size || got.err != nil:
				t.Errorf("the destination got %d of the %d bytes the client sent before its FIN, ended by %v; want all and the end of the stream",
					got.n, size, got.err)
			}
			if tlsRec.Result != tc.result || tunRec.Result != tc.result {
				t.Errorf("records: tls %s (%q), tunnel %s (%q); want both %s", tlsRec.Result, tlsRec.Error, tunRec.Result, tunRec.Error, tc.result)
			}
		})
	}
}

// tunnelUploadSize is what the client of
// TestBumpedWebSocketUploadSurvivesClientBreakAfterFIN sends: more than
// the destination's receive buffer holds, little enough for the
// appliance's host socket to take the rest (its send buffer starts at
// 16 KiB), so that the tunnel's copy has it all written when the client
// breaks.
const tunnelUploadSize = 8 << 10
