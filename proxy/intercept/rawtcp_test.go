package intercept

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection, the dialled one
// wrapped in rawTCP.
func tcpPair(t *testing.T) (*rawTCP, *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	peer, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); peer.Close() })
	return newRawTCP(c).(*rawTCP), peer
}

// TestRawTCPAsNetConn: rawTCP behaves as the net.TCPConn under it would:
// whole writes (bigger than the socket buffers, so they wait for room),
// reads that wait for bytes, EOF, deadlines as timeouts, and errors after
// Close and after the peer's reset.
func TestRawTCPAsNetConn(t *testing.T) {
	c, peer := tcpPair(t)

	// 8 MiB each way outgrows the socket buffers: the writer must wait
	// for the reader, in the poller.
	want := bytes.Repeat([]byte("gwlbproxy"), 1<<20)
	got := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(peer, int64(len(want))))
		got <- b
	}()
	if n, err := c.Write(want); n != len(want) || err != nil {
		t.Fatalf("Write: %d of %d bytes, %v", n, len(want), err)
	}
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("the peer read %d bytes, not what was written", len(b))
	}
	go peer.Write(want)
	if b, err := io.ReadAll(io.LimitReader(c, int64(len(want)))); err != nil || !bytes.Equal(b, want) {
		t.Fatalf("Read: %d bytes, %v", len(b), err)
	}

	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past the deadline: %v, want a timeout", err)
	}
	c.SetReadDeadline(time.Time{})

	peer.CloseWrite()
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("Read after the peer's FIN: %d, %v; want io.EOF", n, err)
	}
	c.Close()
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close: %v, want net.ErrClosed", err)
	}
}

// TestRawTCPResetAndAbort: the peer's reset is a read error with its errno;
// Abort resets the connection, as for a net.TCPConn.
func TestRawTCPResetAndAbort(t *testing.T) {
	c, peer := tcpPair(t)
	peer.SetLinger(0)
	peer.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("Read after the peer's reset: %v, want ECONNRESET", err)
	}

	c, peer = tcpPair(t)
	Abort(c)
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := peer.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the peer read %v after Abort, want ECONNRESET", err)
	}
}
