package netstack

import (
	"errors"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"
)

// connHandler hands each UDP flow's conn to the test, unread.
type connHandler struct {
	testHandler
	conns chan net.Conn
}

func (h *connHandler) HandleUDP(_ FlowInfo, conn net.Conn) { h.conns <- conn }

// udpConnRig is a server, a GWLB socket sending to it, and the first UDP
// flow's conn.
type udpConnRig struct {
	t    *testing.T
	s    *Server
	gwlb *net.UDPConn
	conn *UDPConn
}

func newUDPConnRig(t *testing.T) *udpConnRig {
	t.Helper()
	h := &connHandler{conns: make(chan net.Conn, 1)}
	r := &udpConnRig{t: t, gwlb: gwlbSocket(t, "127.0.0.1:0")}
	r.s = startServer(t, Config{Handler: h, ReplyPort: r.gwlb.LocalAddr().(*net.UDPAddr).AddrPort().Port()})
	r.send(100)
	select {
	case c := <-h.conns:
		var ok bool
		if r.conn, ok = c.(*UDPConn); !ok {
			t.Fatalf("HandleUDP got a %T, want *UDPConn", c)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no UDP flow reached the handler; stats %+v", r.s.Stats())
	}
	t.Cleanup(func() { r.conn.Close() })
	return r
}

// send sends a datagram of the flow with payload bytes.
func (r *udpConnRig) send(payload int) {
	r.t.Helper()
	if _, err := r.gwlb.WriteToUDP(geneve(0x0123456789abcdef, udpPacket(5000, payload)), net.UDPAddrFromAddrPort(r.s.Addr())); err != nil {
		r.t.Fatal(err)
	}
}

// TestUDPConnReadiness: OnReadable announces a datagram that arrives to an
// empty queue, TryRead reads without waiting, and Close announces itself
// and ends reads.
func TestUDPConnReadiness(t *testing.T) {
	r := newUDPConnRig(t)
	c := r.conn
	buf := make([]byte, 2048)
	// The flow's first datagram is queued before anyone could be told.
	if n, err := c.TryRead(buf); err != nil || n != 100 {
		t.Fatalf("TryRead of the first datagram: %d, %v", n, err)
	}
	if _, err := c.TryRead(buf); err != ErrWouldBlock {
		t.Fatalf("TryRead of an empty queue: %v, want ErrWouldBlock", err)
	}
	var calls atomic.Int64
	ready := make(chan struct{}, 8)
	c.OnReadable(func() {
		calls.Add(1)
		ready <- struct{}{}
	})
	r.send(7)
	select {
	case <-ready:
	case <-time.After(5 * time.Second):
		t.Fatal("a datagram was not announced")
	}
	if n, err := c.TryRead(buf); err != nil || n != 7 {
		t.Fatalf("TryRead after the announcement: %d, %v", n, err)
	}
	// A reply goes back to the GWLB under the flow's header.
	if n, err := c.Write([]byte("reply")); err != nil || n != 5 {
		t.Fatalf("Write: %d, %v", n, err)
	}
	r.gwlb.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := r.gwlb.Read(buf); err != nil || n < 5 || string(buf[n-5:n]) != "reply" {
		t.Fatalf("the GWLB got %q, %v", buf[:max(n, 0)], err)
	}
	before := calls.Load()
	c.Close()
	if calls.Load() == before {
		t.Fatal("Close was not announced")
	}
	if _, err := c.TryRead(buf); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("TryRead after Close: %v, want net.ErrClosed", err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close: %v, want net.ErrClosed", err)
	}
}

// TestUDPConnReadDeadline: Read waits for a datagram until its deadline,
// and a deadline set while it waits applies to it.
func TestUDPConnReadDeadline(t *testing.T) {
	r := newUDPConnRig(t)
	c := r.conn
	buf := make([]byte, 2048)
	if n, err := c.Read(buf); err != nil || n != 100 {
		t.Fatalf("Read of the first datagram: %d, %v", n, err)
	}
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	start := time.Now()
	if _, err := c.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past its deadline: %v", err)
	}
	if d := time.Since(start); d < 80*time.Millisecond || d > 3*time.Second {
		t.Fatalf("Read returned after %s, want about 100ms", d)
	}
	c.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() {
		_, err := c.Read(buf)
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	c.SetReadDeadline(time.Now()) // wakes the waiting Read
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("a waiting Read ended with %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("a new deadline did not reach a waiting Read")
	}
	c.SetReadDeadline(time.Time{})
	go func() {
		_, err := c.Read(buf)
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	c.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("a Read waiting at Close ended with %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Close did not end a waiting Read")
	}
}

// TestUDPConnNoAllocs: reading a waiting datagram and writing one allocate
// nothing of the conn's, the link's or the return path's own.
func TestUDPConnNoAllocs(t *testing.T) {
	r := newUDPConnRig(t)
	c := r.conn
	buf := make([]byte, 2048)
	c.TryRead(buf)
	const n = 50
	for range n {
		r.send(10)
	}
	deadline := time.Now().Add(5 * time.Second)
	for c.ep.Readiness(udpReadEvents) == 0 || r.s.Stats().PacketsIn < n+1 {
		if time.Now().After(deadline) {
			t.Fatal("the datagrams did not arrive")
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	if a := testing.AllocsPerRun(n-10, func() {
		if _, err := c.TryRead(buf); err != nil {
			t.Fatal(err)
		}
	}); a > 1 {
		t.Errorf("TryRead allocates %.1f times a datagram", a)
	}
	t.Logf("TryRead: %.1f allocations a datagram", testing.AllocsPerRun(1, func() { c.TryRead(buf) }))
	// gVisor's UDP write path allocates twice (a limited reader for the
	// payload, and in making the packet buffer); the link and the return
	// path allocate nothing. A third allocation here was gVisor's default
	// queueing discipline putting every packet in a list of its own.
	msg := []byte("reply")
	if a := testing.AllocsPerRun(100, func() {
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
	}); a > 2 && !raceEnabled {
		t.Errorf("Write allocates %.1f times a datagram, want at most gVisor's 2 (re-measure after a gVisor upgrade)", a)
	}
}
