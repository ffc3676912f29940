package proxy

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"
)

// halfCloseTries is how many connections the half-close tests make: the
// cut they look for came 1 to 7 times in 60 to 150 before the appliance
// lingered, depending on when the client's close_notify and FIN arrived.
const halfCloseTries = 150

// halfCloseUp and halfCloseDown are the chaos soak's sizes that showed
// the cut: an upload large enough that the client's close_notify and FIN
// trail it (Nagle, behind unacknowledged data), and a download that is
// still in the appliance's send queue when the session ends.
const halfCloseUp, halfCloseDown = 203682, 64819

// halfCloseResult is what a client read of its download: bytes, and the
// error that ended the read (nil for a clean end).
type halfCloseResult struct {
	n   int64
	err error
}

// TestBumpedWebSocketHalfCloseGetsWholeDownload: a bumped WebSocket
// client sends its whole upload, half-closes (close_notify, then FIN)
// and reads on; the destination reads it all, sends its download and
// closes. The client must get the whole download and a clean end, as
// the tunnel's record (ok, bytes_in all of it) says. The appliance used
// to close the client's connection as soon as the tunnel ended: the
// client's close_notify arriving after that Close drew a RST from the
// stack, which threw away the download's unsent tail.
func TestBumpedWebSocketHalfCloseGetsWholeDownload(t *testing.T) {
	r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: 5 * time.Second,
		handler: func(_ *bumpStallRig, w http.ResponseWriter, _ *http.Request) {
			conn, brw := switchToWebSocket(w)
			if conn == nil {
				return
			}
			defer conn.Close()
			_, _ = io.CopyN(io.Discard, brw, halfCloseUp)
			_, _ = conn.Write(make([]byte, halfCloseDown))
			_ = conn.(*tls.Conn).CloseWrite()
			_ = conn.(*tls.Conn).NetConn().(*net.TCPConn).CloseWrite()
			_, _ = io.Copy(io.Discard, brw)
		}})
	bad := 0
	for i := range halfCloseTries {
		rc := dialRaw(t, r.client, r.dest)
		c := tls.Client(rc, &tls.Config{ServerName: "big.example", RootCAs: r.roots, NextProtos: []string{"http/1.1"}})
		_, _ = io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: big.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
			"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
		br := bufio.NewReader(c)
		if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("try %d: the upgrade: %v", i, err)
		}
		done := make(chan halfCloseResult, 1)
		go func() { n, err := io.Copy(io.Discard, br); done <- halfCloseResult{n, err} }()
		if _, err := c.Write(make([]byte, halfCloseUp)); err != nil {
			t.Fatalf("try %d: the upload: %v", i, err)
		}
		_ = c.CloseWrite()
		if err := rc.halfClose(); err != nil {
			t.Fatalf("try %d: half-closing: %v", i, err)
		}
		got := <-done
		_, tunRec := connRecords(t, r, rc, 10*time.Second, "the tunnel's records")
		if got.n != halfCloseDown || got.err != nil {
			bad++
			t.Logf("try %d: the client got %d of %d bytes, ended by %v; the tunnel's record says %s %q, bytes_in %d",
				i, got.n, halfCloseDown, got.err, tunRec.Result, tunRec.Error, tunRec.BytesIn)
		}
		_ = rc.Close()
	}
	if bad > 0 {
		t.Errorf("%d of %d half-closed tunnels had their download cut", bad, halfCloseTries)
	}
}

