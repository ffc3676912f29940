package proxy

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"os"
	"testing"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// clientPacketConn is the client's side of a fakeUDPClient as the
// net.PacketConn a quic-go client dials on: what it writes reaches the
// proxy as the flow's datagrams, and it reads what the proxy relays back.
type clientPacketConn struct {
	c      *fakeUDPClient
	dst    net.Addr
	closed chan struct{}
}

func (a *clientPacketConn) ReadFrom(b []byte) (int, net.Addr, error) {
	select {
	case d := <-a.c.out:
		return copy(b, d), a.dst, nil
	case <-a.closed:
		return 0, nil, net.ErrClosed
	}
}
func (a *clientPacketConn) WriteTo(b []byte, _ net.Addr) (int, error) {
	a.c.inject(bytes.Clone(b))
	return len(b), nil
}
func (a *clientPacketConn) Close() error                     { close(a.closed); return nil }
func (a *clientPacketConn) LocalAddr() net.Addr              { return net.UDPAddrFromAddrPort(quicClient) }
func (a *clientPacketConn) SetDeadline(time.Time) error      { return nil }
func (a *clientPacketConn) SetReadDeadline(time.Time) error  { return nil }
func (a *clientPacketConn) SetWriteDeadline(time.Time) error { return os.ErrInvalid }

// selfSignedCert is a throwaway certificate for name.
func selfSignedCert(t *testing.T, name string) tls.Certificate {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
}

// TestQUICRealHandshakeThroughGate: a real quic-go client completes a
// handshake with a real quic-go server on loopback through the gate, with
// and without the server asking for a Retry, and none of its datagrams is
// taken for a smuggled connection.
func TestQUICRealHandshakeThroughGate(t *testing.T) {
	for _, retry := range []bool{false, true} {
		t.Run(map[bool]string{false: "no retry", true: "retry"}[retry], func(t *testing.T) {
			p, _, _ := udpProxy(t, quicPolicy, func(c *Config) { c.UDPIdleTimeout = 10 * time.Second })
			srvPC, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			tr := &quicgo.Transport{Conn: srvPC, VerifySourceAddress: func(net.Addr) bool { return retry }}
			defer tr.Close()
			ln, err := tr.Listen(&tls.Config{Certificates: []tls.Certificate{selfSignedCert(t, "www.example.test")}, NextProtos: []string{"h3"}}, nil)
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
					go func() { <-c.Context().Done() }()
				}
			}()
			dest := srvPC.LocalAddr().(*net.UDPAddr).AddrPort()
			fc := newFakeUDPClient(quicClient, dest)
			defer fc.Close()
			go p.HandleUDP(netstack.FlowInfo{Endpoint: 7, Client: quicClient, Dest: dest}, fc)
			pc := &clientPacketConn{c: fc, dst: net.UDPAddrFromAddrPort(dest), closed: make(chan struct{})}
			defer pc.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			conn, err := quicgo.Dial(ctx, pc, pc.dst, &tls.Config{ServerName: "www.example.test", NextProtos: []string{"h3"}, InsecureSkipVerify: true}, &quicgo.Config{})
			if err != nil {
				t.Fatalf("handshake through the proxy: %v", err)
			}
			conn.CloseWithError(0, "")
			if n := p.Stats().QUICSmuggled; n != 0 {
				t.Errorf("%d of the connection's datagrams dropped as smuggled", n)
			}
		})
	}
}
