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
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/certs"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// TestTunnelPastLingerShareDeliveredLooksFirst: a client whose one
// lingering connection is taken closes a second tunnel politely (its
// upload, a close_notify and its FIN, then a reset), its destination
// having read and acknowledged the whole upload. Past the share, the
// session was aborted at the break: the destination that had everything
// reset, both records saying the upload's tail was not delivered, and the
// cut counted. The tunnel's linger looks once first, as a relayed flow's
// does: all acknowledged, the tunnel is delivered.
func TestTunnelPastLingerShareDeliveredLooksFirst(t *testing.T) {
	upCA := clsMust(certs.Generate("probe upstream CA"))(t)
	leaf := clsMust(clsMust(certs.NewMinter(upCA, certs.MinterOptions{}))(t).LeafFor([]string{"ws.example"}, nil))(t)
	upRoots := x509.NewCertPool()
	upRoots.AddCert(upCA.Certificate())
	release := make(chan struct{})
	var readByDest atomic.Int64
	ln := tls.NewListener(destListener(t, 4096), &tls.Config{Certificates: []tls.Certificate{*leaf}, NextProtos: []string{"http/1.1"}})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw := switchToWebSocket(w)
		if conn == nil {
			return
		}
		if r.URL.Path == "/read" {
			go func() {
				buf := make([]byte, 4096)
				for {
					n, err := brw.Read(buf)
					readByDest.Add(int64(n))
					if err != nil {
						return
					}
				}
			}()
		}
		<-release
		conn.Close()
	}), ErrorLog: log.New(io.Discard, "", 0)}
	go srv.Serve(ln)
	t.Cleanup(func() { close(release); srv.Close() })
	dest := ln.Addr().(*net.TCPAddr).AddrPort()

	r, roots := newBumpShareRig(t, 8, upRoots, Config{WriteStallTimeout: 5 * time.Minute, MaxLingeringPerClient: 1})
	tunnel := func(path string, size int, wait time.Duration) {
		rc := r.dialWithinShare(t, dest, 10*time.Second)
		c := tls.Client(rc, &tls.Config{ServerName: "ws.example", RootCAs: roots, NextProtos: []string{"http/1.1"}})
		io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: ws.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
			"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade: %v", err)
		}
		c.Write(make([]byte, size))
		_ = c.CloseWrite()
		time.Sleep(wait)
		finThenReset(t, rc)
	}
	tunnel("/deaf", 64<<10, 0) // the client's one lingering connection
	time.Sleep(300 * time.Millisecond)
	tunnel("/read", 1000, 300*time.Millisecond)
	var got []records.Record
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		got = nil
		for _, rec := range r.sink.parse(t) {
			if rec.DestPort == dest.Port() && (rec.Kind == "tls" || rec.WebSocket) {
				got = append(got, rec)
			}
		}
		if len(got) >= 2 {
			break
		}
	}
	if n := readByDest.Load(); n != 1000 {
		t.Fatalf("the reading destination read %d bytes of a 1000-byte upload", n)
	}
	var delivered int
	for _, rec := range got {
		t.Logf("record kind=%s ws=%v result=%s bytes_out=%d error=%q", rec.Kind, rec.WebSocket, rec.Result, rec.BytesOut, rec.Error)
		if rec.Result == "ok" && !strings.Contains(rec.Error, "not delivered") {
			delivered++
		}
	}
	// Two records of the delivered tunnel; the deaf one lingers still.
	if delivered != 2 {
		t.Errorf("%d records of a tunnel whose destination had the whole upload say ok, want its 2", delivered)
	}
	if cuts := r.p.Stats().LingerShareCuts; cuts != 0 {
		t.Errorf("linger_share_cuts %d, with nothing cut", cuts)
	}
}
