package proxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// After a WebSocket destination's half-close the tunnel waits for the
// client's upload to be passed on (relayDestinationEnd). A client that
// then ends its side and closes cleanly, while the appliance's write of
// its upload waits on a destination that reads nothing, was taken for a
// client that broke its connection (the clean close completing looks so
// on the packet path): the records said "the client's connection broke
// after its FIN", and the tunnel's end waited out its bound whatever the
// stacks did, outliving the drain by up to a minute.

// wsDeafAfterFIN answers the upgrade, ends its side after 200 ms (a FIN;
// over TLS a close_notify first), and reads nothing until release.
func wsDeafAfterFIN(release <-chan struct{}) func(*bumpStallRig, http.ResponseWriter, *http.Request) {
	return func(_ *bumpStallRig, w http.ResponseWriter, _ *http.Request) {
		conn, _ := switchToWebSocket(w)
		if conn == nil {
			return
		}
		defer conn.Close()
		time.Sleep(200 * time.Millisecond) // the scenario
		if tc, ok := conn.(interface{ CloseWrite() error }); ok {
			_ = tc.CloseWrite()
		}
		if tc, ok := conn.(interface{ NetConn() net.Conn }); ok {
			if cw, ok := tc.NetConn().(interface{ CloseWrite() error }); ok {
				_ = cw.CloseWrite()
			}
		}
		<-release
	}
}

// cleanClosedTunnel sets up that tunnel (bumped or cleartext) with a
// client that uploaded 3 MiB, ended its side, read the relayed end and
// closed, its close completed.
func cleanClosedTunnel(t *testing.T, bumped bool) (*bumpStallRig, *rawClient) {
	t.Helper()
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	var (
		r  *bumpStallRig
		rc *rawClient
	)
	if bumped {
		r = newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: time.Hour,
			handler: wsDeafAfterFIN(release), destRcvBuf: 4096})
		var c interface {
			io.Reader
			CloseWrite() error
		}
		rc, c = wsUpgradeAndUpload(t, r, 3<<20)
		_ = c.CloseWrite()
		if err := rc.halfClose(); err != nil {
			t.Fatal(err)
		}
		_, _ = io.ReadAll(c)
	} else {
		r = newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: time.Hour,
			handler: func(*bumpStallRig, http.ResponseWriter, *http.Request) {}})
		dst := plainWSOrigin(t, r, 4096, wsDeafAfterFIN(release))
		rc = wsClearUpload(t, r, dst, 3<<20)
		if err := rc.halfClose(); err != nil {
			t.Fatal(err)
		}
		_, _ = io.ReadAll(rc)
	}
	rc.Close()
	time.Sleep(500 * time.Millisecond) // the client's close completes
	return r, rc
}

// tunnelRecords waits, within, for the records of rc's connection: the
// tunnel's (http), and the connection's (tls) when bumped.
func tunnelRecords(t *testing.T, r *bumpStallRig, rc *rawClient, bumped bool, within time.Duration) []records.Record {
	t.Helper()
	port := uint16(rc.LocalAddr().(*net.TCPAddr).Port)
	want := 1
	if bumped {
		want = 2
	}
	var got []records.Record
	waitUntil(t, within, func() bool {
		got = got[:0]
		for _, rec := range r.sink.parse(t) {
			if rec.ClientPort == port && (rec.Kind == "http" || rec.Kind == "tls") {
				got = append(got, rec)
			}
		}
		return len(got) >= want
	}, "the tunnel's records")
	return got
}

// TestTunnelDestHalfCloseCleanClientStacksClose: the stacks' close ends
// that tunnel at once (the drain's wait is a few seconds), the
// destination reset, both records saying the shutdown ended it; at the
// default bound, the tunnel ended a minute after the stacks' close.
func TestTunnelDestHalfCloseCleanClientStacksClose(t *testing.T) {
	for _, bumped := range []bool{false, true} {
		t.Run(map[bool]string{false: "cleartext", true: "bumped"}[bumped], func(t *testing.T) {
			r, rc := cleanClosedTunnel(t, bumped)
			r.p.StacksClosing()
			r.ns.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			if err := r.p.Wait(ctx); err != nil {
				t.Fatalf("the tunnel still open 3 s after the stacks' close (bound %v)", intercept.TunnelLingerBound)
			}
			for _, rec := range tunnelRecords(t, r, rc, bumped, 5*time.Second) {
				t.Logf("%s record %s %q bytes_out %d", rec.Kind, rec.Result, rec.Error, rec.BytesOut)
				if rec.Result != "reset" || !strings.Contains(rec.Error, "ended by the appliance's shutdown (its packet stacks closed)") {
					t.Errorf("%s record %s %q; want reset, the shutdown", rec.Kind, rec.Result, rec.Error)
				}
				if strings.Contains(rec.Error, "broke") {
					t.Errorf("%s record %q says the client broke its connection; it closed cleanly", rec.Kind, rec.Error)
				}
			}
		})
	}
}

// TestTunnelDestHalfCloseCleanClientIsDestinationsDoing: with no
// shutdown, the records at the bound blame the destination, which took
// nothing more, not the client, which closed cleanly.
func TestTunnelDestHalfCloseCleanClientIsDestinationsDoing(t *testing.T) {
	defer intercept.SetTunnelLingerBound(3 * time.Second)()
	for _, bumped := range []bool{false, true} {
		t.Run(map[bool]string{false: "cleartext", true: "bumped"}[bumped], func(t *testing.T) {
			r, rc := cleanClosedTunnel(t, bumped)
			for _, rec := range tunnelRecords(t, r, rc, bumped, 15*time.Second) {
				t.Logf("%s record %s %q bytes_out %d", rec.Kind, rec.Result, rec.Error, rec.BytesOut)
				if rec.Result != "timeout" || !strings.Contains(rec.Error, "the destination ended its side, and took no more of the client's upload within the 3s bound") || strings.Contains(rec.Error, "broke") {
					t.Errorf("%s record %s %q; want timeout, the destination taking no more", rec.Kind, rec.Result, rec.Error)
				}
			}
		})
	}
}

// TestTunnelDestHalfCloseWaitFollowsStallTimeout: the wait for the
// client's end after the destination's half-close is bounded as the
// linger is, and follows the write-stall timeout as it shortens (memory
// short), as the linger does.
func TestTunnelDestHalfCloseWaitFollowsStallTimeout(t *testing.T) {
	ends := make(chan destEnd, 1)
	r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: time.Hour,
		handler: wsReadOnAfterFIN(300*time.Millisecond, ends)})
	rc, c := wsUpgradeAndUpload(t, r, 16<<10)
	told := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, c); close(told) }()
	select {
	case <-told:
	case <-time.After(10 * time.Second):
		t.Fatal("client never told of the destination's end")
	}
	r.p.SetWriteStallTimeout(time.Second)
	at := time.Now()
	tlsRec, tunRec := connRecords(t, r, rc, 20*time.Second, "records")
	took := time.Since(at)
	for _, rec := range []*records.Record{tlsRec, tunRec} {
		if rec.Result != "timeout" || !strings.Contains(rec.Error, "the client had not ended its own within the 1s bound") {
			t.Errorf("%s record %s %q; want timeout at the 1s bound", rec.Kind, rec.Result, rec.Error)
		}
	}
	if took > 5*time.Second {
		t.Errorf("records %v after the write-stall timeout became 1 s", took.Round(100*time.Millisecond))
	}
}
