package proxy

import (
	"bufio"
	"errors"
	"io"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// TestRelayHalfClose: the client's half-close reaches the upstream, which
// can still answer; counts are per direction.
func TestRelayHalfClose(t *testing.T) {
	client, clientSide := testnet.TCPPair(t)
	upSide, upstream := testnet.TCPPair(t)
	type result struct {
		out, in int64
		err     error
	}
	done := make(chan result, 1)
	go func() {
		out, in, err := relayAndWait(clientSide, upSide)
		done <- result{out, in, err}
	}()
	client.Write([]byte("request"))
	client.CloseWrite()
	got, err := io.ReadAll(upstream) // ends only if the half-close arrived
	if err != nil || string(got) != "request" {
		t.Fatalf("upstream read %q, %v", got, err)
	}
	upstream.Write([]byte("response after half-close"))
	upstream.CloseWrite()
	back, _ := io.ReadAll(client)
	if string(back) != "response after half-close" {
		t.Fatalf("client read %q", back)
	}
	select {
	case r := <-done:
		if r.err != nil || r.out != 7 || r.in != 25 {
			t.Fatalf("Relay = %d, %d, %v; want 7, 25, nil", r.out, r.in, r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Relay did not return after both halves closed")
	}
}

// TestRelayResetAbortsBothWays: a reset on one side ends the other
// direction too, and the error is reported.
func TestRelayResetAbortsBothWays(t *testing.T) {
	client, clientSide := testnet.TCPPair(t)
	upSide, upstream := testnet.TCPPair(t)
	done := make(chan error, 1)
	go func() { _, _, err := relayAndWait(clientSide, upSide); done <- err }()
	upstream.SetLinger(0)
	upstream.Close() // RST
	select {
	case err := <-done:
		if err == nil || !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("Relay error %v, want connection reset", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a reset upstream left the relay hanging on the silent client")
	}
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := client.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read %v after the upstream reset, want a reset too", err)
	}
}

func TestForbidden(t *testing.T) {
	p := New(Config{})
	for addr, want := range map[string]bool{
		"127.0.0.1": true, "::1": true, "169.254.169.254": true, "fe80::1": true,
		"224.0.0.1": true, "0.0.0.0": true, "255.255.255.255": true, "::ffff:127.0.0.1": true,
		"fd00:ec2::254": true,
		"198.18.2.3":    false, "2001:db8::1": false,
	} {
		if got := p.forbidden(netip.MustParseAddr(addr)) != ""; got != want {
			t.Errorf("forbidden(%s) = %v, want %v", addr, got, want)
		}
	}
	if New(Config{AllowLoopback: true}).forbidden(netip.MustParseAddr("127.0.0.1")) != "" {
		t.Error("AllowLoopback does not allow loopback")
	}
	if New(Config{AllowLoopback: true}).forbidden(netip.MustParseAddr("169.254.169.254")) == "" {
		t.Error("AllowLoopback opened the metadata service")
	}
}

// A classified connection reads the sniffed bytes first, then the
// connection, in order, and lets go of the sniff reader once it is empty.
func TestPeekedConnReleasesReader(t *testing.T) {
	a, b := testnet.TCPPair(t)
	br := sniffReaders.Get().(*bufio.Reader)
	br.Reset(a)
	b.Write([]byte("GET / HTTP/1.1\r\n"))
	if _, err := br.Peek(16); err != nil {
		t.Fatal(err)
	}
	c := &peekedConn{Conn: a, r: br}
	b.Write([]byte("Host: x\r\n\r\n"))
	var got []byte
	buf := make([]byte, 5)
	for len(got) < 27 {
		a.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
		if len(got) < 16 && c.r == nil {
			t.Fatal("the reader was let go with sniffed bytes unread")
		}
	}
	if string(got) != "GET / HTTP/1.1\r\nHost: x\r\n\r\n" || c.r != nil {
		t.Fatalf("read %q, reader kept: %v", got, c.r != nil)
	}
}
