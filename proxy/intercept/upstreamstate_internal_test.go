package intercept

import (
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gwlbproxy/gwlbproxy/proxy/hostconn"
)

// upstreamResetPair is a connected pair of loopback TCP sockets: ours
// (the upstream's) and the destination's.
func upstreamResetPair(t *testing.T) (ours, peer *net.TCPConn) {
	t.Helper()
	a, b := tcpPair(t)
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

// tcpState is c's TCP state (Linux's), 255 when it cannot be read.
func tcpState(c *net.TCPConn) uint8 {
	rc, err := c.SyscallConn()
	if err != nil {
		return 255
	}
	st := uint8(255)
	_ = rc.Control(func(fd uintptr) {
		if ti, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			st = ti.State
		}
	})
	return st
}

// awaitTCPState waits, a second at most, for c to reach state.
func awaitTCPState(t *testing.T, c *net.TCPConn, state uint8) {
	t.Helper()
	for deadline := time.Now().Add(time.Second); tcpState(c) != state; {
		if time.Now().After(deadline) {
			t.Fatalf("state %d, not %d", tcpState(c), state)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// upstreamReset says a reset (or the host's timeout) of an upstream
// socket, and nothing else: a connection both ends closed cleanly leaves
// it CLOSE too, and was taken for a reset (review r5s27 F3).
func TestUpstreamResetStates(t *testing.T) {
	const (
		established = 1
		finWait2    = 5
		closeWait   = 8
	)
	resetBy := func(peer *net.TCPConn) {
		peer.SetLinger(0)
		peer.Close()
	}
	for _, tc := range []struct {
		name  string
		do    func(t *testing.T, ours, peer *net.TCPConn)
		state uint8 // ours once done
		reset bool
	}{
		{"established", func(t *testing.T, ours, peer *net.TCPConn) {}, established, false},
		{"the peer's FIN (CLOSE_WAIT)", func(t *testing.T, ours, peer *net.TCPConn) { peer.CloseWrite() }, closeWait, false},
		{"the peer's FIN, its data unread", func(t *testing.T, ours, peer *net.TCPConn) {
			peer.Write([]byte("x"))
			peer.CloseWrite()
		}, closeWait, false},
		{"our FIN (FIN_WAIT2)", func(t *testing.T, ours, peer *net.TCPConn) { ours.CloseWrite() }, finWait2, false},
		{"our FIN, then the peer's (CLOSE behind TIME_WAIT)", func(t *testing.T, ours, peer *net.TCPConn) {
			ours.CloseWrite()
			awaitTCPState(t, ours, finWait2)
			peer.CloseWrite()
		}, tcpClose, false},
		{"the peer's FIN, then ours (LAST_ACK, then CLOSE)", func(t *testing.T, ours, peer *net.TCPConn) {
			peer.CloseWrite()
			awaitTCPState(t, ours, closeWait)
			ours.CloseWrite()
		}, tcpClose, false},
		{"the peer's reset (ESTABLISHED)", func(t *testing.T, ours, peer *net.TCPConn) { resetBy(peer) }, tcpClose, true},
		{"the peer's FIN, then its reset (CLOSE_WAIT)", func(t *testing.T, ours, peer *net.TCPConn) {
			peer.CloseWrite()
			awaitTCPState(t, ours, closeWait)
			resetBy(peer)
		}, tcpClose, true},
		{"our FIN, then the peer's reset (FIN_WAIT2)", func(t *testing.T, ours, peer *net.TCPConn) {
			ours.CloseWrite()
			awaitTCPState(t, ours, finWait2)
			resetBy(peer)
		}, tcpClose, true},
	} {
		for _, wrapped := range []bool{false, true} {
			name := tc.name
			if wrapped {
				name += ", hostconn"
			}
			t.Run(name, func(t *testing.T) {
				ours, peer := upstreamResetPair(t)
				tc.do(t, ours, peer)
				awaitTCPState(t, ours, tc.state)
				var c net.Conn = ours
				if wrapped {
					c = hostconn.Wrap(ours)
				}
				err := upstreamReset(c)
				if tc.reset != (err != nil) || tc.reset && !errors.Is(err, syscall.ECONNRESET) {
					t.Fatalf("upstreamReset: %v, want a reset: %v", err, tc.reset)
				}
				if tc.reset {
					return
				}
				// Asked again, it says the same (nothing of the socket's
				// taken).
				if err := upstreamReset(c); err != nil {
					t.Fatalf("upstreamReset, asked again: %v", err)
				}
			})
		}
	}
	// Our own close leaves no socket to ask.
	ours, _ := upstreamResetPair(t)
	ours.Close()
	if err := upstreamReset(ours); err != nil {
		t.Fatalf("upstreamReset after our close: %v", err)
	}
}
