package intercept

import (
	"bufio"
	"context"
	"crypto/tls"
	"net"
	"sync"
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
	up, raw, d := tunnelTLSPair(t, nil)
	_ = d.SetLinger(0)
	d.Close() // its reset
	awaitTCPClosed(t, raw)

	u := &upgradedBody{br: bufio.NewReader(up), conn: up, stop: func() bool { return true }, ended: make(chan struct{}), tunnel: true}
	rb := &recordingBody{ReadCloser: u, tunnel: true, done: endFunc(func() {})}
	b := &recordingRWBody{recordingBody: rb, w: u}
	b.Close() // goproxy's, the client's side having ended
	if result, why, _ := rb.outcome(context.Background(), nil, nil); result != "reset" {
		t.Errorf("the destination reset the tunnel before its end; the tunnel's outcome: %s %q", result, why)
	}
}

// tunnelTLSPair is a tunnel's upstream: up, a TLS client over raw, its
// socket, to a loopback destination whose TCP connection is d, its TLS
// handshake done; serve, if set, then runs on d's TLS side.
func tunnelTLSPair(t *testing.T, serve func(*tls.Conn)) (up *tls.Conn, raw, d *net.TCPConn) {
	t.Helper()
	var s func(*tls.Conn, *heldWrites)
	if serve != nil {
		s = func(sc *tls.Conn, _ *heldWrites) { serve(sc) }
	}
	return tunnelTLSPairWith(t, 0, s)
}

// tunnelTLSPairWith is tunnelTLSPair with the destination's TLS version
// capped at maxVersion (0: none), and its writes through a heldWrites.
func tunnelTLSPairWith(t *testing.T, maxVersion uint16, serve func(*tls.Conn, *heldWrites)) (up *tls.Conn, raw, d *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := &tls.Config{Certificates: []tls.Certificate{*tunnelTestLeaf(t)}, MaxVersion: maxVersion}
	dest := make(chan *net.TCPConn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(dest)
			return
		}
		hw := &heldWrites{Conn: c}
		sc := tls.Server(hw, cfg)
		if sc.Handshake() != nil {
			c.Close()
			close(dest)
			return
		}
		dest <- c.(*net.TCPConn)
		if serve != nil {
			serve(sc, hw)
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	up = tls.Client(c, &tls.Config{ServerName: "up.example", InsecureSkipVerify: true})
	if err := up.Handshake(); err != nil {
		t.Fatal(err)
	}
	d, ok := <-dest
	if !ok {
		t.Fatal("the destination's handshake failed")
	}
	t.Cleanup(func() { d.Close() })
	return up, c.(*net.TCPConn), d
}

var tunnelLeaf struct {
	once sync.Once
	leaf *tls.Certificate
	err  error
}

// tunnelTestLeaf is a certificate for up.example, made once.
func tunnelTestLeaf(t *testing.T) *tls.Certificate {
	t.Helper()
	tunnelLeaf.once.Do(func() {
		ca, err := certs.Generate("tunnel drain test CA")
		if err != nil {
			tunnelLeaf.err = err
			return
		}
		m, err := certs.NewMinter(ca, certs.MinterOptions{})
		if err != nil {
			tunnelLeaf.err = err
			return
		}
		tunnelLeaf.leaf, tunnelLeaf.err = m.LeafFor([]string{"up.example"}, nil)
	})
	if tunnelLeaf.err != nil {
		t.Fatal(tunnelLeaf.err)
	}
	return tunnelLeaf.leaf
}

// heldWrites is a destination's socket whose writes, while held, wait
// to leave in one write (release): a last message and its close_notify
// in one segment, as a server that writes both before the socket drains
// sends them.
type heldWrites struct {
	net.Conn
	mu   sync.Mutex
	hold bool
	buf  []byte
}

func (c *heldWrites) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.hold {
		c.buf = append(c.buf, p...)
		return len(p), nil
	}
	return c.Conn.Write(p)
}

func (c *heldWrites) setHold() {
	c.mu.Lock()
	c.hold = true
	c.mu.Unlock()
}

func (c *heldWrites) release() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hold = false
	_ = c.Conn.SetWriteDeadline(time.Time{}) // tls's CloseWrite set one
	_, err := c.Conn.Write(c.buf)
	c.buf = nil
	return err
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
