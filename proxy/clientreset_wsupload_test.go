package proxy

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

type wsEnd struct {
	n    int64
	err  error
	werr error
}

// TestBumpedWebSocketUploadSurvivesResetAfterFINWithDestinationTalking:
// a bumped WebSocket whose destination keeps sending, and reads only
// later; the client uploads 1 MiB, its close_notify and its FIN, has it
// all acknowledged, then resets. The upload was whole: the destination
// gets all of it and the tunnel's end, and both records say ok. The
// tunnel's close, with the destination's bytes unread, reset it and threw
// the upload's tail away (91-123 KB arrived) while the records said ok,
// bytes_out 1 MiB. A silent destination got it all even then.
func TestBumpedWebSocketUploadSurvivesResetAfterFINWithDestinationTalking(t *testing.T) {
	t.Run("talking", func(t *testing.T) { wsUploadThenReset(t, true) })
	t.Run("silent", func(t *testing.T) { wsUploadThenReset(t, false) })
}

func wsUploadThenReset(t *testing.T, talk bool) {
	const size = 1 << 20
	ends := make(chan wsEnd, 8)
	handler := func(_ *bumpStallRig, w http.ResponseWriter, _ *http.Request) {
		hj := w.(http.Hijacker)
		conn, bw, err := hj.Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		fmt.Fprintf(bw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
			"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
		bw.Flush()
		stop := make(chan struct{})
		werrc := make(chan error, 1)
		go func() { // the destination keeps talking
			var werr error
			defer func() { werrc <- werr }()
			for talk {
				select {
				case <-stop:
					return
				case <-time.After(5 * time.Millisecond):
				}
				if _, werr = conn.Write(make([]byte, 512)); werr != nil {
					return
				}
			}
		}()
		time.Sleep(1500 * time.Millisecond) // a slow reader
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := io.Copy(io.Discard, bw)
		close(stop)
		ends <- wsEnd{n, err, <-werrc}
	}
	r := newBumpStallRig(t, time.Hour, handler, "http/1.1")
	for i := range 3 {
		rc := dialRaw(t, r.client, r.dest)
		rc.SetDeadline(time.Now().Add(30 * time.Second))
		c := tls.Client(rc, &tls.Config{ServerName: "big.example", RootCAs: r.roots, NextProtos: []string{"http/1.1"}})
		if _, err := io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: big.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
			"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 101 {
			t.Fatalf("upgrade: %v", err)
		}
		go io.Copy(io.Discard, br) // the client reads while it uploads
		if _, err := c.Write(make([]byte, size)); err != nil {
			t.Fatalf("upload: %v", err)
		}
		_ = c.CloseWrite()
		if err := rc.halfClose(); err != nil {
			t.Fatalf("half-close: %v", err)
		}
		for end := time.Now().Add(10 * time.Second); tcp.EndpointState(rc.ep.State()) != tcp.StateFinWait2; time.Sleep(2 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("upload and FIN not acknowledged (state %v)", tcp.EndpointState(rc.ep.State()))
			}
		}
		rc.reset()
		tlsRec, tunRec := connRecords(t, r, rc, 15*time.Second, "records")
		var got wsEnd
		select {
		case got = <-ends:
		case <-time.After(20 * time.Second):
			t.Fatal("destination's read did not end")
		}
		if got.n != size || got.err != nil {
			t.Errorf("tunnel %d: destination got %d of the %d bytes the client sent (and FIN'd), ended by %v (its writer's error: %v); want all and the end",
				i, got.n, size, got.err, got.werr)
		}
		if tlsRec.Result != "ok" || tunRec.Result != "ok" {
			t.Errorf("tunnel %d: records %s (%q) / %s (%q), want ok for a whole upload", i, tlsRec.Result, tlsRec.Error, tunRec.Result, tunRec.Error)
		}
	}
}

// TestBumpedWebSocketUndeliveredTailRecordedCut: a client uploads 256 KiB
// over a bumped WebSocket, its close_notify and its FIN, all acknowledged
// by the appliance, then resets, and the destination never reads. The
// upstream lingers for its bound (shortened here), then is reset, and
// both records say the upload's tail was not delivered. They said ok,
// bytes_out all of it, while the tail was thrown away.
func TestBumpedWebSocketUndeliveredTailRecordedCut(t *testing.T) {
	defer intercept.SetTunnelLingerBound(time.Second)()
	const size = 256 << 10
	release := make(chan struct{})
	defer close(release)
	ends := make(chan destEnd, 1)
	r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: time.Hour,
		handler: wsSlowReader(release, ends), destRcvBuf: 4096})
	rc := wsUploadWholeThenReset(t, r, size)
	tlsRec, tunRec := connRecords(t, r, rc, 10*time.Second, "the records of the tunnel whose tail was cut")
	t.Logf("records: tls %s %q, tunnel %s %q bytes_out %d", tlsRec.Result, tlsRec.Error, tunRec.Result, tunRec.Error, tunRec.BytesOut)
	for _, rec := range []struct {
		name           string
		result, errTxt string
	}{{"tls", tlsRec.Result, tlsRec.Error}, {"tunnel", tunRec.Result, tunRec.Error}} {
		if rec.result != "reset" || !strings.Contains(rec.errTxt, "tail was not delivered") {
			t.Errorf("%s record %s (%q), want reset, the tail not delivered", rec.name, rec.result, rec.errTxt)
		}
	}
}
