package netstack

import (
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A burst of GENEVE datagrams, more than one recvmmsg takes, is read whole:
// every echo request in it is answered, with its own payload, and an
// oversized datagram among them is dropped and counted as such, not taken
// for a truncated GENEVE packet.
func TestReaderBatches(t *testing.T) {
	c := gwlbSocket(t, "127.0.0.1:0")
	s := startServer(t, Config{ReplyPort: c.LocalAddr().(*net.UDPAddr).AddrPort().Port()})
	const burst = 3*maxBatch + 5
	for i := range burst {
		if i == burst/2 {
			if _, err := c.WriteToUDPAddrPort(make([]byte, readSlot+1000), s.Addr()); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := c.WriteToUDPAddrPort(geneve(7, echoPacket(uint16(i), fmt.Sprintf("req-%04d", i))), s.Addr()); err != nil {
			t.Fatal(err)
		}
	}
	seen := make(map[string]bool)
	buf := make([]byte, 65536)
	for len(seen) < burst {
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("%d of %d echo replies, then: %v; stats %+v", len(seen), burst, err, s.Stats())
		}
		h, r := ParseHeader(buf[:n])
		if r != DropNone {
			t.Fatalf("reply: %s", r)
		}
		seen[string(buf[h.Len+28:n])] = true
	}
	for i := range burst {
		if !seen[fmt.Sprintf("req-%04d", i)] {
			t.Fatalf("no reply to request %d", i)
		}
	}
	st := s.Stats()
	if st.Drops[DropDatagramTooBig.String()] != 1 || st.PacketsIn != burst+1 {
		t.Fatalf("packets_in %d (want %d), drops %v (want one %s)", st.PacketsIn, burst+1, st.Drops, DropDatagramTooBig)
	}
}

// The raw return path's socket is blocking, but its sends are tried first
// without waiting. A batch that meets a full socket must still leave whole,
// once and in order: what the non-blocking call sent is not sent again, and
// what it refused waits in an ordinary call until the receiver makes room.
// A Unix datagram socket pair stands in for the raw socket: its sender
// fills up when the receiver does not read.
func TestSendmmsgOrWaitFullSocket(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	send, recv := fds[0], fds[1]
	closed := false // by the clean-up that waits for the sender
	defer func() {
		if !closed {
			unix.Close(recv)
			unix.Close(send)
		}
	}()
	if err := unix.SetsockoptInt(send, unix.SOL_SOCKET, unix.SO_SNDBUF, 4096); err != nil {
		t.Fatal(err)
	}
	if err := unix.SetsockoptTimeval(recv, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5}); err != nil {
		t.Fatal(err)
	}
	const size = 1000
	// Fill the socket until it refuses.
	filled := 0
	for ; ; filled++ {
		if filled > 100000 {
			t.Fatal("the socket pair never filled up")
		}
		err := unix.Sendmsg(send, datagram(filled, size), nil, nil, unix.MSG_DONTWAIT)
		if err == unix.EAGAIN {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 2*size)
	next := 0 // the number of the next datagram to read
	readOne := func() {
		t.Helper()
		n, _, err := unix.Recvfrom(recv, buf, 0)
		for err == unix.EINTR {
			n, _, err = unix.Recvfrom(recv, buf, 0)
		}
		if err != nil {
			t.Fatalf("datagram %d: %v", next, err)
		}
		if want := datagram(next, size); string(buf[:n]) != string(want) {
			t.Fatalf("datagram %d: got %q..., want %q...", next, buf[:min(n, 17)], want[:17])
		}
		next++
	}
	// Room for a few: the batch's first call sends some, then is refused.
	readOne()
	readOne()

	b := getReplyBatch()
	const batch = maxBatch
	for i := range batch {
		pkt := append(b.buf()[:0], datagram(filled+i, size)...)
		b.add(pkt, netip.AddrPort{})
		b.prepareMmsg(i, 0, nil)
		b.hdrs[i].Hdr.Name, b.hdrs[i].Hdr.Namelen = nil, 0 // connected: no address
	}
	type result struct {
		n     int
		errno syscall.Errno
	}
	done := make(chan result, 1)
	go func() {
		n, e := b.sendmmsgOrWait(uintptr(send), 0, batch)
		done <- result{n, e}
	}()
	// On any failure: wake the sender, and let it finish with the batch
	// before the batch goes back to the pool.
	defer func() {
		closed = true
		unix.Close(recv)
		select {
		case <-done:
			b.release()
		case <-time.After(5 * time.Second):
			t.Error("sendmmsgOrWait still running after its receiver closed")
		}
		unix.Close(send)
	}()

	for next < filled+batch {
		readOne()
	}
	select {
	case r := <-done:
		done <- r // for the deferred clean-up
		if r.n != batch || r.errno != 0 {
			t.Fatalf("sendmmsgOrWait = %d, %v; want %d, no error", r.n, r.errno, batch)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("sendmmsgOrWait did not return after its datagrams were read")
	}
	// Nothing after the batch: a datagram sent twice would be here.
	if err := unix.SetNonblock(recv, true); err != nil {
		t.Fatal(err)
	}
	if n, _, err := unix.Recvfrom(recv, buf, 0); err != unix.EAGAIN {
		t.Fatalf("after the batch: %q, %v; want nothing more", buf[:max(n, 0)], err)
	}
}

// datagram returns size bytes numbered i.
func datagram(i, size int) []byte {
	b := make([]byte, size)
	copy(b, fmt.Sprintf("datagram %08d ", i))
	return b
}
