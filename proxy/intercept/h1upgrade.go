package intercept

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// upgradedBody is a 101 response's body: the connection, read through
// what its reader holds.
type upgradedBody struct {
	br   *bufio.Reader
	conn net.Conn
	stop func() bool

	// tunnel: goproxy relays it (a WebSocket), set before it has it.
	tunnel  bool
	ended   chan struct{} // closed once a read failed: that direction is over
	endOnce sync.Once
	// closing: Close is closing the connection, and a read it cuts short
	// is the tunnel's end, not a failure of the destination's.
	closing atomic.Bool
	// sendEnded: the appliance ended its side of the connection
	// (halfCloseUpstream), and a write failing after it is the tunnel's end too
	// (endedHere).
	sendEnded atomic.Bool
	// writeErr is the first write to the destination that failed by its
	// doing (writeFailed): goproxy ends the tunnel on it, and the read
	// from the destination then need not see the reset
	// (recordingBody.outcome).
	writeErr atomic.Pointer[error]
	// wmu is held by a write to the destination while it is under way,
	// and its outcome kept: Close waits on it for a write in flight
	// (boundWrite).
	wmu sync.Mutex
	// writing: such a write is under way (relayDestinationEnd's record).
	writing atomic.Bool
	// bounded: boundWrite has set the write deadline that bounds a write
	// in flight, and a write it times out is the appliance's own doing
	// (endedHere).
	bounded atomic.Bool
	// shutCut: the stacks' close cut that write (boundUploadNow).
	shutCut atomic.Bool
	// uploadBounded: the client broke after its FIN with the upload's
	// copy under way (BoundTunnelUpload).
	uploadBounded atomic.Bool
	// cut is the first write to the destination that the appliance's own
	// end failed (endedHere, but not its close, whose reason is the
	// session's): what the client sent went no further, and its tail was
	// not delivered (closeDelivering).
	cut atomic.Pointer[error]
	// writeBound is the bound boundWrite gave a write in flight, and
	// writeWait how long it waited for it: the linger's bound counts it
	// (closeDelivering). Close's goroutine only.
	writeBound, writeWait time.Duration
	// clientBroke says what broke the client's connection, if its client
	// did (Session.clientBroke); aborted is closed once the session is
	// aborted (Session.abortedSignal). Set with tunnel.
	clientBroke func() error
	aborted     <-chan struct{}
	// breakAfterFIN says the client's break came after its FIN
	// (Session.finBreak). Set with tunnel.
	breakAfterFIN func() bool
	// clientBreak is closed by the client's break of its connection
	// (Session.clientBreakSignal). Set with tunnel.
	clientBreak <-chan struct{}
	// onTailCut, if set, learns that closeDelivering reset the upstream
	// with the client's upload not all delivered (the tls record says
	// so). Set with tunnel.
	onTailCut func(error)
	// shuttingDown, if set, says the appliance's stacks are closing,
	// which ends closeDelivering's linger (Config.ShuttingDown). Set with
	// tunnel.
	shuttingDown func() bool
	// stallTimeout, if set, is the write-stall timeout in force, which
	// bounds that linger too (Config.WriteStallTimeout). Set with tunnel.
	stallTimeout func() time.Duration
	// lingerCut, if set, is why that linger is cut short after one
	// look, nil until it is (Session.CutLinger). Set with tunnel.
	lingerCut func() *lingerCutReason
	// reload, if set, is the tunnel's recheck after a policy reload: a
	// deny ends that linger too, and relayDestinationEnd's wait
	// (tunnelReload.check, which aborts the session; made off their
	// goroutine: reloadLook). Set with tunnel.
	reload *tunnelReload
	// endClient, if set, half-closes the tunnel's client connection
	// (hijackedConn.halfClose): the destination's half-close relayed
	// (relayDestinationEnd). Set with tunnel.
	endClient func() bool
	// upload, if set, follows goproxy's copy of the client's upload into
	// Write: the tunnel's end waits for it (boundWrite). Set with tunnel,
	// by holdUpload.
	upload *uploadCopy
	// hold gathers the upload's small writes (uploadHold), once upload
	// is set.
	hold uploadHold
	// readErr is the first error a read of the destination returned,
	// not of the tunnel's own close: the connection's, which a linger of
	// the same socket no longer sees.
	readErr atomic.Pointer[error]
	// failed is the first read of the destination that failed (not its
	// end, nor the tunnel's own close): a failure, which
	// relayDestinationEnd must not relay as the destination's end.
	failed atomic.Pointer[error]
	// readOver: a read returned an error, and the direction is over once
	// its caller has counted it (readEnded closes ended).
	readOver atomic.Bool
	// halfClosed, told and ownEnd are halfCloseUpstream's: whether it
	// ran, what it reported, and the bytes of the tunnel's own end it
	// put on the wire. Close's goroutine only.
	halfClosed, told bool
	ownEnd           int
	halfCloseErr     error
}

