package netstack

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// After close, the raw return path refuses to send, one datagram or a
// batch, with net.ErrClosed (as the bound path's sockets do), rather than
// calling sendto on a file descriptor number the kernel may already have
// given to another socket.
func TestRawReturnRefusesSendsAfterClose(t *testing.T) {
	r, _, lo := newRawReturnRig(t)
	if r == nil {
		return
	}
	if err := r.close(); err != nil {
		t.Fatal(err)
	}
	pkt := make([]byte, outerHeadroom+8)
	if err := r.send(pkt, netip.AddrPortFrom(lo, 40000)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("send after close: %v, want net.ErrClosed", err)
	}
	b, want := batchCase([2]uint16{40001, 40002}, lo)
	defer b.release()
	failed, err := r.sendBatch(b)
	if !errors.Is(err, net.ErrClosed) || failed != len(want) {
		t.Errorf("sendBatch after close: %d of %d failed, %v; want all, net.ErrClosed", failed, len(want), err)
	}
	if err := r.close(); err != nil {
		t.Errorf("a second close: %v", err)
	}
}

// echoCapture holds the echo requests it is given, for a test to answer
// when it chooses.
type echoCapture struct {
	testHandler
	reqs chan EchoRequest
}

func (h *echoCapture) HandleEcho(req EchoRequest) { h.reqs <- req }

// A reply that comes after Server.Close (here the echo relay's, which the
// appliance stops after the netstack) is dropped as a send error, and is
// not written into whatever socket of the process has since been given
// the raw return path's old file descriptor number: a connection to
// CloudWatch, a relay, would get a GENEVE datagram with a client's bytes
// in the middle of its stream.
func TestRawReturnReplyAfterCloseGoesNowhere(t *testing.T) {
	if r, _, _ := newRawReturnRig(t); r == nil {
		return // no CAP_NET_RAW
	}
	h := &echoCapture{reqs: make(chan EchoRequest, 1)}
	s := startServer(t, Config{Handler: h, ReturnPath: ReturnPathRaw})
	rawfd := s.ret.(*rawReturn).fd
	g := gwlbSocket(t, "127.0.0.2:40000")
	if _, err := g.WriteToUDPAddrPort(geneve(7, echoPacket(1, "ping")), s.Addr()); err != nil {
		t.Fatal(err)
	}
	var req EchoRequest
	select {
	case req = <-h.reqs:
	case <-time.After(5 * time.Second):
		t.Fatal("no echo request reached the handler")
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	s.Close()

	// Open connections until one end has the raw socket's old number. The
	// other end is where bytes written into it would arrive.
	var peer net.Conn
	for i := 0; i < 64 && peer == nil; i++ {
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		sc, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		defer sc.Close()
		switch rawfd {
		case connFD(t, c):
			peer = sc
		case connFD(t, sc):
			peer = c
		}
	}
	if peer == nil {
		t.Logf("fd %d not reused by 64 connections: only the send error is checked", rawfd)
	}
	const payload = "ECHO-PAYLOAD-FROM-THE-DESTINATION"
	before := s.Stats().Drops[DropSendError.String()]
	req.Reply([]byte(payload))
	if got := s.Stats().Drops[DropSendError.String()]; got != before+1 {
		t.Errorf("send errors %d after the late reply, want %d", got, before+1)
	}
	if peer != nil {
		peer.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		buf := make([]byte, 4096)
		n, _ := io.ReadAtLeast(peer, buf, 1)
		if n > 0 {
			t.Errorf("an unrelated connection that reused the raw return path's fd %d received %d bytes of a reply (payload in it: %v): % x",
				rawfd, n, bytes.Contains(buf[:n], []byte(payload)), buf[:min(n, 64)])
		}
	}
}

// connFD returns the file descriptor number of c.
func connFD(t *testing.T, c net.Conn) int {
	t.Helper()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	fd := -1
	if err := rc.Control(func(f uintptr) { fd = int(f) }); err != nil {
		t.Fatal(err)
	}
	return fd
}

// TestBoundReturnRefusesSendsAfterClose: the bound return path makes a
// socket for a GWLB source port on its first reply. After close, a late
// reply (the echo relay's, a delayed ACK's) for a port with no socket yet
// used to bind a new one, leave through it, and leave it open for good.
// It now fails with net.ErrClosed, binding nothing.
func TestBoundReturnRefusesSendsAfterClose(t *testing.T) {
	ln, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	gwlb, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.2:0")))
	if err != nil {
		t.Fatal(err)
	}
	defer gwlb.Close()
	var fallbacks atomic.Uint64
	r := newBoundReturn(netip.MustParseAddr("127.0.0.1"), ln, gwlb.LocalAddr().(*net.UDPAddr).AddrPort().Port(), &fallbacks)
	if err := r.close(); err != nil {
		t.Fatal(err)
	}
	pkt := append(make([]byte, outerHeadroom), "late GENEVE datagram"...)
	if err := r.send(pkt, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), 41234)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("send after close: %v, want net.ErrClosed", err)
	}
	gwlb.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, _, err := gwlb.ReadFromUDPAddrPort(make([]byte, 100)); err == nil {
		t.Errorf("a %d-byte datagram sent after close arrived", n)
	}
	for port, c := range r.socks {
		if c.conn != ln {
			c.conn.Close()
			t.Errorf("a socket for port %d was bound after close", port)
		}
	}
}
