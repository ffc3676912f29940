package intercept

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/hostconn"
)

// TunnelLingerBound bounds how long a WebSocket tunnel's upstream lingers
// once its client broke after its FIN (closeDelivering): the write-stall
// timeout's default at ample memory is longer, but no watch of the
// session's sees the tunnel's end, and a destination that takes nothing
// for a minute has stalled by any measure. A write-stall timeout in force
// that is shorter (memory short) bounds it instead.
const TunnelLingerBound = 60 * time.Second

var tunnelLinger atomic.Int64

func init() { tunnelLinger.Store(int64(TunnelLingerBound)) }

// SetTunnelLingerBound changes the bound of a tunnel's linger, for tests;
// it returns what undoes it.
func SetTunnelLingerBound(d time.Duration) (restore func()) {
	old := tunnelLinger.Swap(int64(d))
	return func() { tunnelLinger.Store(old) }
}

// closeDelivering closes the upstream of a tunnel whose client broke
// after its FIN, so that the destination still gets all the client sent:
// the client's upload was whole (the appliance acknowledged it and the
// FIN), but its tail may still be in the host socket's send buffer, and a
// close with bytes the destination sent unread resets the connection at
// once (RFC 2525), throwing that tail away; a destination that keeps
// sending draws that reset however late the close. So the tunnel's end
// goes out (a close_notify and a FIN, after the tail) and the socket
// lingers (hostconn.Linger), what the destination sends dropped, until
// the destination has acknowledged all of it, or TunnelLingerBound has
// passed, or the stacks close: then the socket is reset, and the error
// returned says the tail was not delivered (the tunnel's record says so:
// recordingBody.Close); or that the destination reset it first, with how
// much it had not acknowledged. The session, and its records, wait
// meanwhile. A write of the upload that the tunnel's end cut (boundWrite)
// left the rest undelivered, whatever the destination acknowledges: the
// socket is reset, at once when the cut came first, else once the linger
// is over, whatever it found.
func (u *upgradedBody) closeDelivering() error {
	u.closing.Store(true)
	u.halfCloseUpstream() // if the drain has not: its own end's bytes kept (ownEnd)
	sock := socketOf(u.conn)
	if cut := u.writeCut(); cut != nil {
		// The upload went no further than the write cut: nothing the
		// destination may still acknowledge makes it whole.
		u.stop()
		return u.resetTail(sock, u.cutError(cut))
	}
	var (
		unsent int
		lerr   error
	)
	if sc, ok := sock.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			// A write in flight had part of the bound (boundWrite).
			bound := func() time.Duration { return u.lingerBound() - u.writeWait }
			unsent, lerr = u.lingerTail(rc, finQueuedOn(sock), bound)
			if errors.Is(lerr, hostconn.ErrTailUndelivered) {
				// Linger names its own part of the bound: the record
				// names the whole, which the tunnel waited.
				lerr = fmt.Errorf("%w within the %v bound (%d bytes unacknowledged)", hostconn.ErrTailUndelivered, u.lingerBound(), unsent)
			}
		}
	}
	u.stop()
	switch {
	case (lerr == nil || unsent <= u.ownEnd && !errors.Is(lerr, net.ErrClosed)) && u.writeCut() != nil:
		// All that went out acknowledged, but the copy's next write,
		// after the tunnel's end, was cut: the rest never went.
		return u.resetTail(sock, u.cutError(u.writeCut()))
	case lerr == nil, unsent <= u.ownEnd && !errors.Is(lerr, net.ErrClosed):
		// All the client's bytes acknowledged, if not the tunnel's own
		// end after them.
		return u.conn.Close()
	case errors.Is(lerr, net.ErrClosed):
		// The session's abort closed it meanwhile: its reason is the
		// records'; what the destination had by then is not known.
		_ = u.conn.Close()
		return lerr
	}
	if r := u.lingerCutBy(lerr); r != nil && r.counted != nil {
		r.counted()
	}
	if p := u.readErr.Load(); p != nil {
		hostconn.SeenElsewhere(lerr, *p)
	}
	// Or the upload's write took it (a reset while it was blocked on
	// the destination), the read after it seeing a plain end: Linux
	// hands a connection's error out once.
	hostconn.SeenElsewhere(lerr, u.writeFailed())
	if timedOutAtBound(lerr) {
		lerr = fmt.Errorf("%w within the %v bound (%d bytes unacknowledged)", hostconn.ErrTailUndelivered, u.lingerBound(), unsent)
	}
	err := fmt.Errorf("%w: %w", errTailUndelivered, lerr)
	if ended, ok := errors.AsType[*hostconn.EndedError](lerr); ok && ended.ByPeer() {
		// The destination's own reset: bytes it had yet to acknowledge
		// it may have read all the same (its acknowledgement held back).
		err = fmt.Errorf("%w with %d bytes of the upload unacknowledged: %w", errDestinationResetLingering, unsent, lerr)
	}
	return u.resetTail(sock, err)
}

// timedOutAtBound reports whether lerr, the linger's, is the host's
// timeout of the connection (its zero-window probes or retransmissions
// unanswered): the socket's user timeout, which Linger sets to what is
// left of the bound, so the bound's. The kernel's clock starts when the
// destination stops acknowledging (a first zero-window probe), which may
// be before the tunnel's end, and so ends the linger before the bound by
// the tunnel's clock: the destination had acknowledged nothing for as
// long as the bound all the same. Said as "connection timed out", it read
// as a network timeout of the destination's, not the appliance's bound.
func timedOutAtBound(lerr error) bool {
	ended, ok := errors.AsType[*hostconn.EndedError](lerr)
	return ok && errors.Is(ended.Err, syscall.ETIMEDOUT)
}

