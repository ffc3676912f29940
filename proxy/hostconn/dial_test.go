package hostconn_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gwlbproxy/gwlbproxy/proxy/hostconn"
)

// listen is a TCP listener on addr ("127.0.0.1:0", "[::1]:0") whose
// accepted connections come out of the returned channel; nil when the
// address family is not there.
func listen(t *testing.T, addr string) (netip.AddrPort, <-chan net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return netip.AddrPort{}, nil
	}
	t.Cleanup(func() { ln.Close() })
	ch := make(chan net.Conn, 64)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(ch)
				return
			}
			t.Cleanup(func() { c.Close() })
			ch <- c
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort(), ch
}

func accepted(t *testing.T, ch <-chan net.Conn) net.Conn {
	t.Helper()
	select {
	case c := <-ch:
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("no connection accepted in 5 s")
		return nil
	}
}

// send writes msg on from and checks that to reads it.
func send(t *testing.T, from, to net.Conn, msg string) {
	t.Helper()
	if _, err := from.Write([]byte(msg)); err != nil {
		t.Fatalf("write %q: %v", msg, err)
	}
	b := make([]byte, len(msg))
	if _, err := io.ReadFull(to, b); err != nil || string(b) != msg {
		t.Fatalf("read %q, %v; want %q", b, err, msg)
	}
}

// wantFIN checks that the next read from peer meets the end of the
// stream, within 2 s.
func wantFIN(t *testing.T, peer net.Conn, after string) {
	t.Helper()
	peer.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := peer.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("the peer read %d, %v after %s; want the FIN", n, err, after)
	}
}

// wantClosed checks that a read or write waiting (its error comes from
// errc) ended with net.ErrClosed within 2 s.
func wantClosed(t *testing.T, errc <-chan error, what string) {
	t.Helper()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("the waiting %s ended with %v, want net.ErrClosed", what, err)
		}
	case <-time.After(2 * time.Second):
		t.Fatalf("Close did not wake the waiting %s", what)
	}
}

// connect dials dst through d and returns both ends, the peer's from ch.
func connect(t *testing.T, ctx context.Context, d *hostconn.Dialer, dst netip.AddrPort, ch <-chan net.Conn) (net.Conn, net.Conn) {
	t.Helper()
	c, err := d.DialContext(ctx, dst)
	if err != nil {
		t.Fatalf("dial %s: %v", dst, err)
	}
	return c, accepted(t, ch)
}

func dialer(t *testing.T) *hostconn.Dialer {
	d := &hostconn.Dialer{Timeout: 5 * time.Second, KeepAlive: 45 * time.Second}
	t.Cleanup(d.Close)
	return d
}

func sockopt(t *testing.T, c net.Conn, level, opt int) int {
	t.Helper()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var gerr error
	if err := rc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), level, opt) }); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	return v
}

// TestDialConnects: a dialled connection knows both its addresses as the
// peer sees them, carries bytes both ways, and has the options the net
// package's Dialer would set: TCP_NODELAY, keep-alive after KeepAlive.
func TestDialConnects(t *testing.T) {
	d := dialer(t)
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		dst, ch := listen(t, addr)
		if ch == nil {
			t.Logf("%s: no such address here, skipped", addr)
			continue
		}
		c, peer := connect(t, context.Background(), d, dst, ch)
		if got, want := c.LocalAddr().String(), peer.RemoteAddr().String(); got != want {
			t.Errorf("LocalAddr %s, the peer sees %s", got, want)
		}
		if got, want := c.RemoteAddr().String(), peer.LocalAddr().String(); got != want {
			t.Errorf("RemoteAddr %s, the peer is %s", got, want)
		}
		send(t, c, peer, "ping")
		send(t, peer, c, "pong")
		if v := sockopt(t, c, unix.IPPROTO_TCP, unix.TCP_NODELAY); v == 0 {
			t.Error("TCP_NODELAY is off")
		}
		if v := sockopt(t, c, unix.SOL_SOCKET, unix.SO_KEEPALIVE); v == 0 {
			t.Error("SO_KEEPALIVE is off")
		}
		if v := sockopt(t, c, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE); v != 45 {
			t.Errorf("TCP_KEEPIDLE %d s, want 45", v)
		}
		c.Close()
	}
}