// halfCloseUpstream half-closes the tunnel's upstream (halfClose), once,
// and keeps the bytes of the tunnel's own end it put on the wire (a
// close_notify): a destination that closed its side and resets what comes
// after never acknowledges them, which cuts nothing of the client's upload
// (closeDelivering). It reports whether the destination was told, and
// the close_notify's write error, if it failed. A write failing after it
// is the tunnel's end too (endedHere). (The count is the session's, but a
// tunnel's session writes nothing else.) A write in flight is bounded
// first (boundWrite); after one cut short it tells the destination
// nothing.
func (u *upgradedBody) halfCloseUpstream() (bool, error) {
	if !u.halfClosed {
		u.boundWrite()
	}
	if !u.halfClosed && u.writeCut() != nil {
		// A write cut short left a TLS record part-written, and the
		// TLS connection failed for writing: the close_notify would
		// only wait on a socket the destination does not empty.
		u.sendEnded.Store(true)
		u.halfClosed = true
	}
	if !u.halfClosed {
		u.sendEnded.Store(true)
		before := wireOut(u.conn)
		u.told, u.halfCloseErr = halfCloseErr(u.conn)
		u.ownEnd = int(wireOut(u.conn) - before)
		u.halfClosed = true
	}
	return u.told, u.halfCloseErr
}

// upgradeDrain bounds how long a tunnel whose client has stopped sending
// waits for the upstream to finish: long enough for a WebSocket server
// to answer a Close frame, and no longer than that with a client that
// may have gone altogether (a half-close and a close look alike).
const upgradeDrain = 10 * time.Second

func (u *upgradedBody) Read(p []byte) (int, error) {
	n, err := u.br.Read(p)
	if err != nil {
		if _, ok := errors.AsType[syscall.Errno](err); ok {
			// The connection's error (not the destination's FIN, nor
			// the tunnel's own close): closeDelivering's linger asks
			// for it. A copy: err is rewritten below.
			rerr := err
			u.readErr.CompareAndSwap(nil, &rerr)
		}
		if err != io.EOF {
			if u.closing.Load() {
				err = io.EOF // our own close (recordingBody.outcome)
			} else {
				failed := err
				u.failed.CompareAndSwap(nil, &failed)
			}
		}
		u.readOver.Store(true)
	}
	return n, err
}

// readEnded closes ended once a read has returned an error, called by the
// reader (recordingRWBody.Read) after it has counted that read: Close
// waits on ended, and the record is written as soon as it returns, so
// closed inside Read it let the record miss the read's bytes (data and
// the destination's end in one read) or its error (a reset recorded ok).
func (u *upgradedBody) readEnded() {
	if u.readOver.Load() {
		u.endOnce.Do(func() { close(u.ended) })
	}
}

