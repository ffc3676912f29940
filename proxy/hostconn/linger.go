package hostconn

import (
	"errors"
	"fmt"
	"math"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A destination that has been sent a client's whole upload may still hold
// its tail in the host socket's send buffer when the client goes. A close
// then is no way to deliver it: the destination's bytes that nobody will
// read make close(2) answer with a RST (RFC 2525), which throws the send
// queue away, and a destination that keeps sending has more such bytes
// for every close, however late. Linger keeps the socket open instead,
// reading and dropping what the destination sends, until the destination
// has acknowledged the tail and the FIN, or a bound has passed.

// lingerPollMax caps Linger's wait between looks at the send queue: the
// kernel says nothing when a peer that sends nothing acknowledges bytes
// (a socket shut for writing is always writable), so Linger polls, first
// often (most tails go within a few round trips), then less.
const lingerPollMax = 50 * time.Millisecond

// ErrTailUndelivered is Linger's when its bound passed before the peer
// acknowledged all the socket had to send.
var ErrTailUndelivered = errors.New("the destination did not acknowledge all it was sent")

// Linger ends the sending side of the socket under rc (its FIN goes after
// what the send queue holds) and keeps the socket open, reading and
// dropping what the peer sends (into buf), until the peer has
// acknowledged all of it and the FIN, or bound has passed, or the
// connection failed. It returns the data bytes left unacknowledged (0 with
// a nil error: all delivered) and, when not all were, why:
// ErrTailUndelivered once bound passed, or the connection's error (the
// peer's reset, say). The socket's user timeout is set to bound too, so
// that a socket closed after Linger outlives it by no more than that.
//
// It works through rc's Control, never its Read: another goroutine may be
// waiting in a Read of the connection, which holds its read lock. The
// caller's goroutine waits; the caller closes the socket after (an abort
// when not all was delivered: what is left is no use to the peer).
func Linger(rc syscall.RawConn, buf []byte, bound time.Duration) (int, error) {
	var (
		outq   int
		e      syscall.Errno
		peerFN bool // the peer's FIN read: no more to drop
	)
	look := func(fd uintptr) {
		for !peerFN {
			n, re := ReadFD(fd, buf)
			if re == syscall.EAGAIN {
				break
			}
			if re != 0 {
				e = re
				return
			}
			peerFN = n == 0
		}
		v, err := unix.IoctlGetInt(int(fd), unix.SIOCOUTQ)
		if err != nil {
			if !errors.As(err, &e) {
				e = syscall.EINVAL
			}
			return
		}
		outq = v
		// A connection reset (or timed out) is over, its send queue
		// gone, though the count of what it held stays: what was not
		// acknowledged by then never will be.
		if outq > 0 {
			if ti, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil && ti.State == tcpClose {
				e = syscall.ECONNRESET
			}
		}
	}
	if err := rc.Control(func(fd uintptr) {
		if ms := bound.Milliseconds(); ms > 0 && ms <= math.MaxInt32 {
			_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(ms))
		}
		if _, _, se := unix.RawSyscall(unix.SYS_SHUTDOWN, fd, unix.SHUT_WR, 0); se != 0 && se != syscall.ENOTCONN {
			e = se
		}
	}); err != nil {
		return 0, fmt.Errorf("lingering: %w", err)
	}
	deadline := time.Now().Add(bound)
	for wait := time.Millisecond; ; wait = min(2*wait, lingerPollMax) {
		if e == 0 {
			if err := rc.Control(look); err != nil {
				return unsentData(outq), fmt.Errorf("lingering: %w", err)
			}
		}
		if e != 0 {
			return unsentData(outq), fmt.Errorf("lingering: %w", e)
		}
		if outq == 0 {
			return 0, nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			return unsentData(outq), fmt.Errorf("%w in %v (%d bytes unacknowledged)", ErrTailUndelivered, bound, unsentData(outq))
		}
		time.Sleep(min(wait, left))
	}
}

// tcpClose is Linux's TCP_CLOSE, a socket's state once its connection
// was reset or timed out.
const tcpClose = 7

// unsentData is the data in a send queue of outq bytes (SIOCOUTQ) on a
// socket shut for writing: its FIN takes a sequence number of its own,
// counted until acknowledged.
func unsentData(outq int) int { return max(outq-1, 0) }
