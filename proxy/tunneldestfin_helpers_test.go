package proxy

import (
	"bufio"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"
)

// plainWSOrigin serves h over cleartext HTTP on a destination listener
// whose sockets have a receive buffer of rcv bytes (0: the default).
func plainWSOrigin(t *testing.T, r *bumpStallRig, rcv int, h func(*bumpStallRig, http.ResponseWriter, *http.Request)) netip.AddrPort {
	t.Helper()
	ln := destListener(t, rcv)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) { h(r, w, req) }), ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// wsClearUpload upgrades a cleartext connection to dst to a WebSocket and
// sends size bytes of upload.
func wsClearUpload(t *testing.T, r *bumpStallRig, dst netip.AddrPort, size int) *rawClient {
	t.Helper()
	rc := dialRaw(t, r.client, dst)
	rc.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.WriteString(rc, "GET /ws HTTP/1.1\r\nHost: plain.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(rc), nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("the upgrade: %v %v", err, resp)
	}
	if _, err := rc.Write(make([]byte, size)); err != nil {
		t.Fatal(err)
	}
	return rc
}