func (u *upgradedBody) Write(p []byte) (int, error) {
	u.wmu.Lock()
	defer u.wmu.Unlock()
	if u.upload != nil {
		// Its small writes gathered (uploadHold); the copy counts what
		// it wrote, held or gone, and is not over while any is held.
		n, err := u.hold.write(p)
		u.upload.wrote(n, err)
		return n, err
	}
	return (*upgradedOut)(u).Write(p)
}

// upgradedOut is an upgradedBody's write to the destination, under wmu.
type upgradedOut upgradedBody

func (o *upgradedOut) Write(p []byte) (int, error) {
	u := (*upgradedBody)(o)
	u.writing.Store(true)
	n, err := u.conn.Write(p)
	u.writing.Store(false)
	if err != nil && u.upload != nil {
		u.upload.wrote(0, err) // a flush's failure ends the copy too
	}
	switch {
	case err == nil:
	case !u.endedHere(err):
		u.noteWriteErr(err)
	case !errors.Is(err, net.ErrClosed):
		cut := err // only this escapes, as in noteWriteErr
		u.cut.CompareAndSwap(nil, &cut)
	}
	return n, err
}

// holdUpload makes c the tunnel's upload copy, its small writes held
// while client's reader finds more (uploadHold), the copy not over while
// any are; unsent is the tunnel's count of what was written, which takes
// held bytes as written.
func (u *upgradedBody) holdUpload(c *uploadCopy, client net.Conn, unsent *atomic.Int64) {
	u.upload = c
	u.hold.startTunnel((*upgradedOut)(u), client, &u.wmu, c, unsent)
	c.holdWrites(&u.hold)
}

// writeCut is the first write to the destination that the tunnel's own
// end cut (not its close), nil if none was.
func (u *upgradedBody) writeCut() error {
	if p := u.cut.Load(); p != nil {
		return *p
	}
	return nil
}

// boundWrite bounds the writes of the client's upload to the destination
// by the linger's bound, and waits for goproxy's copy of it to reach the
// client's end (uploadCopy), and for a write in flight to return, before
// the tunnel's end goes out. goproxy ends the tunnel as soon as either
// direction ends: after a client's reset that came after its FIN, its
// copy of the upload may still hold much of what the appliance
// acknowledged, and a close_notify sent before it is written cuts the
// rest (its next write: "tls: protocol is shutdown"), where the
// destination would have had all of it (a reset after the FIN cuts
// nothing). And a TLS connection's close_notify waits for a write in
// flight (tls's write lock): one blocked on a destination that reads
// nothing held the tunnel, its drain and its linger never begun, until
// the write-stall timeout (15 minutes by default) ended the session.
// The copy may still finish within the bound; a write of it still under
// way at the bound is cut, the appliance's own end (endedHere), and the
// upload's tail was not delivered (closeDelivering). The session's abort
// ends the wait too (it closes the upstream), and so does the stacks'
// close, which cuts the write at once (shutCut): a client that closed
// has no endpoint for it to abort, and the tunnel outlived the drain by
// the whole bound. The bound follows the write-stall timeout as it
// changes (awaitBounded). The linger after it counts the wait against
// its bound.
func (u *upgradedBody) boundWrite() {
	u.bounded.Store(true)
	start := time.Now()
	setBound := func(d time.Duration) {
		u.writeBound = d
		_ = u.conn.SetWriteDeadline(start.Add(d))
	}
	setBound(u.lingerBound())
	if u.upload != nil {
		// Bounded by a timer too: a copy that waits on a read of a client
		// that never ends writes nothing the deadline could cut.
		if u.awaitBounded(start, u.upload.over(), nil, setBound, nil, nil) == endedAtShutdown {
			u.shutCut.Store(true) // before the cut: cutError names it
			_ = u.conn.SetWriteDeadline(time.Now())
		}
	}
	u.wmu.Lock()
	u.writeWait = time.Since(start)
	u.wmu.Unlock()
}

