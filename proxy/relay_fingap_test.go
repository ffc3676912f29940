package proxy

import (
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gwlbproxy/gwlbproxy/proxy/hostconn"
)

// finGapConn is a destination's socket whose CloseWrite says its FIN is
// queued only once gap has run after the shutdown that queued it, as
// hostconn.Conn says it once its shutdown has returned: a count of the
// send queue between the two finds the FIN's sequence number there, and
// FINQueued false.
type finGapConn struct {
	*hostconn.Conn
	gap     func()
	fin     atomic.Bool
	once    sync.Once
	counted chan struct{} // closed by the first SendNotSent
}

func (c *finGapConn) CloseWrite() error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var e syscall.Errno
	if err := rc.Control(func(fd uintptr) { _, _, e = unix.RawSyscall(unix.SYS_SHUTDOWN, fd, unix.SHUT_WR, 0) }); err != nil {
		return err
	}
	if e != 0 {
		return e
	}
	c.gap()
	c.fin.Store(true)
	return nil
}

func (c *finGapConn) FINQueued() bool { return c.fin.Load() }

func (c *finGapConn) SendNotSent() (int, error) {
	c.once.Do(func() { close(c.counted) })
	return c.Conn.SendNotSent()
}

// TestRelayFINCountedWithItsShutdown: the client's FIN is passed on to a
// destination that has much of the upload still unsent in the appliance's
// socket, and the destination resets between the shutdown that queued the
// FIN and the FIN's being said queued. The destination's direction reads
// the reset and counts the queue the reset throws away: it found the
// FIN's sequence number in the counts and took it for a byte never sent,
// bytes_out one below what the destination had (1 of 25 runs of
// TestRelayFINCrossingDestinationReset, under load). Each count of the
// queue is made with the FIN as it stands.
func TestRelayFINCountedWithItsShutdown(t *testing.T) {
	ln := smallBufferListener(t)
	accepted := make(chan *net.TCPConn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c.(*net.TCPConn)
		}
	}()
	up, err := net.DialTCP("tcp4", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	var dc *net.TCPConn
	select {
	case dc = <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("accept")
	}
	t.Cleanup(func() { up.Close(); dc.Close() })
	had := make(chan int64, 1)
	g := &finGapConn{Conn: hostconn.Wrap(up).(*hostconn.Conn), counted: make(chan struct{})}
	g.gap = func() {
		had <- destinationHas(t, dc, 0)
		_ = dc.SetLinger(0)
		dc.Close() // the reset, after the FIN was queued
		select {
		case <-g.counted: // the destination's direction counting, the FIN said unqueued
		case <-time.After(time.Second): // the count waits for the FIN
		}
	}
	client, peer := loopbackPair(t)
	done := make(chan relayCounts, 1)
	startWatchedRelay(client, g, nil, nil, nil, func(n relayCounts, _ error) { done <- n })
	const upload = 24 << 10
	if _, err := peer.Write(make([]byte, upload)); err != nil {
		t.Fatal(err)
	}
	if err := peer.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	var n relayCounts
	select {
	case n = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the relay did not end")
	}
	got := <-had
	t.Logf("bytes_out %d (unacked %d), the destination had %d of %d", n.out, n.outUnacked, got, upload)
	if got >= upload {
		t.Fatalf("the destination had the whole upload: the test wants its tail unsent")
	}
	if n.out != got {
		t.Errorf("bytes_out %d, the destination had %d (diff %d)", n.out, got, n.out-got)
	}
}

