package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// A relay direction holds a buffer only while it has bytes in hand: it
// takes one from the pool when its source has something to read, and gives
// it back once the bytes are written. Most relayed connections are quiet
// most of their life, and a buffer held across the wait was 85% of an idle
// flow's memory.
var relayBufPool = sync.Pool{New: func() any {
	b := make([]byte, relayBufSize)
	return &b
}}

// relayBufSize is what a relay direction reads at once. 256 KiB rather
// than 64: when a destination's socket holds more than 64 KiB, as in a
// download, the direction reads it and writes the client's stack in fewer
// calls, and in the rig the appliance's CPU per GiB the server sends fell
// in 11 of 12 runs taking turns with 64 KiB (benchmarks.md, "A bigger
// relay buffer"). A direction holds it only while it has bytes in hand,
// but that includes while its write waits: a client that stops reading
// keeps a download's buffer (and a flow stalled both ways two of them),
// as it keeps up to the send buffer's 4 MiB in the stack, until the
// write-stall timeout resets the flow (stall.go).
const relayBufSize = 256 << 10

// tryReader is a source that can be read without waiting and that says
// when it has something to read (netstack.Conn): the direction reading it
// holds no goroutine while it is quiet.
type tryReader interface {
	TryRead(b []byte) (int, error)
	Readable() bool
	OnReadable(fn func())
}

// wrappedConn is a connection with bytes of its own to give before those
// of the connection it wraps: what classification read ahead.
type wrappedConn interface {
	net.Conn
	// pending reports whether reads still come from the wrapper.
	pending() bool
	unwrap() net.Conn
}

// startRelay copies bytes both ways between client and upstream until
// both directions have ended, passing each half-close on; an error in one
// direction aborts the other. It returns at once, and calls done from a
// relay goroutine once both directions have ended and both connections are
// closed, with the bytes sent upstream and back and the errors other than
// a clean EOF. A relayed flow quiet for hostconn.IdleAfter holds no
// goroutine and no buffer: the destination's direction is parked in
// hostconn's watch, and the client's direction waits on the stack's queue
// when the client is a netstack.Conn.
func startRelay(client, upstream net.Conn, done func(out, in int64, err error)) {
	startWatchedRelay(client, upstream, nil, nil, nil, func(n relayCounts, err error) { done(n.out, n.in, err) })
}

// startWatchedRelay is startRelay with writes that wait without progress
// bounded by stalls (stall.go), nil bounding none, and with recheck, if not
// nil, asked before each read's bytes are written on: an error from it
// aborts the relay as a failed read would (a reload that denies the
// connection, tcpreload.go). Bytes already read when it changes its mind
// are still written: a write under way, to a peer slow to read, may
// deliver them after the reload, for at most the write-stall timeout.
//
// takeLinger, if not nil, takes one of the client's lingering connections
// for a linger of the destination after the client's break
// (closeDelivering): one it refuses is cut short at once.
func startWatchedRelay(client, upstream net.Conn, stalls *stallWatch, recheck func() error, takeLinger func() (func(), error), done func(n relayCounts, err error)) {
	r := &relay{client: client, upstream: upstream, done: done, stalls: stalls, recheck: recheck,
		takeLinger: takeLinger, clientBroken: clientBrokenOf(client)}
	r.out = halfRelay{r: r, dst: upstream, src: client}
	r.in = halfRelay{r: r, dst: client, src: upstream}
	r.left.Store(2)
	if stalls != nil {
		r.out.ww.watchWrites(stalls, r, upstream)
		r.in.ww.watchWrites(stalls, r, client)
	}
	go r.out.copy()
	go r.in.copy()
}

