package proxy

import (
	"bufio"
	"net/http"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// wsSteadyTalker answers a WebSocket upgrade, then reads the upload
// slowly but steadily (4 KiB per 10 ms after a 300 ms pause: about
// 400 KB/s), and from talkAfter on writes 100 bytes towards the client
// every 100 ms, as a server's pings, until the read ends or a write
// fails. It says how much it read, and how its read ended.
func wsSteadyTalker(talkAfter time.Duration, ends chan<- destEnd) func(*bumpStallRig, http.ResponseWriter, *http.Request) {
	return func(_ *bumpStallRig, w http.ResponseWriter, _ *http.Request) {
		conn, bw := switchToWebSocket(w)
		if conn == nil {
			return
		}
		defer conn.Close()
		done := make(chan struct{})
		talked := make(chan struct{})
		go func() {
			defer close(talked)
			t := time.NewTimer(talkAfter)
			defer t.Stop()
			select {
			case <-done:
				return
			case <-t.C:
			}
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for range 300 {
				if _, err := conn.Write(make([]byte, 100)); err != nil {
					return
				}
				select {
				case <-done:
					return
				case <-tick.C:
				}
			}
		}()
		time.Sleep(300 * time.Millisecond) // the destination's pace, not a wait for an event
		_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		var (
			n   int64
			err error
		)
		rd := bufio.NewReader(bw)
		buf := make([]byte, 4<<10)
		for {
			var k int
			k, err = rd.Read(buf)
			n += int64(k)
			if err != nil {
				break
			}
			time.Sleep(10 * time.Millisecond) // the pace
		}
		close(done)
		<-talked
		ends <- destEnd{n, err}
	}
}

// TestTunnelBreakAfterFINLiveDestinationGetsWholeUpload: a client uploads
// 3000 KiB over a bumped WebSocket, then its close_notify and FIN, and
// resets once the appliance has acknowledged it all. The destination is
// live: it reads steadily (about 400 KB/s, so some 7.5 s for all of it)
// and pings the client, which ends goproxy's copy towards the reset
// client while its copy of the upload still holds most of it. A reset
// after the FIN cuts nothing (docs/records.md, websocket): the
// destination gets all of it within the linger's bound, and both records
// say ok. The tunnel's end went out as soon as the one write in flight
// had returned: the upload copy's next write met "tls: protocol is
// shutdown", and the destination was reset with some 60 % of the upload
// missing.
func TestTunnelBreakAfterFINLiveDestinationGetsWholeUpload(t *testing.T) {
	const (
		size  = 3000 << 10
		bound = 20 * time.Second
	)
	defer intercept.SetTunnelLingerBound(bound)()
	ends := make(chan destEnd, 1)
	r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: time.Hour,
		handler: wsSteadyTalker(400*time.Millisecond, ends), destRcvBuf: 4096})
	rc := wsUploadWholeThenReset(t, r, size)
	var got destEnd
	select {
	case got = <-ends:
	case <-time.After(bound + 5*time.Second):
		t.Fatal("the destination's read did not end")
	}
	tlsRec, tunRec := connRecords(t, r, rc, bound+5*time.Second, "the records of the tunnel whose client broke after its FIN")
	t.Logf("destination read %d of %d (%v); records: tls %s %q, tunnel %s %q bytes_out %d",
		got.n, size, got.err, tlsRec.Result, tlsRec.Error, tunRec.Result, tunRec.Error, tunRec.BytesOut)
	if got.n != size {
		t.Errorf("the destination read %d of the %d bytes the client sent before its FIN (%v), reading at about 400 KB/s within a %v bound", got.n, size, got.err, bound)
	}
	if tlsRec.Result != "ok" || tunRec.Result != "ok" {
		t.Errorf("records: tls %s (%q), tunnel %s (%q); want both ok", tlsRec.Result, tlsRec.Error, tunRec.Result, tunRec.Error)
	}
	if tunRec.BytesOut != size {
		t.Errorf("tunnel bytes_out %d, want the %d-byte upload", tunRec.BytesOut, size)
	}
}
