package proxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// A destination's half-close (its FIN, still reading) ended the WebSocket
// tunnel with the client's upload cut where goproxy's copy stood, and the
// destination was given a clean end (a plain FIN; over TLS a close_notify)
// of a stream the client had not ended, both records ok. The tunnel now
// relays it as a half-close: the client is told, and the destination gets
// all the client sends, then the end.

// wsReadOnAfterFIN answers a WebSocket upgrade, pings every 100 ms and,
// after finAfter, ends its sending side (over TLS a close_notify; a FIN
// either way) while reading on, slowly (4 KiB / 10 ms), to the end of the
// stream; it says how many bytes it read and how the stream ended.
func wsReadOnAfterFIN(finAfter time.Duration, ends chan<- destEnd) func(*bumpStallRig, http.ResponseWriter, *http.Request) {
	return func(_ *bumpStallRig, w http.ResponseWriter, _ *http.Request) {
		conn, bw := switchToWebSocket(w)
		if conn == nil {
			return
		}
		defer conn.Close()
		go func() {
			for range int(finAfter / (100 * time.Millisecond)) {
				time.Sleep(100 * time.Millisecond) // the pings' pace: the scenario
				if _, err := conn.Write(make([]byte, 100)); err != nil {
					break
				}
			}
			if tc, ok := conn.(interface{ CloseWrite() error }); ok {
				_ = tc.CloseWrite() // close_notify over TLS
			}
			if tc, ok := conn.(interface{ NetConn() net.Conn }); ok {
				if cw, ok := tc.NetConn().(interface{ CloseWrite() error }); ok {
					_ = cw.CloseWrite() // and the FIN
				}
			}
		}()
		_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		rd := bufio.NewReader(bw)
		buf := make([]byte, 4<<10)
		var n int64
		var err error
		for {
			var k int
			k, err = rd.Read(buf)
			n += int64(k)
			if err != nil {
				break
			}
			time.Sleep(10 * time.Millisecond) // a slow reader: the scenario
		}
		ends <- destEnd{n, err}
	}
}

// awaitDestEnd waits for the destination's read to end.
func awaitDestEnd(t *testing.T, ends <-chan destEnd, within time.Duration) destEnd {
	t.Helper()
	select {
	case got := <-ends:
		return got
	case <-time.After(within):
		t.Fatal("the destination's read did not end")
		return destEnd{}
	}
}

// TestTunnelDestinationHalfCloseBumpedClientGetsWholeUpload: the client
// uploads 3000 KiB over a bumped WebSocket, its close_notify and FIN, and
// reads on; the destination, reading slowly, ends its side first and reads
// on. It gets the whole upload and a clean end, and the records say ok.
func TestTunnelDestinationHalfCloseBumpedClientGetsWholeUpload(t *testing.T) {
	const size = 3000 << 10
	for _, finAfter := range []time.Duration{1500 * time.Millisecond, 300 * time.Millisecond} {
		t.Run(finAfter.String(), func(t *testing.T) {
			ends := make(chan destEnd, 1)
			r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: time.Hour,
				handler: wsReadOnAfterFIN(finAfter, ends), destRcvBuf: 4096})
			// Not wsUploadWhole: the destination's relayed end may come
			// before the client's FIN, and the client never sees
			// FIN-WAIT-2.
			rc, c := wsUpgradeAndUpload(t, r, size)
			_ = c.CloseWrite()
			if err := rc.halfClose(); err != nil {
				t.Fatal(err)
			}
			go io.Copy(io.Discard, c)
			got := awaitDestEnd(t, ends, 30*time.Second)
			tlsRec, tunRec := connRecords(t, r, rc, 25*time.Second, "records")
			wantWholeUpload(t, got, size)
			if tlsRec.Result != "ok" || tunRec.Result != "ok" {
				t.Errorf("records: tls %s %q, tunnel %s %q; want ok", tlsRec.Result, tlsRec.Error, tunRec.Result, tunRec.Error)
			}
		})
	}
}

