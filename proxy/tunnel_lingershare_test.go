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
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// finThenReset sends c's FIN, waits until the appliance has acknowledged
// it and all before it, and resets c.
func finThenReset(t *testing.T, c *rawClient) {
	t.Helper()
	if err := c.halfClose(); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(10 * time.Second); tcp.EndpointState(c.ep.State()) != tcp.StateFinWait2; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("the appliance did not take the whole upload and its FIN (client state %v)", tcp.EndpointState(c.ep.State()))
		}
	}
	c.reset()
}

// TestTunnelLingersHeldToClientShare: one client opens bumped WebSocket
// tunnels to a destination of its own that reads nothing, uploads, sends
// its FIN, waits for its acknowledgement and resets, again and again.
// Each tunnel's upstream lingers (for up to a minute) while the client's
// flow-table entry is forgotten soon after the reset: 64 tunnel sessions
// lingered for a flow share of 4 in the review. They count in the
// client's share of lingering connections, as relayed flows' lingers do:
// one past it is cut at once, its destination reset and its records
// saying the upload's tail was not delivered, for that share.
func TestTunnelLingersHeldToClientShare(t *testing.T) {
	const (
		share     = 4
		lingerCap = 2
		tunnels   = 8
		size      = 64 << 10
	)
	upCA := clsMust(certs.Generate("lingershare upstream CA"))(t)
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
		<-release // reads nothing until the test ends
		conn.Close()
	}), ErrorLog: log.New(io.Discard, "", 0)}
	go srv.Serve(ln)
	t.Cleanup(func() { close(release); srv.Close() })
	dest := ln.Addr().(*net.TCPAddr).AddrPort()

	r, roots := newBumpShareRig(t, share, upRoots, Config{WriteStallTimeout: 5 * time.Minute, MaxLingeringPerClient: lingerCap})

	for range tunnels {
		rc := r.dialWithinShare(t, dest, 10*time.Second)
		c := tls.Client(rc, &tls.Config{ServerName: "ws.example", RootCAs: roots, NextProtos: []string{"http/1.1"}})
		if _, err := io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: ws.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
			"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade: %v", err)
		}
		if _, err := c.Write(make([]byte, size)); err != nil {
			t.Fatal(err)
		}
		_ = c.CloseWrite()
		finThenReset(t, rc)
	}
	// Each tunnel has two records (the connection's, the request's);
	// those past the share are written as they are cut.
	var recs []records.Record
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if recs = r.sink.parse(t); len(recs) >= 2*(tunnels-lingerCap) {
			break
		}
	}
	lingering := hostSocketsTo(t, dest.Port())
	t.Logf("%d tunnels made (flow share %d, share of lingering connections %d): %d host sockets to the destination open, %d records",
		tunnels, share, lingerCap, lingering, len(recs))
	if lingering > lingerCap {
		t.Errorf("one client holds %d lingering tunnel upstreams; its share is %d", lingering, lingerCap)
	}
	cut := 0
	for _, rec := range recs {
		if rec.WebSocket {
			t.Logf("tunnel record: result %s, error %q", rec.Result, rec.Error)
			if strings.Contains(rec.Error, "the upload's tail was not delivered") && strings.Contains(rec.Error, "share of lingering connections") {
				cut++
			}
		}
	}
	if cut != tunnels-lingerCap {
		t.Errorf("%d tunnel records say the share of lingering connections cut the upload's tail; want %d", cut, tunnels-lingerCap)
	}
}

// newBumpShareRig is a shareRig (transitory timeout 300 ms) whose policy
// bumps everything, with a CA of its own, which roots trusts, and upRoots
// for the destinations: for tunnels through the whole proxy.
func newBumpShareRig(t *testing.T, share int, upRoots *x509.CertPool, cfg Config) (*shareRig, *x509.CertPool) {
	t.Helper()
	h := new(policy.Holder)
	h.Store(clsMust(policy.Parse("test.yaml", []byte("policy: {default: bump}\n")))(t))
	ca := clsMust(certs.Generate("share rig appliance CA"))(t)
	roots := x509.NewCertPool()
	roots.AddCert(ca.Certificate())
	cfg.Policy = h
	cfg.Intercept = intercept.Config{UpstreamRoots: upRoots, Minter: clsMust(certs.NewMinter(ca, certs.MinterOptions{}))(t)}
	return newShareRig(t, share, 300*time.Millisecond, cfg), roots
}
