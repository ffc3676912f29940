package proxy

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/certs"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// TestTunnelWriteInFlightAtBreakEndsAtStacksClose: a bumped WebSocket
// tunnel's client uploads 3 MiB to a destination that reads nothing,
// sends its close_notify and FIN, and resets, goproxy's write of the
// upload still under way. Nothing ended the tunnel: goproxy closes it
// only once a copy ends, so the linger's bound and the stacks' close
// never reached it, and its records came after the write-stall timeout,
// lost at shutdown (0 records 75 s after the stacks' close in the
// review). The stacks' close now cuts that write, and the records come.
func TestTunnelWriteInFlightAtBreakEndsAtStacksClose(t *testing.T) {
	testTunnelWriteInFlightAtBreak(t, 3<<20, 5*time.Minute)
}

func testTunnelWriteInFlightAtBreak(t *testing.T, size int, stall time.Duration) {
	t.Helper()
	upCA := clsMust(certs.Generate("probe upstream CA"))(t)
	leaf := clsMust(clsMust(certs.NewMinter(upCA, certs.MinterOptions{}))(t).LeafFor([]string{"ws.example"}, nil))(t)
	upRoots := x509.NewCertPool()
	upRoots.AddCert(upCA.Certificate())
	release := make(chan struct{})
	ln := tls.NewListener(destListener(t, 4096), &tls.Config{Certificates: []tls.Certificate{*leaf}, NextProtos: []string{"http/1.1"}})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		conn, _ := switchToWebSocket(w)
		if conn == nil {
			return
		}
		<-release
		conn.Close()
	}), ErrorLog: log.New(io.Discard, "", 0)}
	go srv.Serve(ln)
	t.Cleanup(func() { close(release); srv.Close() })
	dest := ln.Addr().(*net.TCPAddr).AddrPort()
	r, roots := newBumpShareRig(t, 8, upRoots, Config{WriteStallTimeout: stall})
	rc := r.dialWithinShare(t, dest, 10*time.Second)
	c := tls.Client(rc, &tls.Config{ServerName: "ws.example", RootCAs: roots, NextProtos: []string{"http/1.1"}})
	io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: ws.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v", err)
	}
	rc.SetWriteDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write(make([]byte, size)); err != nil {
		t.Skipf("upload of %d did not go in: %v", size, err)
	}
	_ = c.CloseWrite()
	rc.halfClose()
	st := tcp.EndpointState(rc.ep.State())
	for end := time.Now().Add(3 * time.Second); st != tcp.StateFinWait2 && time.Now().Before(end); st = tcp.EndpointState(rc.ep.State()) {
		time.Sleep(5 * time.Millisecond)
	}
	if st != tcp.StateFinWait2 {
		t.Skipf("the appliance did not acknowledge the FIN of a %d-byte upload (state %v)", size, st)
	}
	rc.reset()
	time.Sleep(3 * time.Second)
	t.Logf("size %d: lingering fds %d, records %d before the stacks' close", size, hostFDSocketsTo(t, dest.Port()), len(r.sink.parse(t)))
	ts := time.Now()
	r.p.StacksClosing()
	n := 0
	for end := time.Now().Add(stall + 15*time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if n = len(r.sink.parse(t)); n >= 2 {
			break
		}
	}
	took := time.Since(ts)
	for _, rec := range r.sink.parse(t) {
		t.Logf("record kind=%s ws=%v result=%s bytes_out=%d error=%q", rec.Kind, rec.WebSocket, rec.Result, rec.BytesOut, rec.Error)
	}
	t.Logf("%d records %v after StacksClosing", n, took)
	// Within a second or so: the tunnel's end waits up to a second for
	// an abort of the session's (awaitAbort).
	if n < 2 || took > 3*time.Second {
		t.Errorf("the tunnel's records came %v after the stacks' close (%d of 2)", took, n)
	}
	for _, rec := range r.sink.parse(t) {
		if rec.Result != "reset" || !strings.Contains(rec.Error, "shutdown") {
			t.Errorf("record kind %s: result %s, error %q; want reset by the shutdown", rec.Kind, rec.Result, rec.Error)
		}
	}
}
