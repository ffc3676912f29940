package hostconn

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// loopback is a listener on 127.0.0.1, closed when the test ends.
func loopback(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// dialAccept dials ln through d, and returns both ends.
func dialAccept(t *testing.T, d *Dialer, ln net.Listener) (*Conn, net.Conn) {
	t.Helper()
	c, err := d.DialContext(context.Background(), ln.Addr().(*net.TCPAddr).AddrPort())
	if err != nil {
		t.Fatal(err)
	}
	peer, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	return c.(*Conn), peer
}

// pending is how many descriptors wait for d's batch close.
func pending(d *Dialer) int {
	d.closer.mu.Lock()
	defer d.closer.mu.Unlock()
	return len(d.closer.pending)
}

// TestCloseSendsFINBeforeTheBatch: Close ends the connection on the wire
// at once, not when its descriptor is closed with the next batch.
func TestCloseSendsFINBeforeTheBatch(t *testing.T) {
	d := &Dialer{}
	d.closer.delay = time.Hour // the batch closes only at d.Close
	c, peer := dialAccept(t, d, loopback(t))
	c.Close()
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := peer.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("the peer read %d, %v after Close; want the FIN", n, err)
	}
	if n := pending(d); n != 1 {
		t.Errorf("%d descriptors wait for the batch, want the one closed", n)
	}
	d.Close()
	if n := pending(d); n != 0 {
		t.Errorf("%d descriptors wait after the Dialer's Close", n)
	}
}

// TestCloseWakesWaitersItself: Close wakes a read and a write waiting in
// the poller by itself, not through the batch that closes the descriptor
// (which here comes only at the Dialer's Close); and an Abort after
// Close leaves the connection to that batch, without a RST.
func TestCloseWakesWaitersItself(t *testing.T) {
	ln := loopback(t)
	d := &Dialer{}
	d.closer.delay = time.Hour
	defer d.Close()
	for _, what := range []string{"read", "write"} {
		c, _ := dialAccept(t, d, ln)
		errc := make(chan error, 1)
		go func() {
			var err error
			if what == "read" {
				_, err = c.Read(make([]byte, 1))
			} else {
				_, err = c.Write(make([]byte, 64<<20)) // the peer reads none
			}
			errc <- err
		}()
		time.Sleep(50 * time.Millisecond)
		c.Close()
		select {
		case err := <-errc:
			if !errors.Is(err, net.ErrClosed) {
				t.Errorf("the waiting %s ended with %v, want net.ErrClosed", what, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("Close did not wake the waiting %s", what)
		}
		c.Abort()
		l, err := c.TCPConn.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var linger *unix.Linger
		var lerr error
		if err := l.Control(func(fd uintptr) { linger, lerr = unix.GetsockoptLinger(int(fd), unix.SOL_SOCKET, unix.SO_LINGER) }); err != nil {
			t.Fatalf("the descriptor is closed after Abort following Close: %v", err)
		}
		if lerr != nil || linger.Onoff != 0 {
			t.Errorf("Abort after Close set a zero linger (%+v, %v): a RST would follow the FIN", linger, lerr)
		}
	}
}

// TestBatchCloses: the descriptors of closed connections are closed
// within closeDelay by the closer's own timer, and dials at once keep no
// more than a batch of spare sockets.
func TestBatchCloses(t *testing.T) {
	ln := loopback(t)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	d := &Dialer{}
	defer d.Close()
	dst := ln.Addr().(*net.TCPAddr).AddrPort()
	conns := make(chan *Conn, 32)
	for range 32 {
		go func() {
			c, err := d.DialContext(context.Background(), dst)
			if err != nil {
				t.Error(err)
				conns <- nil
				return
			}
			conns <- c.(*Conn)
		}()
	}
	var closed []*net.TCPConn
	for range 32 {
		if c := <-conns; c != nil {
			c.Close()
			closed = append(closed, c.TCPConn)
		}
	}
	d.mu.Lock()
	spare := len(d.spare[0])
	d.mu.Unlock()
	if spare > spareBatch {
		t.Errorf("%d spare sockets after dials at once, want at most %d", spare, spareBatch)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, tc := range closed {
		for tc.SetDeadline(time.Time{}) == nil { // closed: net.ErrClosed
			if time.Now().After(deadline) {
				t.Fatal("a closed connection's descriptor is still open after 5 s")
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// TestOneBatchAtATime: a dial that finds the spares empty while another
// makes a batch makes one socket for itself, and keeps none.
func TestOneBatchAtATime(t *testing.T) {
	ln := loopback(t)
	d := &Dialer{}
	defer d.Close()
	d.filling[0] = true // as if a dial were making a batch
	c, _ := dialAccept(t, d, ln)
	c.Close()
	if n := len(d.spare[0]); n != 0 {
		t.Errorf("%d spare sockets kept by a dial while another fills, want 0", n)
	}
	d.filling[0] = false
	c, _ = dialAccept(t, d, ln)
	c.Close()
	if n := len(d.spare[0]); n != spareBatch-1 {
		t.Errorf("%d spare sockets after a batch, want %d", n, spareBatch-1)
	}
}

// TestClosingBounded: at most maxClosing descriptors wait for a batch
// close, however long the batch's delay: a burst of closes must not hold
// an unbounded number of descriptors (and their sockets) open.
func TestClosingBounded(t *testing.T) {
	var cl closer
	cl.delay = time.Hour
	t.Cleanup(cl.flush)
	ln := loopback(t)
	for range maxClosing + 10 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		cl.add(c.(*net.TCPConn))
	}
	cl.mu.Lock()
	n := len(cl.pending)
	cl.mu.Unlock()
	if n >= maxClosing {
		t.Fatalf("%d descriptors wait for the batch close, want fewer than %d", n, maxClosing)
	}
}
