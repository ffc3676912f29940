package netstack

import "container/heap"

// Eviction. The per-client share bounds what one address holds, but an
// instance is one client with as many addresses as it has secondary IPs:
// ten of them, each sending bare ACKs or SYNs to new ports, held the whole
// table with transitory flows (30 s each), and every other client of every
// endpoint got flow_table_full while memory pressure never tripped (an
// entry is small). So a new flow in a full table takes the place of an
// evictable flow: a TCP flow that is not live (never established, or
// reset, or closed both ways), or another flow never answered. A live
// connection, or a flow the stack has answered, is never evicted, and a
// table full of those still refuses new flows.
//
// Whose flow: the oldest of the client holding the most evictable flows,
// the new flow's own client when it holds as many as any. Evictable flows
// include other clients' flows in progress (a SYN whose destination is
// being dialled, a DNS query awaiting its answer, an unanswered ping), and
// taking the table's oldest regardless of owner let one address within its
// share churn through them: a victim's flow lived about (evictable flows in
// the table) / (the flooder's new flows a second). Now a flood churns
// through its own flows once it holds the most, and an address takes
// someone else's only from a client holding more than it does. Taking the
// new flow's own client's first whatever it held would make a client that
// opens a few connections at once, each waiting for its dial, evict its own
// in-progress flows with each new one; by the most held, a client with a
// few flows in progress loses one only when no client holds more. Each client keeps its evictable flows in a
// queue, oldest first, and each of the 64 client shards a heap of its
// clients by queue length, whose top it publishes in an atomic: eviction
// reads the 64 tops, with no lock, and locks the one shard it takes from.
//
// A new flow is queued when made, and its entry stays once it is live or
// answered until a prune or a pop reaches it: by raw queue length, a busy
// client that had just opened many connections ranked as the biggest
// holder and lost its dialling SYNs while a flooder with more evictable
// flows kept its own. So a flow queued and then made live or answered
// marks its client's queue stale (on its next packet), and eviction prunes
// a stale queue before it takes from it, looking again if that client then
// holds fewer than another. Each stale entry is dropped once, and a queue
// not stale is not scanned, so the work stays bounded by the flows made.
//
// A connection made and then reset or closed is evictable too: else ten
// addresses completing handshakes (a SYN that only a name could allow gets
// its SYN-ACK with nothing dialled) and resetting them held the table as
// before, one packet every 25 s each, with no connection in the stack. A
// reset flow the stack still holds is the exception: a RST out of the
// connection's window, which anyone who can write the client's address can
// send and which the stack ignores, marks the flow reset all the same, so
// eviction asks the stack (Server.holdsTCP) before it takes such a flow,
// with no lock held, as Expire does. A flow that stops being live joins
// its client's queue again then (tcpSeen), and a flow live since it was
// queued leaves the queue when it comes to the front.

// evictAsks bounds the questions to the stack one eviction asks (reset
// flows found still held); each takes a spoofed RST to set up. Past it,
// reset flows are set aside (resetAside), not a reason to refuse.
const evictAsks = 64

// evictable reports whether f may be evicted: a TCP flow that is not live,
// or another flow the stack never answered. A reset flow the stack still
// holds is evictable by this; evict asks the stack about it.
func (f *Flow) evictable() bool {
	if f.key.Proto == protoTCP {
		return !f.tcpLive()
	}
	return !f.replied.Load()
}

// tcpSeen queues f for eviction if its TCP state, after a segment either
// way, is not live and f is not queued already. It is on the per-packet
// path: a live flow, or one queued, costs an atomic load; a flow that
// stops being live (once per connection) takes its client's lock.
func (t *flowTable) tcpSeen(f *Flow, state uint32) {
	if !tcpLiveState(state) {
		if !f.queued.Load() {
			t.requeue(f)
		}
	} else if f.queued.Load() {
		f.leftEvictable()
	}
}

// leftEvictable marks the queue of f's client stale if f, queued, is no
// longer evictable: a flow made live or answered since it was queued. Its
// entry still counts in the client's queue length, by which eviction
// ranks the clients, until a prune drops it. For a live flow's packets
// until then it costs two atomic loads.
func (f *Flow) leftEvictable() {
	if cl := f.owner; cl != nil && !cl.stale.Load() {
		cl.stale.Store(true)
	}
}

// answered notes that the stack answered f, a flow other than TCP: it is
// no longer evictable.
func (t *flowTable) answered(f *Flow) {
	if f.queued.Load() {
		f.leftEvictable()
	}
}

// requeue appends f to its client's queue unless it is queued already or
// out of the table.
func (t *flowTable) requeue(f *Flow) {
	if !f.queued.CompareAndSwap(false, true) {
		return
	}
	cl := f.owner
	cl.sh.mu.Lock()
	if cl.flows > 0 && !f.removed.Load() {
		cl.fresh = append(cl.fresh, f)
		cl.sh.fix(cl)
	}
	cl.sh.mu.Unlock()
}

