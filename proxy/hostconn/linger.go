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
// acknowledged all of it and the FIN, or bound has passed, or stop said
// to end, or the connection failed. It returns the data bytes left
// unacknowledged (0 with a nil error: all delivered, whatever the peer did
// after: a reset once it had all the data cuts nothing) and, when not all
// were, why: ErrTailUndelivered once bound passed, stop's error, or the
// connection's (syscall.ECONNRESET for the peer's reset: a peer that
// resets may have read bytes it had yet to acknowledge, a delayed
// acknowledgement, so the count is what it acknowledged, not what it
// read). bound is asked at every look, so
// that one that shrinks meanwhile (memory turning short) ends a linger
// under way sooner; the socket's user timeout follows it down, so that a
// socket closed after Linger outlives it by no more than that. stop, if
// not nil, is asked at every look too: an error from it ends the linger
// (the appliance shutting down).
//
// It works through rc's Control, never its Read: another goroutine may be
// waiting in a Read of the connection, which holds its read lock. One that
// closes the socket meanwhile ends the linger with an error wrapping
// net.ErrClosed, and 0: what the peer had by then is not known. The
// caller's goroutine waits; the caller closes the socket after (an abort
// when not all was delivered: what is left is no use to the peer).
func Linger(rc syscall.RawConn, buf []byte, bound func() time.Duration, stop func() error) (int, error) {
	var (
		outq   int
		e      syscall.Errno
		peerFN bool // the peer's FIN read: no more to drop
		userTO int64
	)
	setUserTimeout := func(fd uintptr, d time.Duration) {
		if ms := d.Milliseconds(); ms > 0 && ms <= math.MaxInt32 && (userTO == 0 || ms < userTO) {
			userTO = ms
			_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(ms))
		}
	}
	var limit time.Duration
	look := func(fd uintptr) {
		setUserTimeout(fd, limit)
		for !peerFN {
			n, re := ReadFD(fd, buf)
			if re == syscall.EAGAIN {
				break
			}
			if re != 0 {
				// The peer's reset, say: the send queue's count still
				// says what it had acknowledged before it.
				e = re
				break
			}
			peerFN = n == 0
		}
		v, err := unix.IoctlGetInt(int(fd), unix.SIOCOUTQ)
		if err != nil {
			if !errors.As(err, &e) {
				e = syscall.EINVAL
			}
			outq = -1
			return
		}
		outq = v
		// A connection reset (or timed out) is over, its send queue
		// gone, though the count of what it held stays: what was not
		// acknowledged by then never will be.
		if outq > 0 && e == 0 {
			if ti, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil && ti.State == tcpClose {
				e = endedBy(fd, ti)
			}
		}
	}
	start := time.Now()
	limit = bound()
	if err := rc.Control(func(fd uintptr) {
		setUserTimeout(fd, limit)
		if _, _, se := unix.RawSyscall(unix.SYS_SHUTDOWN, fd, unix.SHUT_WR, 0); se != 0 && se != syscall.ENOTCONN {
			e = se
		}
	}); err != nil {
		return 0, fmt.Errorf("lingering: %w", err)
	}
	if e != 0 {
		return 0, fmt.Errorf("lingering: %w", e)
	}
	for wait := time.Millisecond; ; wait = min(2*wait, lingerPollMax) {
		limit = bound()
		if err := rc.Control(look); err != nil {
			return 0, fmt.Errorf("lingering: %w", err)
		}
		switch {
		case outq < 0:
			return 0, fmt.Errorf("lingering: %w", e)
		case outq == 0 || e != 0 && unsentData(outq) == 0:
			// All acknowledged; or all the data, and the connection
			// ended before the FIN was: a peer that reads to the end and
			// resets at once (SO_LINGER 0) never acknowledges it (Linux
			// holds a FIN's acknowledgement back for the answer's).
			return 0, nil
		case e != 0:
			return unsentData(outq), fmt.Errorf("lingering: %w", e)
		}
		if stop != nil {
			if err := stop(); err != nil {
				return unsentData(outq), fmt.Errorf("lingering: %w", err)
			}
		}
		left := limit - time.Since(start)
		if left <= 0 {
			return unsentData(outq), fmt.Errorf("%w in %v (%d bytes unacknowledged)", ErrTailUndelivered, limit, unsentData(outq))
		}
		time.Sleep(min(wait, left))
	}
}

// endedBy says what ended a connection found closed whose error another
// reader of the socket may have taken (the relay's other direction, a
// tunnel's): the socket's pending error if it is still there, else what
// TCP_INFO shows. Retransmissions or zero-window probes under way when it
// ended are the kernel's own timeout (TCP_USER_TIMEOUT): the peer was
// taking nothing; none, a reset by a peer that was.
func endedBy(fd uintptr, ti *unix.TCPInfo) syscall.Errno {
	if v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR); err == nil && v != 0 {
		return syscall.Errno(v)
	}
	if ti.Retransmits > 0 || ti.Probes > 0 {
		return syscall.ETIMEDOUT
	}
	return syscall.ECONNRESET
}

// tcpClose is Linux's TCP_CLOSE, a socket's state once its connection
// was reset or timed out.
const tcpClose = 7

// unsentData is the data in a send queue of outq bytes (SIOCOUTQ) on a
// socket shut for writing: its FIN takes a sequence number of its own,
// counted until acknowledged.
func unsentData(outq int) int { return max(outq-1, 0) }
