package appliance

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	quicgo "github.com/quic-go/quic-go"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"

	"github.com/gwlbproxy/gwlbproxy/certs"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// The QUIC tests run a real QUIC client (quic-go) in the simulator's client
// stack, so its datagrams reach the appliance over GENEVE like any client's,
// and a real quic-go server on loopback behind it.

const quicE2EPolicy = `
policy:
  default: allow
  rules:
    - name: no-blocked
      domains: ["blocked.example.test"]
      action: deny
    - name: inspect
      domains: ["inspect.example.test"]
      action: bump
    - name: web
      domains: ["www.example.test"]
      action: allow
`

// quicE2E is a rig with the policy above, and a destination that serves
// both QUIC (a stream echo) and HTTPS over TCP on the same port, with
// certificates for every example.test name from a CA of its own.
type quicE2E struct {
	r        *rig
	dest     netip.AddrPort
	destCAs  *x509.CertPool
	received atomic.Int64 // datagrams the QUIC server read
}

// countingPC counts what the QUIC server reads. It hides the UDP socket's
// other methods, so quic-go reads through ReadFrom.
type countingPC struct {
	net.PacketConn
	n *atomic.Int64
}

func (c countingPC) ReadFrom(b []byte) (int, net.Addr, error) {
	n, a, err := c.PacketConn.ReadFrom(b)
	if err == nil {
		c.n.Add(1)
	}
	return n, a, err
}

func newQUICE2E(t *testing.T) *quicE2E {
	t.Helper()
	t.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
	ca := must(certs.Generate("test destination CA"))(t)
	minter := must(certs.NewMinter(ca, certs.MinterOptions{}))(t)
	tlsConf := &tls.Config{
		GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) { return minter.Leaf(h.ServerName) },
	}
	caFile := filepath.Join(t.TempDir(), "dest-ca.pem")
	must(0, os.WriteFile(caFile, ca.TrustPEM(), 0o644))(t)
	cfg := filepath.Join(t.TempDir(), "gwlbproxy.yaml")
	must(0, os.WriteFile(cfg, []byte(quicE2EPolicy), 0o644))(t)
	e := &quicE2E{destCAs: x509.NewCertPool()}
	e.destCAs.AppendCertsFromPEM(ca.TrustPEM())
	e.r = newRig(t, func(o *Options) {
		o.Config = cfg
		o.UpstreamCA = []string{caFile}
		o.IdleTimeout = 2 * time.Second
	}, nil)

	// QUIC: echo every stream.
	pc := must(net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(e.r.net.server(3), 0))))(t)
	t.Cleanup(func() { pc.Close() })
	e.dest = pc.LocalAddr().(*net.UDPAddr).AddrPort()
	qconf := tlsConf.Clone()
	qconf.NextProtos = []string{"echo-test"}
	ln := must((&quicgo.Transport{Conn: countingPC{pc, &e.received}}).Listen(qconf, &quicgo.Config{}))(t)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			go func() {
				for {
					s, err := conn.AcceptStream(context.Background())
					if err != nil {
						return
					}
					go func() {
						io.Copy(s, s)
						s.Close()
					}()
				}
			}()
		}
	}()
	// HTTPS over TCP on the same port.
	hconf := tlsConf.Clone()
	hconf.NextProtos = []string{"http/1.1"}
	tln := must(tls.Listen("tcp", e.dest.String(), hconf))(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello over TCP, host=%s", r.Host)
	})}
	go srv.Serve(tln)
	t.Cleanup(func() { srv.Close() })

	// The destination check (destination_check: dns) must find the
	// names at the destination.
	e.r.dns.Set("*.example.test", 60, e.dest.Addr())
	return e
}

// dialQUIC connects with quic-go from the client stack, through the
// appliance, to name at the destination, and echoes msg on a stream.
func (e *quicE2E) dialQUIC(t *testing.T, name, msg string) (string, error) {
	t.Helper()
	laddr := tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(clientV4.As4())}
	pc, err := gonet.DialUDP(e.r.client.Stack, &laddr, nil, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := quicgo.Dial(ctx, pc, net.UDPAddrFromAddrPort(e.dest),
		&tls.Config{ServerName: name, RootCAs: e.destCAs, NextProtos: []string{"echo-test"}},
		&quicgo.Config{HandshakeIdleTimeout: 2 * time.Second})
	if err != nil {
		return "", err
	}
	defer conn.CloseWithError(0, "done")
	s, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return "", err
	}
	if _, err := io.WriteString(s, msg); err != nil {
		return "", err
	}
	s.Close()
	got, err := io.ReadAll(s)
	return string(got), err
}

