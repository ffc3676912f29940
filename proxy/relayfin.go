package proxy

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/hostconn"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// A client's FIN ends its upload whole: the stack has acknowledged every
// byte and the FIN to it, and its TCP takes them as delivered. A break of
// the client after that (a reset, as a client that closes with an answer
// unread sends, or its vanishing) cuts nothing of the upload, and so must
// not cut what the appliance still holds of it: its tail in the stack,
// unread (netstack.Conn's reads say the end of the stream once the FIN is
// in, whatever came after), or in the host socket's send buffer to a
// destination slower than the client. An Abort (a zero linger) throws the
// send buffer away and resets the destination; the relay closes it
// instead, once the destination took it all (closeDelivering). A break before the FIN still resets the
// destination: that upload was cut short.

// closeDelivering closes c, a destination that has been sent a client's
// whole upload and its FIN, once the client has broken, so that it still
// gets all of it: a close with bytes the destination sent unread resets
// the connection at once (RFC 2525), throwing the upload's tail in the
// send buffer away as an Abort does, and a destination that keeps sending
// draws that reset however late the close. So c lingers first
// (hostconn.Linger): open, what the destination sends dropped, until it
// has acknowledged the tail and the FIN, or the write-stall timeout in
// force (r.stallBound, the bound a write to it has while the flow lives,
// shortened with it while memory is short) has passed, or the stacks
// close, and only then is closed; reset, when it did not take it all.
// Meanwhile the flow is still live and its record unwritten: the record
// says what the destination got (lingerCut). The relay's own aborts leave
// the destination to the linger meanwhile (halfRelay.abort). The linger
// takes one of the client's lingering connections (r.takeLinger,
// lingershare.go): a client that holds its share already has it cut short,
// after one look (a tail already acknowledged is delivered).
//
// Only the first call lingers; one made meanwhile (the relay's end, while
// watchBroken's lingers) returns at once, and the relay's report waits
// for the first (lingering, or its own call).
func (r *relay) closeDelivering(c net.Conn) {
	if r.delivering.Swap(true) {
		return
	}
	rc := rawConnOf(c)
	if rc == nil {
		_ = c.Close()
		return
	}
	stop := r.lingerStop
	// The client's flow-table entry may be forgotten soon (its reset),
	// giving its flow share back: the linger is counted in a share of
	// its own (taken at the break already, when the upload was still
	// being written: relaybreak.go), and one past it is cut short.
	if err := r.shareLinger(); err != nil {
		stop = func() error { return err }
	}
	defer r.releaseLinger()
	bufp := lingerBufPool.Get().(*[]byte)
	// The relay's shutdown queued the FIN, unless the destination had
	// reset before it (ENOTCONN): Linger counts the queue accordingly,
	// on every path, its "delivered" too (review rev33e F2).
	unsent, err := hostconn.Linger(rc, finQueued(c), *bufp, r.stallBound, stop)
	lingerBufPool.Put(bufp)
	switch {
	case err == nil:
		_ = c.Close()
	case errors.Is(err, net.ErrClosed):
		// Closed meanwhile by an abort of the relay's, whose reason the
		// record has; what the destination had by then is not known.
	default:
		if se, ok := errors.AsType[*lingerShareError](err); ok {
			se.counted() // cut by the share, not delivered at the one look
		}
		if p := r.destReadErr.Load(); p != nil {
			hostconn.SeenElsewhere(err, *p)
		}
		_, notSent := r.sendQueue() // c is r.upstream
		r.cut.Store(lingerCutOf(unsent, notSent, err))
		intercept.Abort(c)
	}
}

// lingerBufPool holds the buffers a linger reads what the destination
// sends into, to drop it: small, as a lingering flow holds one for as
// long as it lingers, with nothing in hand (Linger reads until the
// socket has no more).
var lingerBufPool = sync.Pool{New: func() any { b := make([]byte, 16<<10); return &b }}

// lingerCutOf says what a linger that ended with err, unsent data bytes
// unacknowledged and notSent of them never sent, left the destination
// without (resetCut).
func lingerCutOf(unsent, notSent int, err error) *lingerCut {
	ended, isEnded := errors.AsType[*hostconn.EndedError](err)
	if isEnded {
		notSent = ended.NotSent // counted before the connection's end
	}
	if isEnded && ended.ByPeer() {
		// The destination's own reset: the bytes it had yet to
		// acknowledge it may have read all the same (its acknowledgement
		// held back), so bytes_out counts them; those never sent it did
		// not have.
		return &lingerCut{unsent: int64(notSent), unacked: int64(max(unsent-notSent, 0)), err: &tailCutError{fmt.Errorf("the destination reset its connection with %d bytes of the upload unacknowledged: %w", unsent, err)}}
	}
	// The appliance's end (the shutdown, a reload's deny, the share),
	// or one whose cause is not known: in flight, the destination may
	// have what it had not acknowledged. After a wait that timed out (the
	// bound passed, a stall, the user timeout) it never will.
	cut := notSent
	if timedOut(err) {
		cut = unsent
	}
	return &lingerCut{unsent: int64(cut), unacked: int64(max(unsent-cut, 0)), err: &tailCutError{fmt.Errorf("the upload's tail was not delivered: %w", err)}}
}