// noteWriteErr keeps err, a write to the destination that failed by its
// doing, if it is the first.
func (u *upgradedBody) noteWriteErr(err error) {
	first := err // only this escapes: a write that succeeds allocates nothing
	u.writeErr.CompareAndSwap(nil, &first)
}

// writeFailed is the first write to the destination that failed by its
// doing, nil if none did.
func (u *upgradedBody) writeFailed() error {
	if p := u.writeErr.Load(); p != nil {
		return *p
	}
	return nil
}

// endedHere reports whether err, a write to the upstream that failed, is
// the appliance's own doing: its close (net.ErrClosed, also the session's
// Abort, whose reason is the records'), or its own end of sending (a TLS
// connection's "protocol is shutdown", the socket's EPIPE). A reset is
// always the destination's, and so is an EPIPE before that end: it comes
// to a write once the destination's reset has been taken, by a read or an
// earlier write. By the error, not by when it came: the destination's
// reset may fail the write and end the read (cleanly, the error taken),
// and that end close the tunnel before the failed write is looked at. So
// is a write's timeout once boundWrite has set its deadline.
func (u *upgradedBody) endedHere(err error) bool {
	return errors.Is(err, net.ErrClosed) || (u.sendEnded.Load() && !errors.Is(err, syscall.ECONNRESET)) ||
		(u.bounded.Load() && errors.Is(err, os.ErrDeadlineExceeded))
}

// Close implements io.Closer. goproxy closes a tunnel as soon as either
// direction ends. When the client's ended first (it half-closed after its
// last message), the upstream is told so and may still send the rest,
// relayed until it ends its side, or upgradeDrain has passed. A client
// whose connection broke (its reset) reads nothing more: no wait then.
// goproxy's copy toward it has stopped on the failed write, so nothing
// reads the upstream to see it end, and the wait held the upstream, and
// the records, for the whole drain. Nor does the wait outlast the
// session's abort (a stall): the abort resets the upstream, but once
// goproxy's copy toward the client has stopped on a failed write, no read
// sees that. Nor the client's reset after its half-close, which aborts
// nothing (a tunnel whose client sent its FIN is no longer under way:
// answer.go) and leaves nothing to relay the rest to.
//
// A break after the FIN aborts nothing: the destination still gets all the
// client sent, the socket lingering until it has (closeDelivering).
func (u *upgradedBody) Close() error {
	defer u.hold.stop() // what it waited for has left; the rest never will
	waited := false
	// broken: also a break known only by its signal, no read or write of
	// the client having taken it yet (the upload's copy blocked in a
	// write to the destination): told its end, the destination would
	// take a stream the client cut for a whole one.
	if u.tunnel && u.broken() {
		u.awaitAbort()
		waited = true
	}
	if u.tunnel && !u.broken() {
		select {
		case <-u.ended:
			if err := u.relayDestinationEnd(); err != nil {
				return err // the destination reset, the upload cut
			}
		default:
			told, err := u.halfCloseUpstream()
			if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
				// The tunnel's end (a close_notify) met the destination's
				// reset, taken by no read: the client's upload, all
				// written, may not all have been read.
				u.noteWriteErr(err)
			}
			if told {
				t := time.NewTimer(upgradeDrain)
				select {
				case <-u.ended:
				case <-u.aborted: // nil (never) outside a session
				case <-u.clientBreak: // nil too
				case <-t.C:
				}
				t.Stop()
			}
		}
	}
	if u.tunnel && u.broken() {
		if !waited {
			u.awaitAbort()
		}
		if !u.wasAborted() && !u.brokeBeforeFIN() {
			return u.closeDelivering()
		}
	}
	u.closing.Store(true)
	u.stop()
	if u.wasAborted() || u.tunnel && u.brokeBeforeFIN() {
		// The session's Abort resets the upstream, but signals first
		// (abortedSignal), and a break before the client's FIN whose
		// Abort is late (past breakAbortWait: a loaded machine) cut
		// the tunnel all the same: a plain close here passed the
		// destination a clean end (a FIN after all it had been sent)
		// of a stream the client never ended.
		dropUnsentUnder(u.conn)
		Abort(socketOf(u.conn))
	}
	return u.conn.Close()
}

