package hostconn

import (
	"errors"
	"fmt"
	"math"
	"sync"
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
// often (most tails go within a few round trips), then less; and, once a
// linger has lasted lingerSlowAfter (a peer that is taking its time, or
// none at all), less again, up to lingerPollSlow. At 50 ms a poll, each
// linger cost 0.15-0.25 ms of CPU a second, a core for every 4,000-6,700
// of them; at 1 s, a twentieth of that. The wait is cut short by
// WakeLingers (the stacks closing).
const (
	lingerPollMax   = 50 * time.Millisecond
	lingerSlowAfter = 2 * time.Second
	lingerPollSlow  = time.Second
)

// lingerWake is closed, and replaced, by WakeLingers: every linger's wait
// between looks ends on it.
var lingerWake struct {
	mu sync.Mutex
	ch chan struct{}
}

// WakeLingers makes every linger under way look at its socket, and ask its
// bound and its stop, now rather than at its next poll: what stop says
// changed (the stacks closing). Lingers that have lasted a while poll
// only every lingerPollSlow.
func WakeLingers() {
	lingerWake.mu.Lock()
	defer lingerWake.mu.Unlock()
	if lingerWake.ch != nil {
		close(lingerWake.ch)
		lingerWake.ch = nil
	}
}

// lingerWoken returns the channel WakeLingers closes next.
func lingerWoken() <-chan struct{} {
	lingerWake.mu.Lock()
	defer lingerWake.mu.Unlock()
	if lingerWake.ch == nil {
		lingerWake.ch = make(chan struct{})
	}
	return lingerWake.ch
}

// ErrTailUndelivered is Linger's when its bound passed before the peer
// acknowledged all the socket had to send.
var ErrTailUndelivered = errors.New("the destination did not acknowledge all it was sent")

// EndedError is Linger's error when the connection ended under it (the
// peer's reset, the kernel's own timeout) with data unacknowledged.
type EndedError struct {
	// Err is the connection's error: syscall.ECONNRESET for the peer's
	// reset, syscall.ETIMEDOUT for the kernel's timeout, or
	// ErrEndedUnseen when another reader of the socket took it.
	Err error
	// NotSent is how many of the unacknowledged bytes were never sent:
	// the peer's window was closed. Those it never had, whoever ended
	// the connection; the others, sent and unacknowledged, a peer that
	// reset may have read all the same (its acknowledgement held back).
	NotSent int
}

func (e *EndedError) Error() string {
	return fmt.Sprintf("lingering: %v (%d bytes never sent)", e.Err, e.NotSent)
}

func (e *EndedError) Unwrap() error { return e.Err }

// ByPeer reports whether the connection ended by the peer's reset
// (EPIPE when it came after the peer's FIN). An end whose error another
// reader took is not known to be the peer's (the host's own timeout ends
// a connection with every byte sent too): SeenElsewhere gives it.
func (e *EndedError) ByPeer() bool {
	return errors.Is(e.Err, syscall.ECONNRESET) || errors.Is(e.Err, syscall.EPIPE)
}

// SeenElsewhere gives err, Linger's, the connection's error that another
// reader of the socket took (readErr, its read's), when Linger ended with
// ErrEndedUnseen: the cause is known then. Any other err, or a readErr
// that carries no errno, is left as it is.
func SeenElsewhere(err, readErr error) {
	e, ok := errors.AsType[*EndedError](err)
	if !ok || !errors.Is(e.Err, ErrEndedUnseen) {
		return
	}
	if errno, ok := errors.AsType[syscall.Errno](readErr); ok {
		e.Err = errno
	}
}

// ErrEndedUnseen is an EndedError's when the connection ended and another
// reader of the socket (the relay's other direction, a tunnel's) took its
// error: Linger does not guess it.
var ErrEndedUnseen = errors.New("the connection ended, its error read elsewhere")

// Linger ends the sending side of the socket under rc (its FIN goes after
// what the send queue holds) and keeps the socket open, reading and
// dropping what the peer sends (into buf), until the peer has
// acknowledged all of it and the FIN, or bound has passed, or stop said
// to end, or the connection ended. It returns the data bytes left
// unacknowledged (0 with a nil error: all delivered, whatever the peer did
// after: a reset once it had all the data cuts nothing) and, when not all
// were, why: ErrTailUndelivered once bound passed, stop's error, or an
// *EndedError. bound is asked at every look, so that one that changes
// meanwhile (memory turning short) applies to a linger under way; the
// socket's user timeout follows it, so that a socket closed after Linger
// outlives it by no more than that (the kernel's clock may have started
// before the linger, with a first zero-window probe, and end it sooner:
// an EndedError with ETIMEDOUT). stop, if not nil, is asked at every look
// too: an error from it ends the linger (the appliance shutting down),
// but for a peer that has all the data, the FIN alone unacknowledged:
// that one is delivered (0, nil), and closing cuts nothing. The
// looks come every 50 ms at most for the first 2 s, then back off to one a
// second (lingerPollSlow): a bound that shrinks, or a stop that changes
// its mind, is seen within that, or at once after WakeLingers.
//
// finQueued says whether the caller's own shutdown of the socket queued
// its FIN already (Conn.FINQueued): the FIN takes a sequence number of
// its own, which the send queue's counts hold until it is acknowledged,
// and which is no byte of data. A shutdown, the caller's or Linger's,
// that finds the connection ended already (the peer's reset: ENOTCONN)
// queues none, and the counts are then all data: one byte unacknowledged
// is a byte the peer never acknowledged, not the FIN (review rev33e F2).
//
// It works through rc's Control, never its Read: another goroutine may be
// waiting in a Read of the connection, which holds its read lock. One that
// closes the socket meanwhile ends the linger with an error wrapping
// net.ErrClosed, and 0: what the peer had by then is not known. The
// caller's goroutine waits; the caller closes the socket after (an abort
// when not all was delivered: what is left is no use to the peer).
func Linger(rc syscall.RawConn, finQueued bool, buf []byte, bound func() time.Duration, stop func() error) (int, error) {
	var (
		limit  time.Duration
		userTO time.Duration
		l      lingerLook
	)
	look := func(fd uintptr) {
		if limit != userTO {
			userTO = limit
			setUserTimeout(fd, limit)
		}
		l.look(fd, buf)
	}
	start := time.Now()
	limit = bound()
	var serr syscall.Errno
	if err := rc.Control(func(fd uintptr) {
		userTO = limit
		setUserTimeout(fd, limit)
		switch _, _, se := unix.RawSyscall(unix.SYS_SHUTDOWN, fd, unix.SHUT_WR, 0); se {
		case 0:
			// Queued now, or by an earlier shutdown of a connection
			// live then: the kernel queues a socket's FIN once.
			finQueued = true
		case syscall.ENOTCONN:
			// Ended already: no FIN now; one only if the caller's
			// shutdown queued it before the end.
		default:
			serr = se
		}
	}); err != nil {
		return 0, fmt.Errorf("lingering: %w", err)
	}
	if serr != 0 {
		return 0, fmt.Errorf("lingering: %w", serr)
	}
	// data is what a count of the send queue's holds of data: the FIN
	// taken off when one was queued.
	data := func(n int) int {
		if finQueued {
			return unsentData(n)
		}
		return n
	}
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for wait := time.Millisecond; ; {
		// Taken before the look: a WakeLingers after it ends the wait.
		woken := lingerWoken()
		limit = bound()
		if err := rc.Control(look); err != nil {
			return 0, fmt.Errorf("lingering: %w", err)
		}
		switch {
		case l.err != nil:
			return 0, fmt.Errorf("lingering: %w", l.err)
		case l.outq == 0 || l.ended != nil && data(l.outq) == 0:
			// All acknowledged; or all the data, and the connection
			// ended before the FIN was: a peer that reads to the end and
			// resets at once (SO_LINGER 0) never acknowledges it (Linux
			// holds a FIN's acknowledgement back for the answer's). A
			// connection that ended before any FIN was queued has its
			// counts all data: one byte there is one the peer never
			// acknowledged, and it said delivered (review rev33e F2).
			return 0, nil
		case l.ended != nil:
			return data(l.outq), &EndedError{Err: l.ended, NotSent: data(l.notSent)}
		}
		if stop != nil {
			if err := stop(); err != nil {
				if data(l.outq) == 0 {
					// Only the FIN unacknowledged (Linux holds its
					// acknowledgement back for the answer's): the data
					// is delivered, and a stop cuts nothing of it; the
					// FIN goes on after the close. (The connection is
					// live: Linger's shutdown queued the FIN, if the
					// caller's had not.)
					return 0, nil
				}
				return data(l.outq), fmt.Errorf("lingering: %w", err)
			}
		}
		left := limit - time.Since(start)
		if left <= 0 {
			return data(l.outq), fmt.Errorf("%w in %v (%d bytes unacknowledged)", ErrTailUndelivered, limit, data(l.outq))
		}
		if timer == nil {
			timer = time.NewTimer(min(wait, left))
		} else {
			timer.Reset(min(wait, left))
		}
		select {
		case <-timer.C:
		case <-woken:
			timer.Stop()
		}
		pollMax := lingerPollMax
		if time.Since(start) >= lingerSlowAfter {
			pollMax = lingerPollSlow
		}
		wait = min(2*wait, pollMax)
	}
}

// setUserTimeout sets the socket's TCP_USER_TIMEOUT to d, when it fits.
func setUserTimeout(fd uintptr, d time.Duration) {
	if ms := d.Milliseconds(); ms > 0 && ms <= math.MaxInt32 {
		_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(ms))
	}
}