func findQUIC(rs []records.Record, sni string) *records.Record {
	for i := range rs {
		if rs[i].Kind == "quic" && rs[i].SNI == sni {
			return &rs[i]
		}
	}
	return nil
}

// TestQUICByName: a real QUIC client's connection is decided on the name in
// its Initial packets. Before the QUIC gate, QUIC was plain UDP to the
// policy, and the denied and bumped names below got through.
func TestQUICByName(t *testing.T) {
	e := newQUICE2E(t)

	t.Run("denied name dropped", func(t *testing.T) {
		before := e.received.Load()
		if got, err := e.dialQUIC(t, "blocked.example.test", "ping"); err == nil {
			t.Fatalf("a QUIC connection to a denied name was let through (echo %q)", got)
		}
		recs := e.r.records(func(rs []records.Record) bool { return findQUIC(rs, "blocked.example.test") != nil })
		rec := findQUIC(recs, "blocked.example.test")
		if rec.Action != "deny" || rec.Rule != "no-blocked" || rec.ALPN != "echo-test" || rec.Result != "denied" {
			t.Fatalf("record %+v", rec)
		}
		if n := e.received.Load() - before; n != 0 {
			t.Fatalf("the QUIC server read %d datagrams of a denied connection", n)
		}
		if n := countKind(e.r.readRecords(), "quic"); n != 1 {
			t.Fatalf("%d quic records for one denied connection (and its retransmissions), want 1", n)
		}
	})

	t.Run("allowed name echoes", func(t *testing.T) {
		got, err := e.dialQUIC(t, "www.example.test", "hello over QUIC")
		if err != nil || got != "hello over QUIC" {
			t.Fatalf("echo %q, %v", got, err)
		}
		recs := e.r.records(func(rs []records.Record) bool { return findQUIC(rs, "www.example.test") != nil })
		rec := findQUIC(recs, "www.example.test")
		if rec.Action != "splice" || rec.Rule != "web" || rec.ALPN != "echo-test" || rec.DestCheck != "ok" ||
			rec.Result != "ok" || rec.BytesOut < 1200 || rec.BytesIn == 0 || rec.DestPort != e.dest.Port() {
			t.Fatalf("record %+v", rec)
		}
	})

	t.Run("bump blocks QUIC, TLS over TCP is bumped", func(t *testing.T) {
		before := e.received.Load()
		if _, err := e.dialQUIC(t, "inspect.example.test", "ping"); err == nil {
			t.Fatal("a QUIC connection under a bump rule was let through")
		}
		if n := e.received.Load() - before; n != 0 {
			t.Fatalf("the QUIC server read %d datagrams of a blocked connection", n)
		}
		// The client falls back to HTTPS over TCP, to the same address and
		// port: bumped, with a leaf from the appliance's CA.
		tc := must(e.r.tlsDial(t, e.dest, &tls.Config{ServerName: "inspect.example.test", RootCAs: e.r.caPool(), NextProtos: []string{"http/1.1"}}))(t)
		defer tc.Close()
		if issuer := tc.ConnectionState().PeerCertificates[0].Issuer.CommonName; !strings.Contains(issuer, "gwlbproxy") {
			t.Errorf("the TCP connection's leaf is from %q, not the appliance's CA", issuer)
		}
		fmt.Fprintf(tc, "GET /fallback HTTP/1.1\r\nHost: inspect.example.test\r\nConnection: close\r\n\r\n")
		body := must(io.ReadAll(tc))(t)
		if !strings.Contains(string(body), "hello over TCP, host=inspect.example.test") {
			t.Fatalf("response %q", body)
		}
		recs := e.r.records(func(rs []records.Record) bool {
			return findQUIC(rs, "inspect.example.test") != nil && countKind(rs, "http") > 0
		})
		if rec := findQUIC(recs, "inspect.example.test"); rec.Action != "deny" || rec.Rule != "inspect" || !strings.Contains(rec.Error, "cannot be bumped") {
			t.Fatalf("quic record %+v", rec)
		}
		var bumped bool
		for _, rec := range recs {
			bumped = bumped || (rec.Kind == "http" && rec.Action == "bump" && rec.Host == "inspect.example.test" && rec.Path == "/fallback" && rec.Status == 200)
		}
		if !bumped {
			t.Fatalf("no bumped http record for the fallback:\n%s", summarizeRecords(recs))
		}
	})
}