// TestTunnelDestinationHalfCloseCleartextClientGetsWholeUpload is the
// same over cleartext, where the cut stream's end was a plain FIN.
func TestTunnelDestinationHalfCloseCleartextClientGetsWholeUpload(t *testing.T) {
	const size = 3000 << 10
	ends := make(chan destEnd, 1)
	r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: time.Hour,
		handler: func(*bumpStallRig, http.ResponseWriter, *http.Request) {}})
	dst := plainWSOrigin(t, r, 4096, wsReadOnAfterFIN(1500*time.Millisecond, ends))
	rc := wsClearUpload(t, r, dst, size)
	if err := rc.halfClose(); err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, rc)
	got := awaitDestEnd(t, ends, 30*time.Second)
	rec := clearTunnelRecord(t, r, rc)
	wantWholeUpload(t, got, size)
	if rec.Result != "ok" || rec.BytesOut != size {
		t.Errorf("record %s %q bytes_out %d; want ok, %d", rec.Result, rec.Error, rec.BytesOut, size)
	}
}

// clearTunnelRecord waits for the record of rc's cleartext tunnel.
func clearTunnelRecord(t *testing.T, r *bumpStallRig, rc *rawClient) (got recordOf) {
	t.Helper()
	port := uint16(rc.LocalAddr().(*net.TCPAddr).Port)
	waitUntil(t, 20*time.Second, func() bool {
		for _, rec := range r.sink.parse(t) {
			if rec.ClientPort == port && rec.Kind == "http" {
				got = recordOf{rec.Result, rec.Error, rec.BytesOut}
				return true
			}
		}
		return false
	}, "the tunnel's record")
	return got
}

// recordOf is what these tests look at in a record.
type recordOf struct {
	Result, Error string
	BytesOut      int64
}

// TestTunnelDestinationHalfCloseCleartextClientStillSending: the client
// goes on uploading after the destination's half-close, sees the tunnel's
// end of that direction (EOF), sends 512 KiB more, and ends its side. The
// destination, reading on, gets every byte, then the end.
func TestTunnelDestinationHalfCloseCleartextClientStillSending(t *testing.T) {
	ends := make(chan destEnd, 1)
	r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: time.Hour,
		handler: func(*bumpStallRig, http.ResponseWriter, *http.Request) {}})
	dst := plainWSOrigin(t, r, 4096, wsReadOnAfterFIN(time.Second, ends))
	rc := wsClearUpload(t, r, dst, 64<<10)
	sent := int64(64 << 10)
	var toldEnd atomic.Bool
	go func() {
		_, _ = io.Copy(io.Discard, rc) // the pings, then the relayed end
		toldEnd.Store(true)
	}()
	buf := make([]byte, 16<<10)
	// 16 KiB every 50 ms, less than the destination reads: the buffers
	// between stay short, and the copy busy as the half-close comes.
	ticker := time.NewTicker(50 * time.Millisecond)
	defer ticker.Stop()
	after := 0
	for i := 0; after < 32; i++ {
		if i == 400 { // 20 s: bounded
			t.Fatal("the client was never told the destination ended its side")
		}
		<-ticker.C // the upload's pace: the scenario
		rc.SetWriteDeadline(time.Now().Add(10 * time.Second))
		n, err := rc.Write(buf)
		sent += int64(n)
		if err != nil {
			t.Fatalf("the client's upload, after %d bytes: %v", sent, err)
		}
		if toldEnd.Load() {
			after++
		}
	}
	if err := rc.halfClose(); err != nil {
		t.Fatal(err)
	}
	got := awaitDestEnd(t, ends, 40*time.Second)
	rec := clearTunnelRecord(t, r, rc)
	wantWholeUpload(t, got, sent)
	if rec.Result != "ok" || rec.BytesOut != sent {
		t.Errorf("record %s %q bytes_out %d; want ok, %d", rec.Result, rec.Error, rec.BytesOut, sent)
	}
}