// TestDialMany: more dials than a batch of sockets made ahead, each with
// a port of its own, all working.
func TestDialMany(t *testing.T) {
	d := dialer(t)
	dst, ch := listen(t, "127.0.0.1:0")
	ports := map[string]bool{}
	for i := range 50 {
		c, peer := connect(t, context.Background(), d, dst, ch)
		if ports[c.LocalAddr().String()] {
			t.Fatalf("dial %d: local address %s twice", i, c.LocalAddr())
		}
		ports[c.LocalAddr().String()] = true
		send(t, c, peer, fmt.Sprint(i))
		c.Close()
	}
}

// TestDialRefused: a refused connect is the net package's kind of error,
// which records tell apart from others.
func TestDialRefused(t *testing.T) {
	d := dialer(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dst := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()
	_, err = d.DialContext(context.Background(), dst)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial a closed port: %v, want ECONNREFUSED", err)
	}
	if oe, ok := errors.AsType[*net.OpError](err); !ok || oe.Op != "dial" || oe.Addr.String() != dst.String() {
		t.Errorf("error %#v, want a dial OpError for %s", err, dst)
	}
}

// fullListener is a loopback listener whose accept queue is full: a SYN
// to it goes unanswered, and a connect waits.
func fullListener(t *testing.T) netip.AddrPort {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	dst := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*unix.SockaddrInet4).Port))
	// A backlog of 0 queues one connection; the next SYN is dropped.
	first, err := net.DialTimeout("tcp", dst.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { first.Close() })
	return dst
}

// TestDialWaitsBounded: a connect that gets no answer ends at the
// Dialer's Timeout as a timeout, at its context's deadline as a timeout
// (as the net package's Dialer says it), and when its context is canceled
// as context.Canceled.
func TestDialWaitsBounded(t *testing.T) {
	dst := fullListener(t)
	d := &hostconn.Dialer{Timeout: 200 * time.Millisecond}
	t.Cleanup(d.Close)
	start := time.Now()
	_, err := d.DialContext(context.Background(), dst)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("dial with no answer: %v, want a timeout", err)
	}
	if el := time.Since(start); el < 150*time.Millisecond || el > 3*time.Second {
		t.Errorf("the timeout of 200 ms took %v", el)
	}

	d.Timeout = 0
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	_, err = d.DialContext(ctx, dst)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("dial whose context ends: %v, want context.Canceled", err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err = d.DialContext(ctx, dst)
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("dial past its context's deadline: %v, want a timeout", err)
	}
}

// TestDialTimeoutBoundsUnderALaterContextDeadline: Timeout bounds a
// connect besides the context's deadline (Dialer.Timeout), so a caller's
// context with a later deadline cannot lift the proxy's dial bound
// (cfg.DialTimeout) and hold a flow on a destination that never answers.
func TestDialTimeoutBoundsUnderALaterContextDeadline(t *testing.T) {
	dst := fullListener(t)
	d := &hostconn.Dialer{Timeout: 200 * time.Millisecond}
	t.Cleanup(d.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	start := time.Now()
	_, err := d.DialContext(ctx, dst)
	if el := time.Since(start); err == nil || el > 2*time.Second {
		t.Fatalf("dial with Timeout 200ms under a 4s context: %v after %v, want a timeout after about 200ms", err, el)
	}
}

// TestDialKeepAliveByDefault: a Dialer with KeepAlive 0 turns keep-alive
// probes on after 15 s idle (Dialer.KeepAlive), so a destination that
// vanished without a FIN or RST ends its relayed flow as a timeout rather
// than holding it until the flow's idle timeout.
func TestDialKeepAliveByDefault(t *testing.T) {
	d := &hostconn.Dialer{Timeout: 5 * time.Second}
	t.Cleanup(d.Close)
	dst, ch := listen(t, "127.0.0.1:0")
	c, _ := connect(t, context.Background(), d, dst, ch)
	defer c.Close()
	if v := sockopt(t, c, unix.SOL_SOCKET, unix.SO_KEEPALIVE); v == 0 {
		t.Error("SO_KEEPALIVE is off")
	}
	if v := sockopt(t, c, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE); v != 15 {
		t.Errorf("TCP_KEEPIDLE %d s, want 15", v)
	}
}

// TestCloseEndsAtOnce: Close sends the FIN at once and wakes a read
// waiting; the connection is unusable after it; and the descriptors of
// closed connections and of spare sockets are all released in the end.
func TestCloseEndsAtOnce(t *testing.T) {
	dst, ch := listen(t, "127.0.0.1:0")
	before := openFiles(t)
	d := &hostconn.Dialer{}
	c, peer := connect(t, context.Background(), d, dst, ch)

	readErr := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 10))
		readErr <- err
	}()
	time.Sleep(50 * time.Millisecond) // the read waits in the poller
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	wantClosed(t, readErr, "read")
	wantFIN(t, peer, "Close")
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write after Close: %v", err)
	}
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("read after Close: %v", err)
	}
	if err := c.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close: %v", err)
	}
	peer.Close()

	// Many more, so that batches of sockets are made and closed, then
	// the Dialer's own.
	for range 40 {
		c, peer := connect(t, context.Background(), d, dst, ch)
		peer.Close()
		c.Close()
	}
	d.Close()
	deadline := time.Now().Add(2 * time.Second)
	for openFiles(t) > before && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := openFiles(t); n > before {
		t.Errorf("%d descriptors open, %d before: closed connections or spare sockets kept", n, before)
	}
}

