package intercept

import (
	"bufio"
	"context"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gwlbproxy/gwlbproxy/certs"
)

// A tunnel whose client ended its side first, its upload all written into
// the upstream's socket, and whose destination reset the connection
// meanwhile, the reset taken by no read yet: the tunnel's end (its
// close_notify) meets the reset, and the tunnel is the destination's
// failure (reset), not ok. The close_notify's error was dropped, and the
// read, cut by the tunnel's close, ended it ok (a chaos soak's tunnels
// whose destination had read half the upload).
func TestTunnelEndMeetingTheDestinationsResetRecordsReset(t *testing.T) {
	ca, err := certs.Generate("tunnel drain test CA")
	if err != nil {
		t.Fatal(err)
	}
	m, err := certs.NewMinter(ca, certs.MinterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := m.LeafFor([]string{"up.example"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dest := make(chan *net.TCPConn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(dest)
			return
		}
		if tls.Server(c, &tls.Config{Certificates: []tls.Certificate{*leaf}}).Handshake() != nil {
			c.Close()
			close(dest)
			return
		}
		dest <- c.(*net.TCPConn)
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	up := tls.Client(raw, &tls.Config{ServerName: "up.example", InsecureSkipVerify: true})
	if err := up.Handshake(); err != nil {
		t.Fatal(err)
	}
	d, ok := <-dest
	if !ok {
		t.Fatal("the destination's handshake failed")
	}
	_ = d.SetLinger(0)
	d.Close() // its reset
	awaitTCPClosed(t, raw.(*net.TCPConn))

	u := &upgradedBody{br: bufio.NewReader(up), conn: up, stop: func() bool { return true }, ended: make(chan struct{}), tunnel: true}
	rb := &recordingBody{ReadCloser: u, tunnel: true, done: endFunc(func() {})}
	b := &recordingRWBody{recordingBody: rb, w: u}
	b.Close() // goproxy's, the client's side having ended
	if result, why, _ := rb.outcome(context.Background(), nil, nil); result != "reset" {
		t.Errorf("the destination reset the tunnel before its end; the tunnel's outcome: %s %q", result, why)
	}
}

// awaitTCPClosed waits until c's socket has taken its peer's reset (the
// TCP state CLOSE), the error still pending for the next read or write.
func awaitTCPClosed(t *testing.T, c *net.TCPConn) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		var state uint8
		_ = rc.Control(func(fd uintptr) {
			if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
				state = info.State
			}
		})
		if state == 7 { // TCP_CLOSE
			return
		}
		if time.Now().After(end) {
			t.Fatalf("the peer's reset did not come within 5 s (TCP state %d)", state)
		}
	}
}