// evict takes an evictable flow out of the table for a new flow of own,
// and reports whether it found one: the oldest of the client with the most
// queued, own's if own has as many. It is called only for a new
// flow in a full table; the entries it skips (flows live or removed since)
// leave their queue until the flow stops being live again, and those it
// sets aside (reset flows past its asks) leave it until asked, so the work
// is bounded by the flows made, the connections ended and the RSTs seen.
func (t *flowTable) evict(own *client) bool {
	asks := 0
	for empty := 0; empty < flowShards; {
		f := own.popIfMost(&t.clients)
		if f == nil {
			var queued, pruned bool
			if f, queued, pruned = t.clients.popMost(); !queued {
				break
			}
			if f == nil && !pruned {
				empty++ // a shard emptied since its top was read
			}
		}
		if f == nil {
			continue // or a client held fewer once pruned: look again
		}
		s := t.shard(&f.key)
		switch {
		case t.held == nil || !f.tcpResetOnly():
			if t.evictNow(s, f) {
				return true
			}
		case asks == evictAsks:
			t.setAside(f)
		default:
			asks++
			if t.evictReset(s, f) {
				return true
			}
		}
	}
	// The queues hold nothing evictable: the reset flows set aside are
	// consulted last, with what is left of the asks.
	for asks < evictAsks {
		f := t.aside.pop()
		if f == nil {
			return false
		}
		s := t.shard(&f.key)
		if !f.tcpResetOnly() {
			if t.evictNow(s, f) {
				return true
			}
			continue
		}
		asks++
		if t.evictReset(s, f) {
			return true
		}
	}
	return false
}

// evictNow evicts f, of shard s, if it is still in the table and
// evictable, and else queues it again if it is evictable by now.
func (t *flowTable) evictNow(s *flowShard, f *Flow) bool {
	if t.removeIfEvictable(s, f) {
		t.evicted1()
		return true
	}
	t.requeueIfEvictable(f)
	return false
}

// removeIfEvictable takes f, of shard s, out of the table if it is still
// there and evictable; the caller takes it off the count.
func (t *flowTable) removeIfEvictable(s *flowShard, f *Flow) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	ok := s.flows[f.key] == f && f.evictable()
	if ok {
		t.removeLocked(s, f)
	}
	return ok
}

// resetAside queues the reset flows eviction found once it had spent its
// asks (evictAsks): out-of-window RSTs, which anyone writing a client's
// address can send, on 64 connections the stack still holds made each new
// flow in a full table flow_table_full for 64 RSTs, while other flows were
// plainly evictable. Past its asks, eviction sets such flows aside here,
// counted for no client, and goes on through the queues; it consults them
// last, when the queues hold nothing else evictable. A flow set aside
// holds its queued mark; Expire prunes the queue.
type resetAside struct {
	sh clientShard
	cl client
}

// setAside queues f, a reset flow popped from its client's queue, aside,
// unless a segment queued it again meanwhile.
func (t *flowTable) setAside(f *Flow) {
	if !f.queued.CompareAndSwap(false, true) {
		return
	}
	a := &t.aside
	a.sh.mu.Lock()
	a.cl.fresh = append(a.cl.fresh, f)
	a.sh.fix(&a.cl)
	a.sh.mu.Unlock()
}

// pop takes the oldest flow set aside still evictable and in the table;
// nil if there is none.
func (a *resetAside) pop() *Flow {
	if a.sh.top.Load() == 0 {
		return nil
	}
	a.sh.mu.Lock()
	defer a.sh.mu.Unlock()
	return a.cl.popLocked()
}

// evictReset evicts f, a flow established and reset, of shard s, unless
// the stack still holds its connection (an out-of-window RST it ignored):
// then f is live again, and stays. The stack is asked with no lock held,
// as Expire does.
func (t *flowTable) evictReset(s *flowShard, f *Flow) bool {
	last := f.lastSeen.Load()
	if t.held(&f.key) {
		if f.lastSeen.Load() == last {
			f.tcpUpdate(afterHeld, 0)
		} else {
			// A packet since (a RST the stack is about to take):
			// leave the mark, and the flow evictable.
			t.requeue(f)
		}
		return false
	}
	s.mu.Lock()
	ok := s.flows[f.key] == f && f.evictable()
	if ok {
		t.removeLocked(s, f)
	}
	s.mu.Unlock()
	if ok {
		t.evicted1()
	} else {
		t.requeueIfEvictable(f)
	}
	return ok
}

// requeueIfEvictable queues f again if it is in the table and evictable:
// one popped but not evicted, which no later segment may queue.
func (t *flowTable) requeueIfEvictable(f *Flow) {
	if !f.removed.Load() && f.evictable() {
		t.requeue(f)
	}
}

// evicted1 counts a flow evicted.
func (t *flowTable) evicted1() {
	t.count.Add(-1)
	t.evicted.Add(1)
}

// mostQueued returns the most entries any client has queued, as the
// shards last published it.
func (c *clientShares) mostQueued() int32 {
	var most int32
	for i := range c.shards {
		most = max(most, c.shards[i].top.Load())
	}
	return most
}