// relay is a relayed connection: its two directions and what to do when
// both have ended.
type relay struct {
	client, upstream net.Conn
	out, in          halfRelay
	left             atomic.Int32 // directions not yet ended
	done             func(n relayCounts, err error)
	// broke is how the client's connection ended after its FIN, when it
	// did otherwise than by the relay's own close (see watchBroken).
	broke atomic.Pointer[error]
	// finPassed is set once the client's FIN has been passed on to the
	// destination: from then on the destination is closed, not reset,
	// when the client breaks (relayfin.go).
	finPassed atomic.Bool
	// closeUnacked is what the destination had not acknowledged when the
	// relay closed its socket (not reset: r.cut says then).
	closeUnacked atomic.Int64
	// finMu holds the client's FIN passed on (r.closeWrite) and each
	// count of the destination's send queue apart (sendQueue).
	finMu sync.Mutex
	// delivering is set by the first closeDelivering, and cut by it when
	// the destination did not take the upload's tail.
	delivering atomic.Bool
	cut        atomic.Pointer[lingerCut]
	// lingerOwed is set by watchBroken as it counts its linger
	// (lingering), before closeDelivering sets delivering: from then on
	// the destination is the linger's, whoever runs it.
	lingerOwed atomic.Bool
	// denied is the error of a reload that denied the flow (recheck):
	// it ends a linger under way (lingerStop).
	denied atomic.Pointer[error]
	// destReadErr is the error that ended the destination's direction
	// on a read: the connection's error, which a linger of the same
	// socket no longer sees (hostconn.ErrEndedUnseen).
	destReadErr atomic.Pointer[error]
	// lingering counts watchBroken's closeDelivering under way, which
	// the report waits for: the record is written once the destination
	// has its upload, or the linger's bound has passed.
	lingering sync.WaitGroup
	// clientBroken is what broke the client's connection, nil if nothing
	// did (nil itself: the client cannot say).
	clientBroken func() error
	// aborting is held by watchBroken's abort of the destination, which
	// the report waits for: closing the socket wakes the other direction,
	// which may end the relay while that Close is still under way, before
	// the destination has its reset.
	aborting sync.Mutex
	// stalls bounds writes that wait without progress (nil: none), and
	// stalled says how one did, once it aborted the relay.
	stalls  *stallWatch
	stalled atomic.Pointer[error]
	recheck func() error // nil: none
	// takeLinger takes one of the client's lingering connections for
	// closeDelivering's linger (Proxy.takeLinger); nil: none is counted.
	// It is taken once (shareLinger), at the linger or before it, when
	// the client breaks after its FIN while the upload is still being
	// written (relaybreak.go), and given back as the relay ends.
	takeLinger func() (release func(), err error)
	// breakSeen is the client's break after its FIN as breakWhileCopying
	// took it from the stack, which reports it once.
	breakSeen     atomic.Pointer[error]
	lingerOnce    sync.Once
	lingerErr     error
	lingerRelease func()
}

// ended is called by each direction as it ends; the last one closes both
// connections and reports.
func (r *relay) ended() {
	if r.left.Add(-1) != 0 {
		return
	}
	// Asked before the client's close, after which it says no more.
	broken := r.clientBreakAtEnd() != nil
	r.client.Close()
	if r.finPassed.Load() && (broken || r.lingerOwed.Load()) {
		// The destination's direction may have ended on a failed write
		// to a client that broke, leaving bytes of the destination's
		// unread. (A client that did not break has had its whole
		// exchange: the destination ended its side too.) A linger
		// watchBroken owes is this one's or under way (closeDelivering
		// returns at once then): the destination is never closed under
		// it, which would leave the linger unable to tell what it had.
		// (broken is false once the relay's own abort closed the
		// client: the destination's reset read by its other direction,
		// a reload's deny.)
		r.closeDelivering(r.upstream)
	} else {
		// A close leaves what the destination has not acknowledged to
		// the host's kernel, which sends it; a destination that resets
		// (one that closes with the upload unread) never gets it, after
		// the record is written: the record says how much that is.
		r.closeUnacked.Store(r.unackedPayload())
		r.upstream.Close()
	}
	r.aborting.Lock()
	//lint:ignore SA2001 waiting for an abort under way to end is the point
	r.aborting.Unlock()
	r.lingering.Wait()
	r.releaseLinger()
	var broke error
	if p := r.broke.Load(); p != nil {
		broke = *p
	}
	err := errors.Join(r.out.err, r.in.err, broke)
	out, unacked := r.out.n, r.closeUnacked.Load()
	var cutErr error
	if cut := r.cut.Load(); cut != nil {
		// What the destination did not acknowledge never reached it.
		out = max(out-cut.unsent, 0)
		unacked = cut.unacked
		err, cutErr = errors.Join(err, cut.err), cut.err
	}
	unacked = min(unacked, out)
	if r.stalls != nil {
		r.stalls.unwatch(&r.out.ww)
		r.stalls.unwatch(&r.in.ww)
		if p := r.stalled.Load(); p != nil {
			// Why it ended; the directions' errors are those of the
			// resets it made. One that ended a linger begun at the
			// client's break is the tail's cut (cutAfterBreak), and
			// the result is the break's (reset, timeout), as for the
			// same client's linger at the copy's end and a tunnel's
			// (Session.StallAbort): the stall only bounded the linger.
			err = errors.Join(*p, broke)
			if errors.Is(cutErr, errWriteStalled) {
				err = errors.Join(broke, saidOnly{cutErr})
			}
		}
	}
	r.done(relayCounts{out: out, in: r.in.n, outUnacked: unacked}, err)
}