// tailCutError is a linger's cut, as the record says it: kept whatever
// else the record says (a reload's deny that ended the linger).
type tailCutError struct{ error }

func (e *tailCutError) Unwrap() error { return e.error }

// stacksClosed reports whether why, what broke the client's connection,
// is the stacks' close (stackEnded, once they are closing: the drain's
// end), not a break of the client's own that came as they began closing.
func (r *relay) stacksClosed(why error) bool {
	w := r.stalls
	return w != nil && w.stacksClosing != nil && w.stacksClosing.Load() && stackEnded(why)
}

// lingerStop ends a linger under way once a reload has denied the flow
// (recheck: the tail goes no further to a destination the policy now
// denies), or the stacks are
// closing (the drain's end: the process exits right after, and the flow's
// record must be written within the drain's wait).
func (r *relay) lingerStop() error {
	if w := r.stalls; w != nil && w.stacksClosing != nil && w.stacksClosing.Load() {
		return errShutdown // first: a reload's check below may take a while
	}
	if p := r.denied.Load(); p != nil {
		return *p
	}
	if r.recheck != nil {
		// The destination's direction may have ended (on a failed
		// write to the broken client) and checks nothing more: a reload
		// that denies the flow ends the linger all the same. (A check
		// of the destination a reload calls for runs here, for at most
		// the dial timeout, the linger waiting.)
		if err := r.recheck(); err != nil {
			r.denied.Store(&err)
			return err
		}
	}
	return nil
}

// lingerCut is how closeDelivering found a destination that did not take
// a whole upload's tail, or what a reset of the destination threw away:
// unsent bytes of bytes_out it never had, and unacked more it still
// counts, which the destination had not acknowledged (it may have read
// them all the same).
type lingerCut struct {
	unsent  int64
	unacked int64
	err     error
}

// rawConnOf returns the socket under c's proxy wrappers, or nil when
// there is none.
func rawConnOf(c net.Conn) syscall.RawConn {
	sc, ok := unwrapped(c).(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// clientBrokenOf returns what says whether client, under the proxy's
// wrappers, broke its connection (netstack.Conn's Broken, with what broke
// it), or nil when it cannot say. The endpoint's closed state alone is
// also a clean close that completed, both FINs acknowledged, before the
// relay's end (a destination slow to take the upload): taken for a break,
// the relay lingered until the destination had acknowledged every byte,
// the record held back meanwhile, instead of closing it as any clean end.
func clientBrokenOf(client net.Conn) func() error {
	if b, ok := unwrapped(client).(brokenReader); ok {
		return func() error {
			if !b.Broken() {
				return nil
			}
			return b.BrokenError()
		}
	}
	return nil
}

// clientBreakAtEnd is what broke the client's connection as the relay
// ends, nil if nothing did; one after the FIN passed on is kept for the
// record, as watchBroken keeps the one it sees (the linger it brings is
// said: "the client's connection broke after its FIN"), unless it is the
// appliance's own (the reclaim's, the stacks' close: not a client's reset
// after its FIN as they began closing, review rev32c F3).
func (r *relay) clientBreakAtEnd() error {
	if r.clientBroken == nil {
		return nil
	}
	why := r.clientBroken()
	own := errors.Is(why, netstack.ErrMemoryReclaimed) || r.stacksClosed(why)
	if why != nil && !own && r.finPassed.Load() {
		err := fmt.Errorf("the client's connection broke after its FIN: %w", why)
		r.broke.CompareAndSwap(nil, &err)
	}
	return why
}

// unwrapped is c under the proxy's wrappers (wrappedConn).
func unwrapped(c net.Conn) net.Conn {
	for {
		w, ok := c.(wrappedConn)
		if !ok {
			return c
		}
		c = w.unwrap()
	}
}

// relayCounts is what a relay carried: bytes_out, bytes_in, and of out the
// bytes the destination had not acknowledged when the relay let go of its
// connection (records.Record.BytesOutUnacked).
type relayCounts struct{ out, in, outUnacked int64 }

type closeWriter interface{ CloseWrite() error }

// closeWrite half-closes c where it can, and closes it where it cannot.
func closeWrite(c net.Conn) error {
	if cw, ok := c.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}
