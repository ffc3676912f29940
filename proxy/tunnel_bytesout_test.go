package proxy

import (
	"bufio"
	"crypto/tls"
	"io"
	"net/http"
	"testing"
	"time"
)

// wsUpgrade is a bumped client's WebSocket upgrade request.
const wsUpgrade = "GET /ws HTTP/1.1\r\nHost: big.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
	"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"

// dialWebSocket opens a bumped WebSocket tunnel through r: the client's
// raw connection, its TLS one, and the reader of what comes after the 101.
func dialWebSocket(t *testing.T, r *bumpStallRig) (*rawClient, *tls.Conn, *bufio.Reader) {
	t.Helper()
	rc := dialRaw(t, r.client, r.dest)
	c := tls.Client(rc, &tls.Config{ServerName: "big.example", RootCAs: r.roots, NextProtos: []string{"http/1.1"}})
	if _, err := io.WriteString(c, wsUpgrade); err != nil {
		t.Fatalf("upgrade request: %v", err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", err, resp)
	}
	return rc, c, br
}

// A bumped WebSocket tunnel whose destination reads the client's whole
// upload and then ends the tunnel (a close_notify, a FIN): its record is
// ok, and bytes_out all the destination read. 5 tries of 30 counted
// 64044 of 68325 bytes: the record was written as the destination's end
// ended the tunnel, while the last write of the upload, whole in the
// socket, had not yet been counted.
func TestBumpedWebSocketBytesOutCountsTheLastWrite(t *testing.T) {
	const tries, size = 30, 68325
	destRead := make(chan int64, 1)
	r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: 5 * time.Second,
		handler: func(_ *bumpStallRig, w http.ResponseWriter, _ *http.Request) {
			conn, brw := switchToWebSocket(w)
			if conn == nil {
				return
			}
			n, _ := io.CopyN(io.Discard, brw, size)
			destRead <- n
			conn.Close() // close_notify, FIN
		}})
	for i := range tries {
		rc, c, br := dialWebSocket(t, r)
		if _, err := c.Write(make([]byte, size)); err != nil {
			t.Fatalf("try %d: upload: %v", i, err)
		}
		io.Copy(io.Discard, br)
		// Told the destination's end, the client ends its side, as
		// clients do: the tunnel relays a destination's end as a
		// half-close, and waits for the client's (tunnel_desthalfclose_test.go).
		_ = c.CloseWrite()
		_ = rc.halfClose()
		read := <-destRead
		_, tunRec := connRecords(t, r, rc, 10*time.Second, "the tunnel's records")
		if tunRec.Result != "ok" || tunRec.BytesOut != read || read != size {
			t.Errorf("try %d: the destination read %d of %d bytes; the tunnel's record says %s %q, bytes_out %d",
				i, read, size, tunRec.Result, tunRec.Error, tunRec.BytesOut)
		}
	}
}