// halfRelay copies src to dst, then half-closes dst. On an error it resets
// both, so the opposite direction ends too and each peer sees the failure as
// the reset it was, not as a clean close.
//
// It reads src one of three ways, chosen once what a wrapper read ahead
// has been copied: a tryReader without waiting, parking without a goroutine
// when nothing is there; a socket through its raw connection, taking a
// buffer only once the poller says there are bytes, and parking without a
// goroutine once it has been quiet for a while (hostconn.Conn); anything
// else with a plain Read into a buffer held while it waits.
type halfRelay struct {
	r        *relay
	dst, src net.Conn // src as given: aborts and half-closes go through it
	n        int64    // final once r.ended is called
	err      error

	tr     tryReader
	parked atomic.Bool // tr has nothing; its callback resumes the copy
	copyFn func()      // copy, made once: go h.copy() would allocate a closure at every wake
	eof    bool        // src ended with its FIN
	broken atomic.Bool // watchBroken has acted

	plain bool // src offers neither: plain Reads

	rc     syscall.RawConn
	ir     idleReader            // rc's conn, when it can park a quiet read
	resume func()                // go copyFn, made once: ir's wake
	readFn func(fd uintptr) bool // readFD, made once
	rbuf   *[]byte               // readFD's buffer, when it read something
	rn     int
	rerr   error

	// ww follows the writes to dst for the stall watch (stall.go).
	ww writeWatch

	done       atomic.Bool // finish has run
	writeBreak atomic.Bool // breakWhileCopying has acted
}

// errParked ends a copy whose tryReader has nothing to read: wake resumes
// it in a goroutine of its own.
var errParked = errors.New("parked")

// copy copies until src ends or, for a tryReader, has nothing to read.
func (h *halfRelay) copy() {
	for {
		bufp, nr, rerr := h.read()
		if rerr == errParked {
			return
		}
		if nr > 0 && h.r.recheck != nil {
			if err := h.r.recheck(); err != nil {
				h.r.denied.Store(&err) // before abort: it ends a linger under way
				relayBufPool.Put(bufp)
				h.abort(err, false)
				h.finish(err)
				return
			}
		}
		if nr > 0 {
			nw, werr := h.dst.Write((*bufp)[:nr])
			h.n += int64(nw)
			if werr != nil {
				relayBufPool.Put(bufp)
				if h.writeBreak.Load() && errors.Is(werr, net.ErrClosed) {
					// The destination reset for the client's break,
					// which the record says (r.broke).
					h.abort(nil, false)
					h.finish(nil)
					return
				}
				if !h.toBrokenClient() {
					werr = h.abort(werr, h == &h.r.out)
				}
				h.finish(werr)
				return
			}
		}
		if bufp != nil {
			relayBufPool.Put(bufp)
		}
		switch {
		case rerr == nil:
			continue
		case rerr == io.EOF:
			h.r.closeWrite(h.dst)
			h.eof = true
			if h == &h.r.out {
				h.r.finPassed.Store(true)
			}
			h.finish(nil)
			return
		}
		if h == &h.r.in {
			// Before the abort: a linger of the destination's socket,
			// its error taken by this read, asks for it (destReadError).
			// A copy: rerr is reassigned below, while the linger may
			// read it.
			readErr := rerr
			h.r.destReadErr.Store(&readErr)
		}
		rerr = h.abort(rerr, h == &h.r.in)
		if errors.Is(rerr, net.ErrClosed) {
			rerr = nil // closed by the other direction's error
		}
		h.finish(rerr)
		return
	}
}

