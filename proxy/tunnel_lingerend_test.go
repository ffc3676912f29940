package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// wsUploadWholeThenReset opens a bumped WebSocket tunnel through r,
// uploads size bytes, its close_notify and its FIN, waits until the
// appliance has acknowledged all of it, and resets: a client whose upload
// was whole when it broke.
func wsUploadWholeThenReset(t *testing.T, r *bumpStallRig, size int) *rawClient {
	t.Helper()
	rc := wsUploadWhole(t, r, size)
	rc.reset()
	return rc
}

// wsUploadWhole is wsUploadWholeThenReset without the reset.
func wsUploadWhole(t *testing.T, r *bumpStallRig, size int) *rawClient {
	t.Helper()
	rc, c := wsUpgradeAndUpload(t, r, size)
	_ = c.CloseWrite()
	if err := rc.halfClose(); err != nil {
		t.Fatal(err)
	}
	waitFINAcknowledged(t, rc)
	return rc
}

// wsUpgradeAndUpload opens a bumped WebSocket tunnel through r and
// uploads size bytes through it; it returns the client's connection and
// its TLS.
func wsUpgradeAndUpload(t *testing.T, r *bumpStallRig, size int) (*rawClient, *tls.Conn) {
	t.Helper()
	rc := dialRaw(t, r.client, r.dest)
	rc.SetDeadline(time.Now().Add(30 * time.Second))
	c := tls.Client(rc, &tls.Config{ServerName: "big.example", RootCAs: r.roots, NextProtos: []string{"http/1.1"}})
	if _, err := io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: big.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("the upgrade: %v; want 101", err)
	}
	if _, err := c.Write(make([]byte, size)); err != nil {
		t.Fatal(err)
	}
	return rc, c
}

// waitFINAcknowledged waits until the appliance has acknowledged all rc
// sent and its FIN (the client in FIN-WAIT-2).
func waitFINAcknowledged(t *testing.T, rc *rawClient) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); tcp.EndpointState(rc.ep.State()) != tcp.StateFinWait2; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("the appliance did not take the whole upload and its FIN (client state %v)", tcp.EndpointState(rc.ep.State()))
		}
	}
}

// wsReadAllThenReset answers a WebSocket upgrade, reads nothing for wait,
// then reads to the end of the stream, says how many bytes it read, and
// resets (SO_LINGER 0, as some servers close).
func wsReadAllThenReset(wait time.Duration, ends chan<- destEnd) func(*bumpStallRig, http.ResponseWriter, *http.Request) {
	return func(_ *bumpStallRig, w http.ResponseWriter, _ *http.Request) {
		conn, bw := switchToWebSocket(w)
		if conn == nil {
			return
		}
		defer conn.Close()
		time.Sleep(wait) // a slow reader: the scenario, not a wait for an event
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := io.Copy(io.Discard, bw)
		if tc, ok := conn.(*tls.Conn); ok {
			if tcpc, ok := tc.NetConn().(*net.TCPConn); ok {
				_ = tcpc.SetLinger(0)
			}
		}
		ends <- destEnd{n, err}
	}
}

// TestBumpedWebSocketDestinationResetAfterWholeUploadNotCut: a client
// uploads over a bumped WebSocket, sends its close_notify and FIN, and
// resets; the destination, slow, reads it all and the end of the stream
// while the tunnel's upstream lingers, then resets. It had the whole
// upload: neither record says the tail was not delivered. The linger
// took the count of a look before the destination's reset for what was
// left.
func TestBumpedWebSocketDestinationResetAfterWholeUploadNotCut(t *testing.T) {
	const size = 256 << 10
	ends := make(chan destEnd, 1)
	r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: time.Hour,
		handler: wsReadAllThenReset(800*time.Millisecond, ends), destRcvBuf: 4096})
	for i := range 3 {
		rc := wsUploadWholeThenReset(t, r, size)
		var got destEnd
		select {
		case got = <-ends:
		case <-time.After(15 * time.Second):
			t.Fatal("the destination's read did not end")
		}
		tlsRec, tunRec := connRecords(t, r, rc, 10*time.Second, "the records of the tunnel")
		if got.n != size || got.err != nil {
			t.Fatalf("tunnel %d: the destination read %d of %d bytes, ended by %v", i, got.n, size, got.err)
		}
		for _, rec := range []struct{ name, result, errTxt string }{
			{"tls", tlsRec.Result, tlsRec.Error}, {"tunnel", tunRec.Result, tunRec.Error}} {
			if strings.Contains(rec.errTxt, "not delivered") {
				t.Errorf("tunnel %d: the destination read all and the end, but the %s record says %s, %q", i, rec.name, rec.result, rec.errTxt)
			}
		}
	}
}

