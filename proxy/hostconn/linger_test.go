package hostconn_test

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/hostconn"
)

// lingerPair returns a loopback connection's two ends: ours, whose
// socket Linger works on, and the peer's.
func lingerPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ours, err := net.DialTCP("tcp4", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	peer, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ours.Close(); peer.Close() })
	return ours, peer
}

// TestLingerDeliversToTalkingPeer: a peer that keeps sending and reads
// only later gets every byte and the FIN of what was written before the
// linger; Linger says all was delivered once it has.
func TestLingerDeliversToTalkingPeer(t *testing.T) {
	ours, peer := lingerPair(t)
	const size = 1 << 20
	stop := make(chan struct{})
	defer close(stop)
	go func() { // the peer keeps talking
		for range 2000 {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			if _, err := peer.Write(make([]byte, 512)); err != nil {
				return
			}
		}
	}()
	wrote := make(chan error, 1)
	go func() { _, err := ours.Write(make([]byte, size)); wrote <- err }()
	type result struct {
		unsent int
		err    error
	}
	lingered := make(chan result, 1)
	go func() {
		if err := <-wrote; err != nil {
			lingered <- result{-1, err}
			return
		}
		rc, _ := ours.SyscallConn()
		n, err := hostconn.Linger(rc, make([]byte, 64<<10), 10*time.Second)
		lingered <- result{n, err}
	}()
	time.Sleep(200 * time.Millisecond) // a slow reader: the scenario, not a wait for an event
	_ = peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := io.Copy(io.Discard, peer)
	if n != size || err != nil {
		t.Errorf("the peer got %d of %d bytes, ended by %v; want all and the FIN", n, size, err)
	}
	select {
	case r := <-lingered:
		if r.unsent != 0 || r.err != nil {
			t.Errorf("Linger: %d unsent, %v; want all delivered", r.unsent, r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Linger still waits after the peer took it all")
	}
}

// TestLingerBoundedForPeerThatReadsNothing: a peer that reads nothing
// leaves the tail unacknowledged; Linger gives up after its bound and
// says how much was left.
func TestLingerBoundedForPeerThatReadsNothing(t *testing.T) {
	ours, peer := lingerPair(t)
	_ = peer.SetReadBuffer(4096)
	_ = ours.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
	_, _ = ours.Write(make([]byte, 4<<20)) // as much as the buffers take
	rc, _ := ours.SyscallConn()
	start := time.Now()
	n, err := hostconn.Linger(rc, make([]byte, 4096), 300*time.Millisecond)
	if !errors.Is(err, hostconn.ErrTailUndelivered) || n == 0 {
		t.Errorf("Linger: %d unsent, %v; want bytes unsent and ErrTailUndelivered", n, err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Linger took %v, bound 300ms", d)
	}
}
