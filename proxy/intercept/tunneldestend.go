package intercept

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A destination's half-close (its FIN, or TLS close_notify and FIN) ends
// goproxy's copy towards the client, and with it the tunnel, while the
// client may still be sending: goproxy closes the upstream as soon as one
// direction ends. Closed then, the destination got the end of a stream
// the client never ended, cut short where goproxy's copy stood (a plain
// FIN over cleartext, a clean TLS end when that copy was idle), and the
// records said ok. A half-close ends sending, not reading: on a direct
// connection the destination would still get all the client sends. So the
// tunnel relays it as a half-close (relayDestinationEnd).

// relayDestinationEnd relays the destination's end of its side, which
// ended the tunnel (Close, u.ended), as a half-close: the client is told
// (its side of the tunnel's end: close_notify, FIN), and the upload goes
// on until its copy is over (the client's own end, all of it written),
// bounded by the linger's bound (the write-stall timeout, when shorter,
// followed as it changes: the session's stall watch bounds a write
// blocked meanwhile), the session's abort, the client's break, or the
// stacks' close. A copy not over by the bound, or at the stacks' close,
// leaves the client's upload cut: the destination is reset, never given
// the end of a stream the client did not end, and the error returned and
// kept for the records (writeFailed; onTailCut) says so: a timeout, the
// bound's, or the shutdown (a reset); nil otherwise, and Close ends the
// upstream as usual. A copy whose write waits on the destination then is
// the destination's doing (errUploadUntaken), whatever the client did: a
// client that closed cleanly meanwhile has ended its side, and its
// upload waits on a destination that takes nothing. A destination whose
// read failed (a reset, a TLS failure) is not waited for, nor is its
// client told a clean end: it reads nothing more, and goproxy's close of
// the client resets it (hijackedConn.Close).
func (u *upgradedBody) relayDestinationEnd() error {
	if u.upload == nil || u.endClient == nil || u.failed.Load() != nil || u.upload.overNow() {
		return nil
	}
	u.endClient()
	var reset error
	look := func() bool {
		reset = upstreamReset(u.conn)
		return reset != nil
	}
	// A reload's deny ends the wait too (the check aborted the session:
	// Close records the deny).
	rl := newReloadLook(u.reload)
	end := u.awaitBounded(time.Now(), u.upload.over(), u.clientBreak, nil, look, rl) // clientBreak: Close's broken path settles it
	rl.stop()
	if end == endedEarly || u.upload.overNow() || end == endedByLook && reset == nil {
		return nil
	}
	if reset != nil {
		// The destination's doing, not the client's: kept as the
		// upload's failed write, as a write that met the reset is.
		cut := fmt.Errorf("%w%s: the rest of the client's upload not relayed: %w", errDestResetAfterEnd, u.unackedNote(), reset)
		u.noteWriteErr(cut)
		u.closing.Store(true)
		u.stop()
		return u.resetTail(socketOf(u.conn), cut)
	}
	// Kept as the upload's failed write for the tunnel's record
	// (writeFailed), and told to the connection's (onTailCut).
	why, unacked := errUploadUnended, ""
	if u.writing.Load() {
		why = errUploadUntaken
		unacked = u.unackedNote()
	}
	var cut error
	if end == endedAtShutdown {
		cut = fmt.Errorf("%w when it was %w%s: the destination was reset, the rest of the client's upload not relayed",
			why, errShutdownLingering, unacked)
	} else {
		cut = fmt.Errorf("%w within the %v bound%s: the destination was reset, the rest of the client's upload not relayed: %w",
			why, u.lingerBound(), unacked, os.ErrDeadlineExceeded)
	}
	u.noteWriteErr(cut)
	u.closing.Store(true)
	u.stop()
	return u.resetTail(socketOf(u.conn), cut)
}

// errUploadUnended says a tunnel's destination ended its side and its
// client did not end its own within the bound (relayDestinationEnd), and
// errUploadUntaken that the destination, having ended its side, did not
// take what the client sent: a write of it to the destination was
// waiting.
// errDestResetAfterEnd that it reset its connection after, before its
// client ended its own.
var (
	errUploadUnended     = errors.New("the destination ended its side, and the client had not ended its own")
	errUploadUntaken     = errors.New("the destination ended its side, and took no more of the client's upload")
	errDestResetAfterEnd = errors.New("the destination ended its side, then reset its connection before the client ended its own")
)

// destEndCut reports whether err is relayDestinationEnd's cut of the
// upload: the connection's record says it as the tunnel's does.
func destEndCut(err error) bool {
	return errors.Is(err, errUploadUnended) || errors.Is(err, errUploadUntaken) || errors.Is(err, errDestResetAfterEnd)
}

// upstreamReset is the error of c's connection (an upstream's: its host
// socket, beneath TLS) if it has ended in a reset or a timeout, nil
// otherwise or when it cannot say. Nothing reads a connection whose
// destination ended its side: its reset after is seen only so. Linux's
// TCP_CLOSE is not enough: a connection both ends closed cleanly ends
// there too (the peer's FIN then ours, LAST_ACK then CLOSE; ours then
// the peer's, which leaves the socket CLOSE behind its TIME_WAIT), and
// was taken for a reset (review r5s27 F3). A reset or a timeout leaves
// the socket's error (SO_ERROR) set, a clean close does not: so CLOSE
// with an error is the answer (Linux says a reset in CLOSE-WAIT EPIPE:
// said as the reset). The error is the socket's to hand out once: this
// takes it, and a read after sees a plain end (EOF), so it is asked only
// where the wait ends on a reset found (relayDestinationEnd); one a write
// or a read took before is not seen here (nil), that one having it.
func upstreamReset(c net.Conn) error {
	sc, ok := socketOf(c).(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	var ended error
	_ = rc.Control(func(fd uintptr) {
		ti, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil || ti.State != tcpClose {
			return
		}
		switch v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR); {
		case err != nil || v == 0:
			// A clean close of both ends, or an error taken already.
		case v == int(syscall.EPIPE):
			ended = syscall.ECONNRESET
		default:
			ended = syscall.Errno(v) // the host's timeout, say
		}
	})
	return ended
}

// tcpClose is Linux's TCP_CLOSE, a socket's state once its connection
// was reset or timed out, or closed by both ends.
const tcpClose = 7

// halfClose ends the sending side of the client's connection (a TLS
// close_notify, then the socket's FIN), after what its writes hold, and
// reports whether the client was told: a tunnel's destination ended its
// side (relayDestinationEnd), and goproxy's copy towards the client,
// ended by it, writes nothing more.
func (c *hijackedConn) halfClose() bool {
	h := &c.hold
	h.mu.Lock()
	defer h.mu.Unlock()
	c.flushLocked()
	if h.err != nil {
		return false
	}
	return halfClose(c.Conn)
}