// resetTail resets the tunnel's upstream, sock its socket, whose client's
// upload was not all delivered, err saying why, and tells onTailCut.
func (u *upgradedBody) resetTail(sock net.Conn, err error) error {
	dropUnsentUnder(u.conn)
	Abort(sock)
	_ = u.conn.Close()
	if u.onTailCut != nil {
		u.onTailCut(err)
	}
	return err
}

// cutError says why the upload's tail was not delivered, cut being the
// write to the destination that the tunnel's end cut: a write of the
// upload still under way at the linger's bound (boundWrite), or one that
// came after the tunnel's end, with the rest of the upload. It says how
// much of what was written the destination had not acknowledged, which
// the reset that follows throws away, as the linger's error does: the
// record's bytes_out counts it as written.
func (u *upgradedBody) cutError(cut error) error {
	unacked := u.unackedNote()
	if errors.Is(cut, os.ErrDeadlineExceeded) && u.shutCut.Load() {
		return fmt.Errorf("%w: a write to the destination was under way when it was %w%s: %w", errTailUndelivered, errShutdownLingering, unacked, cut)
	}
	if errors.Is(cut, os.ErrDeadlineExceeded) {
		return fmt.Errorf("%w: a write to the destination did not finish within %v%s: %w", errTailUndelivered, u.writeBound, unacked, cut)
	}
	return fmt.Errorf("%w: the rest of it came after the tunnel's end%s: %w", errTailUndelivered, unacked, cut)
}

// unackedNote says how much of what was written to the upstream its
// destination has not acknowledged, for an error's text; "" when the
// socket cannot say.
func (u *upgradedBody) unackedNote() string {
	if q, ok := socketOf(u.conn).(interface{ SendQueued() (int, error) }); ok {
		if n, err := q.SendQueued(); err == nil {
			return fmt.Sprintf(" (%d bytes on the wire unacknowledged)", n)
		}
	}
	return ""
}

// lingerBound is the bound of the tunnel's linger now: TunnelLingerBound,
// or the write-stall timeout in force when shorter (memory short).
func (u *upgradedBody) lingerBound() time.Duration {
	d := time.Duration(tunnelLinger.Load())
	if u.stallTimeout != nil {
		d = min(d, u.stallTimeout())
	}
	return d
}

// lingerStop ends a tunnel's linger once the appliance's stacks are
// closing (its drain's end: the process exits right after, and the
// records must be written within the drain's wait), or a policy reload
// denies the tunnel (the tail goes no further to a destination the
// policy now denies): rl's answer, its check made off the linger's
// goroutine, which meanwhile looks on (reloadLook).
func (u *upgradedBody) lingerStop(rl *reloadLook) error {
	if u.shuttingDown != nil && u.shuttingDown() {
		return errShutdownLingering
	}
	if u.lingerCut != nil {
		if r := u.lingerCut(); r != nil {
			return r.err // after the one look: Linger asks after it
		}
	}
	// goproxy's copies may have ended (the one towards the broken
	// client on its first failed write) and check nothing more.
	return rl.poll()
}

// lingerTail lingers on rc, the upstream's socket, within bound, until
// the destination has acknowledged what went out, and says what it left
// unacknowledged (hostconn.Linger). Its stop's reload look is a linger's
// (newLingerLook): a linger asks its stop only at its looks, once a second
// after its first 2 s, and its deny wakes it. fin says whether the
// tunnel's end queued the socket's FIN (a destination that reset before
// it queued none: its counts are all data).
func (u *upgradedBody) lingerTail(rc syscall.RawConn, fin bool, bound func() time.Duration) (int, error) {
	rl := newLingerLook(u.reload)
	defer rl.stop()
	return hostconn.Linger(rc, fin, make([]byte, 16<<10), bound, func() error { return u.lingerStop(rl) })
}

// finQueuedOn reports whether sock's own shutdown queued its FIN
// (hostconn.Conn.FINQueued); false when it cannot say.
func finQueuedOn(sock net.Conn) bool {
	q, ok := sock.(interface{ FINQueued() bool })
	return ok && q.FINQueued()
}

// errTailUndelivered says a tunnel's upstream was reset with the client's
// upload not all acknowledged by the destination (closeDelivering), and
// errDestinationResetLingering that the destination reset it before it had
// acknowledged it all; errShutdownLingering is the stacks' close that ended
// the linger.
var (
	errTailUndelivered           = errors.New("the upload's tail was not delivered")
	errDestinationResetLingering = errors.New("the destination reset its connection")
	errShutdownLingering         = errors.New("ended by the appliance's shutdown (its packet stacks closed)")
)

// wireOut is what the session wrote to its destinations, on the wire,
// as counted under c's wrappers (countedConn), or 0 when nothing counts.
func wireOut(c net.Conn) int64 {
	for range 8 {
		switch x := c.(type) {
		case *tls.Conn:
			c = x.NetConn()
		case *setConn:
			c = x.Conn
		case *countedConn:
			return x.n.out.Load()
		default:
			return 0
		}
	}
	return 0
}

// socketOf is the connection under c's wrappers of this package's: the
// host socket's, for an upstream; the stack's, for a client (beneath TLS
// and the plaintext tap, when bumped).
func socketOf(c net.Conn) net.Conn {
	for range 8 {
		switch x := c.(type) {
		case *tls.Conn:
			c = x.NetConn()
		case *plaintextConn:
			c = x.Conn
		case *setConn:
			c = x.Conn
		case *countedConn:
			c = x.Conn
		default:
			return c
		}
	}
	return c
}