// openFiles counts this process's open descriptors.
func openFiles(t *testing.T) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd:", err)
	}
	return len(es)
}

// TestCloseWakesWrite: a write waiting for room in a full send buffer
// returns net.ErrClosed when the connection is closed.
func TestCloseWakesWrite(t *testing.T) {
	d := dialer(t)
	dst, ch := listen(t, "127.0.0.1:0")
	c, _ := connect(t, context.Background(), d, dst, ch) // the peer never reads
	writeErr := make(chan error, 1)
	go func() {
		_, err := c.Write(make([]byte, 64<<20))
		writeErr <- err
	}()
	time.Sleep(100 * time.Millisecond)
	c.Close()
	wantClosed(t, writeErr, "write")
}

// TestAbortAndCloseWrite: Abort resets the connection at once; CloseWrite
// sends a FIN and the peer's bytes still arrive.
func TestAbortAndCloseWrite(t *testing.T) {
	d := dialer(t)
	dst, ch := listen(t, "127.0.0.1:0")

	c, peer := connect(t, context.Background(), d, dst, ch)
	c.(interface{ Abort() }).Abort()
	peer.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := peer.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the peer read %v after Abort, want ECONNRESET", err)
	}

	c, peer = connect(t, context.Background(), d, dst, ch)
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	wantFIN(t, peer, "CloseWrite")
	send(t, peer, c, "late")
	c.Close()
}

// TestDialDeadlineEnds: the deadline a dial waits under is gone once it
// has connected, and so is its context's hold: the connection outlives
// both.
func TestDialDeadlineEnds(t *testing.T) {
	dst, ch := listen(t, "127.0.0.1:0")
	d := &hostconn.Dialer{Timeout: 100 * time.Millisecond}
	t.Cleanup(d.Close)
	c, peer := connect(t, context.Background(), d, dst, ch)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	c2, peer2 := connect(t, ctx, d, dst, ch)
	cancel()
	time.Sleep(250 * time.Millisecond) // past the Timeout and the context's deadline
	send(t, c, peer, "after the timeout")
	send(t, peer, c, "back")
	send(t, c2, peer2, "after the context")
	send(t, peer2, c2, "back")
	c.Close()
	c2.Close()
}

// TestErrorsNameTheConnection: an error of a dialled connection names
// its addresses, which its socket did not have when it was made.
func TestErrorsNameTheConnection(t *testing.T) {
	d := dialer(t)
	dst, ch := listen(t, "127.0.0.1:0")
	c, _ := connect(t, context.Background(), d, dst, ch)
	c.SetReadDeadline(time.Now())
	_, err := c.Read(make([]byte, 1))
	oe, ok := errors.AsType[*net.OpError](err)
	if !ok || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v", err)
	}
	if oe.Source.String() != c.LocalAddr().String() || oe.Addr.String() != dst.String() {
		t.Errorf("the error %q names %v and %v, want %v and %v", err, oe.Source, oe.Addr, c.LocalAddr(), dst)
	}
	c.(interface{ Abort() }).Abort()
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("read after Abort: %v", err)
	}
}

// TestDialConcurrent: dials at once all connect, while batches are made.
func TestDialConcurrent(t *testing.T) {
	d := dialer(t)
	dst, ch := listen(t, "127.0.0.1:0")
	errc := make(chan error, 40)
	conns := make(chan net.Conn, 40)
	for range 40 {
		go func() {
			c, err := d.DialContext(context.Background(), dst)
			if err == nil {
				conns <- c
			}
			errc <- err
		}()
	}
	for range 40 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		accepted(t, ch)
		(<-conns).Close()
	}
}