// TestShutdownEndsTunnelLingerUnderWay: the stacks close (the drain's
// end) while a WebSocket tunnel whose client broke after its FIN lingers
// towards a destination that reads nothing: the linger ends, and the
// session's records are written within the drain's wait, saying the tail
// was not delivered. The linger outlived the stacks by its whole bound
// (60 s), and the drain lost the records.
func TestShutdownEndsTunnelLingerUnderWay(t *testing.T) {
	const size = 256 << 10
	release := make(chan struct{})
	defer close(release)
	ends := make(chan destEnd, 1)
	r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: time.Hour,
		handler: wsSlowReader(release, ends), destRcvBuf: 4096})
	rc := wsUploadWholeThenReset(t, r, size)
	time.Sleep(500 * time.Millisecond) // the reset taken, the linger begun: no event says so
	r.p.StacksClosing()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := r.p.Wait(ctx); err != nil {
		t.Fatalf("the session still open 3 s after the stacks closed (tunnel linger bound %v): its records would be lost at shutdown", intercept.TunnelLingerBound)
	}
	tlsRec, tunRec := connRecords(t, r, rc, time.Second, "the records of the tunnel")
	for _, rec := range []struct{ name, result, errTxt string }{
		{"tls", tlsRec.Result, tlsRec.Error}, {"tunnel", tunRec.Result, tunRec.Error}} {
		if rec.result != "reset" || !strings.Contains(rec.errTxt, "tail was not delivered") || !strings.Contains(rec.errTxt, "shutdown") {
			t.Errorf("%s record %s (%q), want reset, the tail not delivered for the shutdown", rec.name, rec.result, rec.errTxt)
		}
	}
}

// TestTunnelLingerFollowsShortenedStallTimeout: a WebSocket tunnel whose
// client broke after its FIN lingers towards a destination that reads
// nothing for TunnelLingerBound (60 s), or the write-stall timeout in
// force when shorter: one shortened meanwhile (as memory turning short
// does) ends the linger under way by it, and the records say the tail was
// not delivered. The tunnel kept its 60 s while every stalled write was
// cut at 10 s.
func TestTunnelLingerFollowsShortenedStallTimeout(t *testing.T) {
	const size = 256 << 10
	release := make(chan struct{})
	defer close(release)
	ends := make(chan destEnd, 1)
	r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: time.Hour,
		handler: wsSlowReader(release, ends), destRcvBuf: 4096})
	rc := wsUploadWholeThenReset(t, r, size)
	time.Sleep(500 * time.Millisecond) // the reset taken, the linger begun: no event says so
	r.p.SetWriteStallTimeout(time.Second)
	tlsRec, tunRec := connRecords(t, r, rc, 8*time.Second, "the records of the tunnel, 8 s after the write-stall timeout became 1 s")
	for _, rec := range []struct{ name, result, errTxt string }{
		{"tls", tlsRec.Result, tlsRec.Error}, {"tunnel", tunRec.Result, tunRec.Error}} {
		if rec.result != "reset" || !strings.Contains(rec.errTxt, "tail was not delivered") {
			t.Errorf("%s record %s (%q), want reset, the tail not delivered", rec.name, rec.result, rec.errTxt)
		}
	}
}