// abort resets both peers, for why (nil: a reason the record has), which
// fromDest says is the destination's socket's error (a timeout of which
// means the destination acknowledged nothing for that long: cutOnReset).
// It returns why, or nil when the record says it otherwise (cutAfterBreak).
func (h *halfRelay) abort(why error, fromDest bool) error {
	for _, c := range [2]net.Conn{h.src, h.dst} {
		if c == h.r.upstream && (h.r.lingerOwed.Load() || h.r.delivering.Load()) {
			// A linger owns it (closeDelivering): it sees the
			// destination's reset itself, and resets it when the
			// upload's tail did not go. Closed under it, the linger
			// could not tell what the destination had.
			continue
		}
		if c == h.r.upstream {
			if h.r.cutAfterBreak(why) { // before the close: what it had
				why = nil
			}
			h.r.cutOnReset(fromDest && timedOut(why))
		}
		intercept.Abort(c)
	}
	return why
}

// toBrokenClient reports whether h writes to a client that has broken its
// connection: its failed write then resets nothing. The client's direction
// still reads what the client sent before the break, and passes its FIN
// on if one came first, or resets both (an upload cut short); the
// destination gets its whole upload either way (relayfin.go).
func (h *halfRelay) toBrokenClient() bool {
	return h == &h.r.in && h.r.clientBroken != nil && h.r.clientBroken() != nil
}

func (h *halfRelay) finish(err error) {
	h.err = err
	h.done.Store(true)
	if h.tr != nil {
		if b, ok := h.tr.(brokenReader); ok && err == nil && h.eof {
			h.tr.OnReadable(func() { h.watchBroken(b) })
			h.watchBroken(b) // it may have broken before the callback was there
		} else {
			h.tr.OnReadable(nil)
		}
	}
	h.r.ended()
}

// brokenReader is a tryReader that tells a reset from a FIN after its end
// of stream (netstack.Conn).
type brokenReader interface {
	Broken() bool
	BrokenError() error
}

// watchBroken runs on the packet path for a client direction ended by the
// client's FIN while the destination's goes on. A client that then resets,
// or vanishes (its keepalives time out), can read nothing more: the
// destination is closed, rather than waited for as long as it stays
// silent, and the record says why. Closed, not reset: it still gets the
// whole upload and the FIN (closeDelivering).
func (h *halfRelay) watchBroken(b brokenReader) {
	if !b.Broken() || !h.broken.CompareAndSwap(false, true) {
		return
	}
	go func() {
		if h.brokenAfterFIN(b) {
			// Not under aborting, which the stall watch's one goroutine
			// takes too: the report waits for the linger (lingering).
			defer h.r.lingering.Done()
			h.r.closeDelivering(h.dst)
		}
	}()
}

// brokenAfterFIN takes what broke the client's connection after its FIN,
// resetting the destination for a reclaim, and reports whether the
// destination is to be closed delivering (counted in lingering then).
func (h *halfRelay) brokenAfterFIN(b brokenReader) bool {
	h.r.aborting.Lock()
	defer h.r.aborting.Unlock()
	if h.r.left.Load() == 0 {
		return false // the relay has ended meanwhile
	}
	why := b.BrokenError()
	if p := h.r.breakSeen.Load(); why == nil && p != nil {
		why = *p // breakWhileCopying took it from the stack
	}
	if why == nil {
		return false // a clean close completing: a read's or a write's break is kept (netstack.Conn.ClientBroke)
	}
	if errors.Is(why, netstack.ErrMemoryReclaimed) || h.r.stacksClosed(why) {
		// The appliance's own reset (the reclaim's: the record names it
		// alone), or the stacks' close (the drain's end: the record
		// due within the drain's wait, which a linger would outlast),
		// not the client's break: the destination is reset as every
		// flow the reclaim or the closing ends, bytes_out net of what
		// the reset throws away. A client that reset after its FIN as
		// the stacks began closing, before they closed, broke it
		// (review rev32c F3): its linger follows, which the drain's
		// flag cuts at once (lingerStop), the destination reset only
		// if it had not taken the whole upload.
		h.r.broke.Store(&why)
		h.r.cutOnReset(false)
		intercept.Abort(h.dst)
		return false
	}
	err := fmt.Errorf("the client's connection broke after its FIN: %w", why)
	h.r.broke.Store(&err)
	// Added under aborting, which the relay's end takes before it waits:
	// the Add happens before that Wait.
	h.r.lingering.Add(1)
	h.r.lingerOwed.Store(true)
	return true
}