// TestBumpedHTTP1HalfCloseGetsWholeClosingAnswer is the HTTP/1
// counterpart: the client sends a POST, half-closes (close_notify, FIN)
// and reads; the destination reads the body and answers with
// Connection: close, so goproxy ends the session as soon as the answer
// is written, and the client's close_notify may come after that.
func TestBumpedHTTP1HalfCloseGetsWholeClosingAnswer(t *testing.T) {
	r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: 5 * time.Second,
		handler: func(_ *bumpStallRig, w http.ResponseWriter, req *http.Request) {
			_, _ = io.Copy(io.Discard, req.Body)
			w.Header().Set("Connection", "close")
			w.Header().Set("Content-Length", strconv.Itoa(halfCloseDown))
			_, _ = w.Write(make([]byte, halfCloseDown))
		}})
	bad := 0
	for i := range halfCloseTries {
		rc := dialRaw(t, r.client, r.dest)
		c := tls.Client(rc, &tls.Config{ServerName: "big.example", RootCAs: r.roots, NextProtos: []string{"http/1.1"}})
		done := make(chan halfCloseResult, 1)
		go func() { done <- readAnswer(c) }()
		fmt.Fprintf(c, "POST /up HTTP/1.1\r\nHost: big.example\r\nContent-Length: %d\r\n\r\n", halfCloseUp)
		if _, err := c.Write(make([]byte, halfCloseUp)); err != nil {
			t.Fatalf("try %d: the upload: %v", i, err)
		}
		_ = c.CloseWrite()
		if err := rc.halfClose(); err != nil {
			t.Fatalf("try %d: half-closing: %v", i, err)
		}
		got := <-done
		_, rec := connRecords(t, r, rc, 10*time.Second, "the connection's records")
		if got.n != halfCloseDown || got.err != nil {
			bad++
			t.Logf("try %d: the client got %d of %d bytes, ended by %v; the http record says %s %q, bytes_in %d",
				i, got.n, halfCloseDown, got.err, rec.Result, rec.Error, rec.BytesIn)
		}
		_ = rc.Close()
	}
	if bad > 0 {
		t.Errorf("%d of %d half-closed HTTP/1 clients had their answer cut", bad, halfCloseTries)
	}
}

// readAnswer reads an HTTP/1 response from c, its body to its end, and
// then the connection to its end (the appliance's close_notify).
func readAnswer(c net.Conn) halfCloseResult {
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return halfCloseResult{0, err}
	}
	n, err := io.Copy(io.Discard, resp.Body)
	if err == nil {
		_, err = io.Copy(io.Discard, br)
	}
	return halfCloseResult{n, err}
}

// TestBumpedClientEndAfterSessionEndNotReset is the same cut made
// certain: the client, its receive window small (16 KiB), reads nothing
// of a closing answer (192 KiB: most of it waits in the appliance's send
// queue) until the session has ended (its records written), and only
// then sends its close_notify and FIN. The appliance must still be
// reading what the client sends then, or its stack answers the
// close_notify with a RST that discards the answer's unsent part. So the
// records do not wait for the linger either: had they waited, the linger
// would have been over (2 s) before the client's end came.
func TestBumpedClientEndAfterSessionEndNotReset(t *testing.T) {
	const down = 192 << 10
	r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: 5 * time.Second,
		handler: func(_ *bumpStallRig, w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Connection", "close")
			w.Header().Set("Content-Length", strconv.Itoa(down))
			_, _ = w.Write(make([]byte, down))
		}})
	for i := range 3 {
		rc := dialRaw(t, r.client, r.dest)
		rc.ep.SocketOptions().SetReceiveBufferSize(16<<10, true)
		c := tls.Client(rc, &tls.Config{ServerName: "big.example", RootCAs: r.roots, NextProtos: []string{"http/1.1"}})
		_, _ = io.WriteString(c, "GET /big HTTP/1.1\r\nHost: big.example\r\n\r\n")
		tlsRec, rec := connRecords(t, r, rc, 10*time.Second, "the records, before the client's end")
		if tlsRec.Result != "ok" || rec.Result != "ok" {
			t.Fatalf("try %d: records %s %q and %s %q; want ok", i, tlsRec.Result, tlsRec.Error, rec.Result, rec.Error)
		}
		_ = c.CloseWrite()
		if err := rc.halfClose(); err != nil {
			t.Fatalf("try %d: half-closing: %v", i, err)
		}
		if got := readAnswer(c); got.n != down || got.err != nil {
			t.Errorf("try %d: the client, ending after the session, got %d of %d bytes, ended by %v", i, got.n, down, got.err)
		}
		_ = rc.Close()
	}
}
