package proxy

import (
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/hostconn"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// A client's direction blocked in a write to a destination that reads
// nothing (the client uploaded more than it takes) reads the client no
// more: a client that resets then, FIN first or not, went unseen until
// the write-stall timeout (15 minutes by default), while its flow-table
// entry, forgotten soon after the reset, gave its flow share back and the
// relay kept the host socket, its buffers and the stack's queued upload
// outside every share: one client held as many as it cared to make. So
// the direction's wake (the stack's news of the client) looks for a break
// while the copy is under way too (breakWhileCopying).

// afterFINer tells a break after the client's FIN from one before
// (netstack.Conn).
type afterFINer interface{ BrokenAfterFIN() bool }

// watchCopying runs on the stack's packet path, for a copy under way
// (not parked): a client that broke is seen to at once, in a goroutine.
func (h *halfRelay) watchCopying() {
	if h.r == nil || h != &h.r.out || h.done.Load() {
		return // a direction ended by the client's FIN has watchBroken
	}
	b, ok := h.tr.(brokenReader)
	if !ok || !b.Broken() || !h.writeBreak.CompareAndSwap(false, true) {
		return
	}
	go h.breakWhileCopying(b)
}

// breakWhileCopying sees to a client that broke while its direction was
// copying, its write to the destination possibly blocked. A break before
// the FIN cut the upload short: the destination is reset at once, as a
// read of the break would have, and the record says why. A break after
// the FIN (the FIN in the stack, behind the upload still to be written)
// cut nothing: the copy goes on, and the destination lingers once it has
// the upload (watchBroken); the linger is counted in the client's share
// of lingering connections from now, and one past it is cut short at
// once, the destination reset with the upload's tail undelivered.
func (h *halfRelay) breakWhileCopying(b brokenReader) {
	r := h.r
	// The stack reports the break once: taken under aborting, as
	// watchBroken's look at the copy's end (brokenAfterFIN) takes it, so
	// that one of the two keeps it. Taken before, a copy that reached
	// the FIN meanwhile found none, and this found the copy ended.
	r.aborting.Lock()
	defer r.aborting.Unlock()
	if r.left.Load() == 0 || h.done.Load() {
		return // ended meanwhile: by the client's FIN, watchBroken's
	}
	why := b.BrokenError()
	if why == nil {
		return // a clean close completing
	}
	af, _ := b.(afterFINer)
	afterFIN := af != nil && af.BrokenAfterFIN()
	var err error
	switch {
	case errors.Is(why, netstack.ErrMemoryReclaimed) || r.stacksClosed(why):
		// The appliance's own reset, or the stacks' close (their abort's
		// error, not a reset the client sent as they began closing, review
		// rev32c F4: endedError adds the shutdown's words only to the
		// former): the record names it, and the destination is reset as
		// for every flow.
		err = why
	case !afterFIN && h.ww.waitSince.Load() != 0:
		err = fmt.Errorf("the client's connection broke before its FIN, its upload waiting on the destination: %w", why)
	case !afterFIN:
		// The copy is busy, no write waiting (the write watch says when
		// one does): the destination took all it was given so far.
		err = fmt.Errorf("the client's connection broke before its FIN: %w", why)
	default:
		// Taken from the stack once: watchBroken's look at the end of
		// the copy finds it here.
		r.breakSeen.Store(&why)
		serr := r.shareLinger()
		if serr == nil {
			// The copy goes on; the linger holds the share taken.
			go r.watchDeny()
			return
		}
		if se, ok := errors.AsType[*lingerShareError](serr); ok {
			se.counted()
		}
		err = fmt.Errorf("the client's connection broke after its FIN: %w", why)
		r.cut.Store(r.queueCut(false, &tailCutError{fmt.Errorf("the upload's tail was not delivered: lingering: %w", serr)}))
	}
	r.broke.Store(&err)
	if r.cut.Load() == nil {
		// The reset throws the socket's send queue away: bytes_out
		// leaves out what was never sent (resetCut).
		r.cut.Store(r.queueCut(false, nil))
	}
	intercept.Abort(r.upstream) // the blocked write ends with net.ErrClosed
}

// cutAfterBreak sees to the end of a relay whose client broke after its
// FIN while the upload was still being written (breakSeen): why, the
// destination's reset, the stall watch's, the shutdown's or another abort
// of the relay's, ends the linger begun at the break, before the
// destination had the upload's tail. The record says the break, as
// watchBroken's would, and the tail's cut as a linger's end says it
// (lingerCutOf), bytes_out net of what the destination never had
// (resetCut). Called before the destination's socket is closed, whose
// queue's counts go with it; the first call counts, and reports whether
// the record says why so.
func (r *relay) cutAfterBreak(why error) bool {
	p := r.breakSeen.Load()
	if p == nil || why == nil || r.cut.Load() != nil {
		return false
	}
	unacked, notSent := r.sendQueue()
	if errors.Is(why, syscall.ECONNRESET) || errors.Is(why, syscall.EPIPE) {
		// The destination's reset: the bytes it had yet to acknowledge
		// it may have read, those never sent it did not.
		why = &hostconn.EndedError{Err: why, NotSent: notSent}
	}
	if !r.cut.CompareAndSwap(nil, lingerCutOf(unacked, notSent, why)) {
		return false
	}
	err := fmt.Errorf("the client's connection broke after its FIN: %w", *p)
	r.broke.CompareAndSwap(nil, &err)
	return true
}

// denyPoll is how often watchDeny asks the recheck between the policy's
// changes, which wake it at once: it looks mostly for the copy's end.
const denyPoll = time.Second

// watchDeny ends the relay, its client broken after its FIN while the
// write of the upload waits (a linger from the break), when a reload
// denies the flow, as lingerStop ends a linger: the copy asks the recheck
// only between reads, and the flow ran to the write-stall timeout, the
// share and the socket held. It asks at each change of the policy
// (hostconn.WakeLingers, the policy's OnChange), and every denyPoll, until
// the copy or the relay ends: a linger at the copy's end asks for itself.
func (r *relay) watchDeny() {
	if r.recheck == nil {
		return
	}
	t := time.NewTimer(denyPoll)
	defer t.Stop()
	for {
		woken := hostconn.LingersWoken() // before the look: a change after it wakes the wait
		if r.askDeny() {
			return
		}
		select {
		case <-woken:
			t.Stop()
		case <-t.C:
		}
		t.Reset(denyPoll)
	}
}

// askDeny asks the recheck for watchDeny, and reports whether the watch is
// over: the relay ended (or its copy, or a cut or stall ended it), or the
// recheck denied it, and then the destination is reset, the tail not
// delivered (cutAfterBreak), and the record says the deny as a linger's
// (tailCutError). Under aborting, which the relay's end takes before its
// record: the recheck's decision, written into the record's fields, is
// made before that record is written, or not at all.
func (r *relay) askDeny() bool {
	r.aborting.Lock()
	defer r.aborting.Unlock()
	if r.left.Load() == 0 || r.out.done.Load() || r.cut.Load() != nil || r.stalled.Load() != nil {
		return true // a linger at the copy's end asks the recheck itself
	}
	err := r.recheck()
	if err == nil {
		return false
	}
	r.denied.Store(&err)
	if r.cutAfterBreak(err) {
		intercept.Abort(r.upstream) // the blocked write ends with net.ErrClosed (writeBreak)
	}
	return true
}

// saidOnly is an error whose text the record says, and whose causes the
// record's result does not go by (relayResultOf): a stall that ended a
// linger is not the flow's stall.
type saidOnly struct{ error }

// shareLinger takes one of the client's lingering connections for r, once
// (r.takeLinger): later calls say what the first got. Nil when r counts
// none.
func (r *relay) shareLinger() error {
	if r.takeLinger == nil {
		return nil
	}
	r.lingerOnce.Do(func() {
		r.lingerRelease, r.lingerErr = r.takeLinger()
	})
	return r.lingerErr
}

// releaseLinger gives back the lingering connection shareLinger took, if
// it took one. Only once the destination is closed or reset.
func (r *relay) releaseLinger() {
	r.lingerOnce.Do(func() {}) // none taken from now
	if r.lingerRelease != nil {
		r.lingerRelease()
	}
}

// resetCut: a reset the appliance sends a destination with bytes of the
// upload still in the socket's queue throws them away, and bytes_out
// leaves out what the destination never had. Never sent, it never had
// them. Sent and not yet acknowledged, it may: the reset follows them on
// the wire, and a destination that held its acknowledgement back (a
// delayed ACK) reads them before it (4,096 bytes read where the 2,048
// acknowledged were counted, in 6 runs of 6), so they are counted, as for
// a destination's own reset; unless the appliance gave up after a wait
// that timed out (a write stalled, a linger's bound, the host's timeout):
// what was not acknowledged in all that time never will be.

// cutOnReset counts, before the destination's socket is reset or closed
// (for the destination's own reset, a stall, a reload's deny, the
// client's reset), what its send queue held that the destination never
// had, unless a cut is counted already: the bytes never sent, or, when
// the destination itself timed out (destTimedOut: the write to it
// stalled, its socket's own timeout), all those unacknowledged
// (resetCut). Not for the client's timeout or stall: the destination,
// acknowledging all along, may read the bytes in flight, which the reset
// follows. A destination that reset first left the counts as they stood.
func (r *relay) cutOnReset(destTimedOut bool) {
	if r.cut.Load() != nil {
		return
	}
	r.cut.CompareAndSwap(nil, r.queueCut(destTimedOut, nil))
}

// queueCut is the cut of a reset of the destination's socket, with err
// (nil: none the record says): bytes_out leaves out the bytes its send
// queue never sent, or, all, every byte the destination had not
// acknowledged; of those it still counts, unacked are not acknowledged
// (the record's bytes_out_unacked).
func (r *relay) queueCut(all bool, err error) *lingerCut {
	unacked, notSent := r.sendQueue()
	if all {
		notSent = unacked
	}
	return &lingerCut{unsent: int64(notSent), unacked: int64(max(unacked-notSent, 0)), err: err}
}

// unackedPayload is how many bytes of the payload written to the
// destination's socket it has not acknowledged (its FIN is none).
func (r *relay) unackedPayload() int64 {
	unacked, _ := r.sendQueue()
	return int64(unacked)
}

// sendQueue is what the destination's socket holds of the upload: the
// bytes the destination has not acknowledged, and of them those never
// sent. The FIN's sequence number is no byte; the socket counts it among
// the bytes never sent until it goes, among those unacknowledged until it
// is acknowledged, from the moment the shutdown queues it, and the
// connection says it queued (FINQueued) only once that shutdown has
// returned. A count read between the two found the FIN in the counts and
// took it for a byte: a reset of the destination meanwhile, which keeps
// the counts as they stood, left bytes_out one below what the destination
// had read (1 run in 25 under load). So the counts are read under finMu,
// which closeWrite holds across the shutdown and what the connection says
// of it: they and FINQueued agree.
func (r *relay) sendQueue() (unacked, notSent int) {
	r.finMu.Lock()
	defer r.finMu.Unlock()
	unacked, notSent = unackedOf(r.upstream), notSentOf(r.upstream)
	if finQueued(r.upstream) {
		unacked, notSent = max(unacked-1, 0), max(notSent-1, 0)
	}
	return unacked, notSent
}

// closeWrite passes the end of a direction's stream on to c, one of r's
// connections: a shutdown of the destination's socket under finMu
// (sendQueue).
func (r *relay) closeWrite(c net.Conn) {
	if c != r.upstream {
		_ = closeWrite(c)
		return
	}
	r.finMu.Lock()
	defer r.finMu.Unlock()
	_ = closeWrite(c)
}

// timedOut reports whether err ended a wait on the destination that timed
// out (resetCut).
func timedOut(err error) bool {
	return errors.Is(err, errWriteStalled) || errors.Is(err, hostconn.ErrTailUndelivered) || errors.Is(err, syscall.ETIMEDOUT)
}

// finQueued reports whether c's socket was shut for writing, its FIN
// queued (hostconn.Conn.FINQueued): the FIN takes a sequence number in
// the socket's counts, which is no byte of bytes_out.
func finQueued(c net.Conn) bool {
	q, ok := unwrapped(c).(interface{ FINQueued() bool })
	return ok && q.FINQueued()
}

// notSentOf is how many bytes c's socket holds that it never sent (0
// when it cannot say).
func notSentOf(c net.Conn) int {
	if q, ok := unwrapped(c).(interface{ SendNotSent() (int, error) }); ok {
		if n, err := q.SendNotSent(); err == nil {
			return n
		}
	}
	return 0
}

// unackedOf is how many bytes c's socket holds that its peer has not
// acknowledged (0 when it cannot say): before the socket's FIN, all data.
func unackedOf(c net.Conn) int {
	if q, ok := unwrapped(c).(interface{ SendQueued() (int, error) }); ok {
		if n, err := q.SendQueued(); err == nil {
			return n
		}
	}
	return 0
}