// popMost pops the oldest evictable flow of the client holding the most
// queued entries: the first of the shard whose published top is the
// highest. The tops are read without locks; a stale one costs a look at a
// client with fewer, or at none (nil). A client whose queue is stale is
// pruned first, and if it then holds fewer than another, popMost returns
// nil, reporting pruned. It reports whether any shard had entries queued.
func (c *clientShares) popMost() (f *Flow, queued, pruned bool) {
	best, bestN := -1, int32(0)
	for i := range c.shards {
		if n := c.shards[i].top.Load(); n > bestN {
			best, bestN = i, n
		}
	}
	if best < 0 {
		return nil, false, false
	}
	s := &c.shards[best]
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.byFresh) > 0 {
		cl := s.byFresh[0]
		if cl.stale.Load() && cl.pruneLocked() > 0 {
			s.fix(cl)
			if int32(cl.queuedN()) < c.mostQueued() {
				return nil, true, true
			}
		}
		if f := cl.popLocked(); f != nil {
			return f, true, false
		}
	}
	return nil, true, false
}

// popIfMost takes cl's oldest flow still evictable and in the table off
// its queue if cl has at least as many queued as any client of c, its
// queue pruned first if stale; nil if it has fewer, or none is evictable
// (or cl is nil).
func (cl *client) popIfMost(c *clientShares) *Flow {
	if cl == nil || cl.sh.top.Load() == 0 {
		return nil // nothing queued in its shard: no lock needed
	}
	most := c.mostQueued()
	cl.sh.mu.Lock()
	defer cl.sh.mu.Unlock()
	if int32(cl.queuedN()) < most {
		return nil
	}
	if cl.stale.Load() && cl.pruneLocked() > 0 {
		cl.sh.fix(cl)
		if int32(cl.queuedN()) < c.mostQueued() {
			return nil
		}
	}
	return cl.popLocked()
}

// popLocked takes cl's oldest flow still evictable and in the table off
// its queue, dropping the entries before it, and moves cl in its shard's
// heap; nil if there is none. The caller holds cl.sh locked. A flow's
// queued mark is cleared before its state is read, so that one stopping
// being live meanwhile is queued again (tcpSeen) or taken here.
func (cl *client) popLocked() *Flow {
	var found *Flow
	for cl.head < len(cl.fresh) {
		f := cl.fresh[cl.head]
		cl.fresh[cl.head] = nil
		cl.head++
		f.queued.Store(false)
		if !f.removed.Load() && f.evictable() {
			found = f
			break
		}
	}
	if cl.head > len(cl.fresh)/2 {
		// Half the array is popped: move the rest to its front, so that
		// a client churning its own flows between prunes reuses the
		// array rather than growing it by a pointer per flow. Each
		// entry moves at most once per entry popped.
		n := copy(cl.fresh, cl.fresh[cl.head:])
		clear(cl.fresh[n:])
		cl.fresh, cl.head = cl.fresh[:n], 0
	}
	cl.sh.fix(cl)
	return found
}

// pruneLocked drops the entries of flows removed or no longer evictable
// from cl's queue, and second entries of a flow, keeping the others in
// order, and returns how many it dropped; the caller holds cl.sh locked
// and moves cl in the heap. It clears the stale mark first: a flow leaving
// the evictable set meanwhile marks it again.
func (cl *client) pruneLocked() int {
	cl.stale.Store(false)
	was := cl.queuedN()
	for _, f := range cl.fresh[cl.head:] {
		f.queued.Store(false)
	}
	n := 0
	for _, f := range cl.fresh[cl.head:] {
		// The mark is set again for the first entry of a flow kept: a
		// second one (a race's) goes, and so does this one if a
		// segment queued the flow again meanwhile.
		if !f.removed.Load() && f.evictable() && f.queued.CompareAndSwap(false, true) {
			cl.fresh[n] = f
			n++
		}
	}
	clear(cl.fresh[n:])
	cl.fresh, cl.head = cl.fresh[:n], 0
	if cap(cl.fresh) > 2*n+64 {
		// A burst since the last prune grew the array: give back what
		// the queue no longer needs.
		cl.fresh = append([]*Flow(nil), cl.fresh...)
	}
	return was - n
}

// pruneFresh drops the entries of flows removed or no longer evictable
// from the queues of s's clients, and second entries of a flow, keeping
// the others in order, so that a queue holds at most its client's
// evictable flows and those queued since the last Expire.
func (s *clientShard) pruneFresh() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, cl := range s.byFresh {
		cl.pruneLocked()
	}
	kept := s.byFresh[:0]
	for _, cl := range s.byFresh {
		if cl.queuedN() > 0 {
			cl.at = len(kept)
			kept = append(kept, cl)
		} else {
			cl.at = -1
		}
	}
	clear(s.byFresh[len(kept):])
	s.byFresh = kept
	heap.Init(&s.byFresh)
	var top int32
	if len(s.byFresh) > 0 {
		top = int32(s.byFresh[0].queuedN())
	}
	s.top.Store(top)
}