// lingerLook is what Linger's last look at its socket found.
type lingerLook struct {
	outq    int   // SIOCOUTQ: bytes unacknowledged, the FIN's too
	notSent int   // SIOCOUTQNSQ: bytes never sent, once the connection ended
	ended   error // what ended the connection, when it did
	err     error // the look itself failed
	peerFIN bool  // the peer's FIN read: no more to drop
}

// look drops what the peer sent and reads the send queue's counts. A
// connection that ended (reset, or timed out) is over, its send queue
// gone, though the counts of what it held stay: what was not acknowledged
// by then never will be.
func (l *lingerLook) look(fd uintptr, buf []byte) {
	for !l.peerFIN && l.ended == nil {
		n, re := ReadFD(fd, buf)
		if re == syscall.EAGAIN {
			break
		}
		if re != 0 {
			l.ended = re // the peer's reset, say
			break
		}
		l.peerFIN = n == 0
	}
	v, err := unix.IoctlGetInt(int(fd), unix.SIOCOUTQ)
	if err != nil {
		l.err = err
		return
	}
	l.outq = v
	if v == 0 {
		return
	}
	if l.ended == nil {
		ti, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil || ti.State != tcpClose {
			return
		}
		// Ended, its error maybe taken by another reader of the socket:
		// the pending error if it is still there.
		l.ended = ErrEndedUnseen
		if v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR); err == nil && v != 0 {
			l.ended = syscall.Errno(v)
		}
	}
	if v, err := unix.IoctlGetInt(int(fd), siocOutqNSQ); err == nil {
		l.notSent = v
	}
}

// siocOutqNSQ is Linux's SIOCOUTQNSQ: the bytes of a socket's send queue
// not yet sent (the FIN's too).
const siocOutqNSQ = 0x894B

// tcpClose is Linux's TCP_CLOSE, a socket's state once its connection
// was reset or timed out.
const tcpClose = 7

// unsentData is the data in a send queue of outq bytes (SIOCOUTQ) on a
// socket shut for writing: its FIN takes a sequence number of its own,
// counted until acknowledged.
func unsentData(outq int) int { return max(outq-1, 0) }

// LingersWoken returns the channel the next WakeLingers closes: a wait
// that a linger's stop decides (the stacks closing) ends on it too.
func LingersWoken() <-chan struct{} { return lingerWoken() }