// TestRelayLingerCountsNoFINAfterReset: the destination resets with much
// of the upload unsent before the client's FIN is passed on (the relay's
// shutdown finds the connection ended: ENOTCONN, no FIN queued), and the
// client breaks after its FIN: the destination lingers (closeDelivering),
// and the linger finds the connection ended. Its counts took a FIN off
// that was never queued: bytes_out one above what the destination had
// read. The record counts the queue as the reset left it.
func TestRelayLingerCountsNoFINAfterReset(t *testing.T) {
	ln := smallBufferListener(t)
	accepted := make(chan *net.TCPConn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c.(*net.TCPConn)
		}
	}()
	up, err := net.DialTCP("tcp4", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	var dc *net.TCPConn
	select {
	case dc = <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("accept")
	}
	t.Cleanup(func() { up.Close(); dc.Close() })
	hc := hostconn.Wrap(up).(*hostconn.Conn)
	const upload = 24 << 10
	if _, err := hc.Write(make([]byte, upload)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the destination's window filled
	had := destinationHas(t, dc, 0)
	cut := cutAfterDestinationReset(t, hc, dc)
	if cut == nil {
		t.Fatalf("the linger cut nothing: the destination had %d of %d", had, upload)
	}
	out := int64(upload) - cut.unsent
	t.Logf("bytes_out %d (cut %d, unacked %d: %v), the destination had %d of %d", out, cut.unsent, cut.unacked, cut.err, had, upload)
	if out != had {
		t.Errorf("bytes_out %d, the destination had %d (diff %d)", out, had, out-had)
	}
}

// TestRelayLingerOneByteNoFINAfterReset: the destination resets with one
// byte of the upload never sent (held back, as a closed window holds it),
// before the client's FIN is passed on (the relay's shutdown finds the
// connection ended: ENOTCONN, no FIN queued), and the client breaks
// after its FIN: the linger finds the connection ended with that byte
// alone in the queue. It took the byte for the FIN and said the upload
// delivered: the destination closed, the record saying nothing of the
// byte it never had (review rev33e F2). The record says the destination's
// reset and counts the byte out of bytes_out.
func TestRelayLingerOneByteNoFINAfterReset(t *testing.T) {
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	up, err := net.DialTCP("tcp4", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	dc, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close(); dc.Close() })
	hc := hostconn.Wrap(up).(*hostconn.Conn)
	rc, err := up.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_CORK, 1) }); err != nil || serr != nil {
		t.Fatal(err, serr) // the byte held back for the cork's 200 ms
	}
	if _, err := hc.Write([]byte{'x'}); err != nil {
		t.Fatal(err)
	}
	if unacked, notSent := unackedOf(hc), notSentOf(hc); unacked != 1 || notSent != 1 {
		t.Fatalf("the corked byte: %d unacknowledged, %d never sent; want 1 and 1", unacked, notSent)
	}
	cut := cutAfterDestinationReset(t, hc, dc)
	if cut == nil {
		t.Fatal("the linger said the upload delivered; the destination never had its one byte")
	}
	t.Logf("cut %d, unacked %d: %v", cut.unsent, cut.unacked, cut.err)
	if cut.unsent != 1 || cut.unacked != 0 {
		t.Errorf("cut %d never sent, %d unacknowledged; want 1 and 0", cut.unsent, cut.unacked)
	}
}

// TestRelayBreakCutCountsFINApart: the client broke after its FIN while
// its upload was still being written (breakSeen), the copy has since
// passed the FIN on, and the destination resets before the linger takes
// the socket: the reset's read ends the linger begun at the break
// (cutAfterBreak), which counted the FIN's sequence number, unsent behind
// the upload, as a byte never sent: bytes_out one below what the
// destination had read.
func TestRelayBreakCutCountsFINApart(t *testing.T) {
	ln := smallBufferListener(t)
	accepted := make(chan *net.TCPConn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c.(*net.TCPConn)
		}
	}()
	up, err := net.DialTCP("tcp4", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	var dc *net.TCPConn
	select {
	case dc = <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("accept")
	}
	t.Cleanup(func() { up.Close(); dc.Close() })
	hc := hostconn.Wrap(up).(*hostconn.Conn)
	const upload = 24 << 10
	if _, err := hc.Write(make([]byte, upload)); err != nil {
		t.Fatal(err)
	}
	r := &relay{upstream: hc}
	broke := error(syscall.ECONNRESET)
	r.breakSeen.Store(&broke)
	r.closeWrite(hc) // the FIN, behind the upload
	if !hc.FINQueued() {
		t.Fatal("no FIN queued")
	}
	time.Sleep(100 * time.Millisecond) // the destination's window filled
	had := destinationHas(t, dc, 0)
	_ = dc.SetLinger(0)
	dc.Close()
	for end := time.Now().Add(5 * time.Second); !hc.Ended(); time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("the destination's reset never came")
		}
	}
	if !r.cutAfterBreak(&net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}) {
		t.Fatal("cutAfterBreak counted nothing")
	}
	cut := r.cut.Load()
	out := int64(upload) - cut.unsent
	t.Logf("bytes_out %d (cut %d, unacked %d: %v), the destination had %d of %d", out, cut.unsent, cut.unacked, cut.err, had, upload)
	if out != had {
		t.Errorf("bytes_out %d, the destination had %d (diff %d)", out, had, out-had)
	}
}

// cutAfterDestinationReset has dc, the destination's end of hc, reset
// its connection, then plays the relay's end of the client's upload on hc
// (its FIN, which finds the connection ended: no FIN is queued) and its
// linger (closeDelivering), and returns what the linger said was cut.
func cutAfterDestinationReset(t *testing.T, hc *hostconn.Conn, dc *net.TCPConn) *lingerCut {
	t.Helper()
	_ = dc.SetLinger(0)
	dc.Close()
	for end := time.Now().Add(5 * time.Second); !hc.Ended(); time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("the destination's reset never came")
		}
	}
	r := &relay{upstream: hc}
	r.closeWrite(hc) // ENOTCONN: the client's FIN, after the reset
	if hc.FINQueued() {
		t.Fatal("a FIN was queued after the reset")
	}
	r.closeDelivering(hc)
	return r.cut.Load()
}