// TestTunnelDestinationHalfCloseBumpedClientBursts: the client sends 1000
// bytes every 50 ms (goproxy's copy idle between them), the destination
// half-closes 1 s in; once told, the client sends 10 bursts more and ends
// its side. The destination gets them all, then a clean end.
func TestTunnelDestinationHalfCloseBumpedClientBursts(t *testing.T) {
	ends := make(chan destEnd, 1)
	r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: time.Hour,
		handler: wsReadOnAfterFIN(time.Second, ends)})
	rc, c := wsUpgradeAndUpload(t, r, 16<<10)
	sent := int64(16 << 10)
	told := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, c) // the pings, then the relayed end
		close(told)
	}()
	ticker := time.NewTicker(50 * time.Millisecond)
	defer ticker.Stop()
	after := 0
	for i := 0; after < 10; i++ {
		if i == 400 { // 20 s: bounded
			t.Fatal("the client was never told the destination ended its side")
		}
		<-ticker.C // the bursts' pace: the scenario
		select {
		case <-told:
			after++
		default:
		}
		c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Write(make([]byte, 1000))
		sent += int64(n)
		if err != nil {
			t.Fatalf("the client's upload, after %d bytes: %v", sent, err)
		}
	}
	_ = c.CloseWrite()
	if err := rc.halfClose(); err != nil {
		t.Fatal(err)
	}
	got := awaitDestEnd(t, ends, 30*time.Second)
	tlsRec, tunRec := connRecords(t, r, rc, 20*time.Second, "records")
	wantWholeUpload(t, got, sent)
	if tlsRec.Result != "ok" || tunRec.Result != "ok" {
		t.Errorf("records: tls %s %q, tunnel %s %q; want ok", tlsRec.Result, tlsRec.Error, tunRec.Result, tunRec.Error)
	}
}

// TestTunnelDestinationHalfCloseClientNeverEndsIsReset: the client goes on
// sending in bursts after the destination's half-close and never ends its
// side. Past the bound the destination is reset, never given a clean end
// of a stream the client did not end, and both records say the upload was
// cut (timeout).
func TestTunnelDestinationHalfCloseClientNeverEndsIsReset(t *testing.T) {
	const bound = 2 * time.Second
	defer intercept.SetTunnelLingerBound(bound)()
	ends := make(chan destEnd, 1)
	r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: time.Hour,
		handler: wsReadOnAfterFIN(500*time.Millisecond, ends)})
	rc, c := wsUpgradeAndUpload(t, r, 16<<10)
	go io.Copy(io.Discard, c)
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for range 400 { // 20 s at most
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond): // the bursts' pace: the scenario
			}
			c.SetWriteDeadline(time.Now().Add(2 * time.Second))
			if _, err := c.Write(make([]byte, 1000)); err != nil {
				return
			}
		}
	}()
	got := awaitDestEnd(t, ends, bound+10*time.Second)
	close(stop)
	<-done
	if got.err == nil || got.err == io.EOF || errors.Is(got.err, io.ErrUnexpectedEOF) {
		t.Errorf("the destination's stream ended with %v after %d bytes, from a client that never ended its side; want a reset", got.err, got.n)
	} else if !errors.Is(got.err, syscall.ECONNRESET) {
		t.Logf("the destination's stream ended with %v", got.err)
	}
	tlsRec, tunRec := connRecords(t, r, rc, 20*time.Second, "records")
	for _, rec := range []struct {
		kind, result, err string
	}{{"tls", tlsRec.Result, tlsRec.Error}, {"tunnel", tunRec.Result, tunRec.Error}} {
		if rec.result != "timeout" || !strings.Contains(rec.err, "the client had not ended its own within the 2s bound") {
			t.Errorf("%s record %s %q; want timeout, the upload cut at the bound", rec.kind, rec.result, rec.err)
		}
	}
}

// wantWholeUpload checks that the destination read all the sent bytes of
// the client's upload, then its end.
func wantWholeUpload(t *testing.T, got destEnd, sent int64) {
	t.Helper()
	if got.n != sent || got.err != io.EOF {
		t.Errorf("the destination read %d of the %d bytes the client sent, ended by %v; want all, then EOF", got.n, sent, got.err)
	}
}
