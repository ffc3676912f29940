package proxy

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// portPacketConn is clientPacketConn from a client port of its own.
type portPacketConn struct {
	clientPacketConn
	local netip.AddrPort
}

func (a *portPacketConn) LocalAddr() net.Addr { return net.UDPAddrFromAddrPort(a.local) }

// TestQUICMigrationE2E, with quic-go's client and server: a connection the
// policy allows moves to a new client port (RFC 9000 §9) and goes on; once
// a reload denies its name, moving to another port does not let it carry
// on, as it did when the new flow was decided as udp on no name. (found by
// review r1bypass F5)
func TestQUICMigrationE2E(t *testing.T) {
	p, h, recs := udpProxy(t, migrateBefore, func(c *Config) { c.UDPIdleTimeout = 10 * time.Second })
	srvPC, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	str := &quicgo.Transport{Conn: srvPC}
	defer str.Close()
	ln, err := str.Listen(&tls.Config{Certificates: []tls.Certificate{selfSignedCert(t, "blocked.example.test")}, NextProtos: []string{"h3"}}, &quicgo.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			go func() {
				for {
					s, err := c.AcceptStream(context.Background())
					if err != nil {
						return
					}
					go func() { io.Copy(s, s); s.Close() }()
				}
			}()
		}
	}()
	dest := srvPC.LocalAddr().(*net.UDPAddr).AddrPort()
	newPC := func(local netip.AddrPort) *portPacketConn {
		fc := newFakeUDPClient(local, dest)
		go p.HandleUDP(netstack.FlowInfo{Endpoint: 7, Client: local, Dest: dest}, fc)
		pc := &portPacketConn{clientPacketConn: clientPacketConn{c: fc, dst: net.UDPAddrFromAddrPort(dest), closed: make(chan struct{})}, local: local}
		// Closed here, not by the Transport: its Close waits for a read
		// that only a deadline would end, and this conn has none.
		t.Cleanup(func() { pc.Close(); fc.Close() })
		return pc
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tr1 := &quicgo.Transport{Conn: newPC(quicClient)}
	conn, err := tr1.Dial(ctx, net.UDPAddrFromAddrPort(dest), &tls.Config{ServerName: "blocked.example.test", NextProtos: []string{"h3"}, InsecureSkipVerify: true}, &quicgo.Config{})
	if err != nil {
		t.Fatalf("handshake through the proxy: %v", err)
	}
	defer conn.CloseWithError(0, "")
	echo := func(msg string, d time.Duration) error {
		sctx, scancel := context.WithTimeout(ctx, d)
		defer scancel()
		s, err := conn.OpenStreamSync(sctx)
		if err != nil {
			return err
		}
		s.SetDeadline(time.Now().Add(d))
		if _, err := s.Write([]byte(msg)); err != nil {
			return err
		}
		s.Close()
		b, err := io.ReadAll(s)
		if err != nil {
			return err
		}
		if string(b) != msg {
			return os.ErrInvalid
		}
		return nil
	}
	migrate := func(port uint16) error {
		tr := &quicgo.Transport{Conn: newPC(netip.AddrPortFrom(quicClient.Addr(), port))}
		path, err := conn.AddPath(tr)
		if err != nil {
			return err
		}
		pctx, pcancel := context.WithTimeout(ctx, 3*time.Second)
		defer pcancel()
		if err := path.Probe(pctx); err != nil {
			return err
		}
		return path.Switch()
	}
	if err := echo("before", 3*time.Second); err != nil {
		t.Fatalf("echo: %v", err)
	}
	moved := quicClient.Port() + 1
	if err := migrate(moved); err != nil {
		t.Fatalf("an allowed connection could not move to a new port: %v", err)
	}
	if err := echo("moved", 3*time.Second); err != nil {
		t.Fatalf("echo after an allowed migration: %v", err)
	}

	h.Store(mustPolicy(t, migrateAfter)) // the operator denies blocked.example.test
	denied := quicClient.Port() + 2
	if err := migrate(denied); err == nil {
		t.Logf("the new path was switched to")
	}
	if err := echo("after", 2*time.Second); err == nil {
		t.Fatal("the connection a reload denied carried on after moving to a new port")
	}
	r := recordOfPort(t, recs, denied)
	if r.Kind != "quic" || r.Action != "deny" || r.Rule != "no-blocked" || r.SNI != "blocked.example.test" {
		t.Fatalf("the denied path's record: %+v", r)
	}
	if r := recordOfPort(t, recs, moved); r.Kind != "quic" || r.SNI != "blocked.example.test" {
		t.Fatalf("the allowed new path's record: %+v", r)
	}
}