// brokeBeforeFIN reports whether the tunnel's client broke its connection
// before its FIN: the tunnel was cut. The break may be known only by its
// signal (clientBreak), from the packet path, before a read or a write of
// the client took it: one after the FIN is signalled only once it is
// known for one (Session.ClientBroken), so a signal with no break after
// the FIN is one before it.
func (u *upgradedBody) brokeBeforeFIN() bool {
	return u.broken() && (u.breakAfterFIN == nil || !u.breakAfterFIN())
}

// awaitAbort waits, for breakAbortWait at most, for the session's Abort
// when the client broke its connection: a break that cut the tunnel (one
// before the client's FIN) resets the destination, and the close below,
// made first, passed it a clean end (a close_notify and a FIN) for a
// tunnel the client cut short, and left the Abort nothing to reset. The
// reader that took the break ends goproxy's copy, and so the tunnel,
// before the watch's Abort comes. A break after the FIN aborts nothing
// (NoteClientBreak): the wait runs out, and the destination is closed,
// getting all the client sent.
func (u *upgradedBody) awaitAbort() {
	if u.aborted == nil {
		return
	}
	t := time.NewTimer(breakAbortWait)
	defer t.Stop()
	select {
	case <-u.aborted:
	case <-t.C:
	}
}

// wasAborted reports whether the session has been aborted (never outside
// a session).
func (u *upgradedBody) wasAborted() bool {
	select {
	case <-u.aborted:
		return true
	default:
		return false
	}
}

// broken reports whether the tunnel's client broke its connection, as the
// connection says it (clientGone) or the session heard of it
// (clientBreak), whichever came first.
func (u *upgradedBody) broken() bool {
	if u.clientGone() {
		return true
	}
	select {
	case <-u.clientBreak:
		return true
	default:
		return false
	}
}

// clientGone reports whether the tunnel's client broke its connection.
func (u *upgradedBody) clientGone() bool {
	return u.clientBroke != nil && u.clientBroke() != nil
}

// halfClose ends the sending side of c, an upstream connection, through
// the wrappers this package puts on it: a TLS connection's close_notify,
// then the socket's FIN (not every server reads the alert as the end).
// It reports whether the peer was told anything.
func halfClose(c net.Conn) bool {
	told, _ := halfCloseErr(c)
	return told
}

// halfCloseErr is halfClose, with the error of the TLS close_notify's
// write, if it failed. A tapped client's connection notes it: its
// plaintext shows the appliance's FIN once the client had it
// (plaintextConn.serverEnded).
func halfCloseErr(c net.Conn) (bool, error) {
	var tapped *plaintextConn
	told, err := halfCloseUnder(c, &tapped)
	if told && tapped != nil {
		tapped.halfClosed.Store(true)
	}
	return told, err
}

// halfCloseUnder is halfCloseErr's walk down c's wrappers; it sets
// *tapped to the plaintextConn it met, if any.
func halfCloseUnder(c net.Conn, tapped **plaintextConn) (bool, error) {
	told := false
	for range 8 {
		switch x := c.(type) {
		case *tls.Conn:
			if err := x.CloseWrite(); err != nil {
				return told, err
			}
			told = true
			c = x.NetConn()
		case *setConn:
			c = x.Conn
		case *countedConn:
			c = x.Conn
		case *plaintextConn: // a client's (hijackedConn.halfClose, lingerClose)
			*tapped, c = x, x.Conn
		case interface{ CloseWrite() error }:
			return x.CloseWrite() == nil || told, nil
		default:
			return told, nil
		}
	}
	return told, nil
}
