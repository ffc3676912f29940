package netstack

// Eviction. The per-client share bounds what one address holds, but an
// instance is one client with as many addresses as it has secondary IPs:
// ten of them, each sending bare ACKs or SYNs to new ports, held the whole
// table with transitory flows (30 s each), and every other client of every
// endpoint got flow_table_full while memory pressure never tripped (an
// entry is small). So a new flow in a full table takes the place of the
// oldest evictable flow: a TCP flow that is not live (never established,
// or reset, or closed both ways), or another flow never answered. A flood
// of such flows then churns through its own kind, while a live connection,
// or a flow the stack has answered, is never evicted, and a table full of
// those still refuses new flows.
//
// A connection made and then reset or closed is evictable too: else ten
// addresses completing handshakes (a SYN that only a name could allow gets
// its SYN-ACK with nothing dialled) and resetting them held the table as
// before, one packet every 25 s each, with no connection in the stack. A
// reset flow the stack still holds is the exception: a RST out of the
// connection's window, which anyone who can write the client's address can
// send and which the stack ignores, marks the flow reset all the same, so
// eviction asks the stack (Server.holdsTCP) before it takes such a flow,
// outside the shard's lock, as Expire does. A flow that stops being live
// joins its shard's queue again then (tcpSeen), and a flow live since it
// was queued leaves the queue when it comes to the front.

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
// stops being live (once per connection) takes its shard's lock.
func (t *flowTable) tcpSeen(f *Flow, state uint32) {
	if !tcpLiveState(state) && !f.queued.Load() {
		t.requeue(f)
	}
}

// requeue appends f to its shard's fresh queue unless it is queued already
// or out of the table.
func (t *flowTable) requeue(f *Flow) {
	if !f.queued.CompareAndSwap(false, true) {
		return
	}
	s := t.shard(&f.key)
	s.mu.Lock()
	if s.flows[f.key] == f {
		s.fresh = append(s.fresh, f)
		t.queuedAdd(s, 1)
	}
	s.mu.Unlock()
}

// evict takes the oldest evictable flow of one shard out of the table,
// looking in shard first (the new flow's, whose lock the caller is about
// to take anyway) and then in the others, and reports whether it found
// one. A shard with nothing queued is passed over by its count, without
// its lock: in a table full of live flows, every packet of a flood would
// else take the write lock of each of the 64 shards that every inbound
// packet and reply read-locks. Flows are spread over the shards by a hash, so a shard's oldest is
// close to the table's. It is called only for a new flow in a full table;
// the entries it skips (flows live or removed since) leave their queue
// until the flow stops being live again, so the work is bounded by the
// flows made and the connections ended.
func (t *flowTable) evict(first int) bool {
	for i := 0; i < flowShards; {
		if t.freshQueued.Load() <= 0 {
			return false
		}
		s := &t.shards[(first+i)%flowShards]
		if s.queued.Load() <= 0 {
			i++ // nothing queued: its lock is the readers'
			continue
		}
		s.mu.Lock()
		f := t.popFresh(s)
		if f == nil {
			s.mu.Unlock()
			i++
			continue
		}
		if t.held == nil || !f.tcpResetOnly() {
			t.removeLocked(s, f)
			s.mu.Unlock()
			t.evicted1()
			return true
		}
		s.mu.Unlock()
		if t.evictReset(s, f) {
			return true
		}
		i++ // at most one question to the stack per shard
	}
	return false
}

// evictReset evicts f, a flow established and reset, of shard s, unless
// the stack still holds its connection (an out-of-window RST it ignored):
// then f is live again, and stays. The stack is asked with no shard lock
// held, as Expire does.
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
	} else if !f.removed.Load() && f.evictable() {
		t.requeue(f)
	}
	return ok
}

// queuedAdd counts n entries more in s's fresh queue; the caller holds s
// locked.
func (t *flowTable) queuedAdd(s *flowShard, n int) {
	s.queued.Add(int32(n))
	t.freshQueued.Add(int64(n))
}

// evicted1 counts a flow evicted.
func (t *flowTable) evicted1() {
	t.count.Add(-1)
	t.evicted.Add(1)
}

// popFresh takes the oldest flow still evictable and in the table off s's
// queue, dropping the entries before it; nil if there is none. The caller
// holds s locked. A flow's queued mark is cleared before its state is
// read, so that one stopping being live meanwhile is queued again
// (tcpSeen) or taken here.
func (t *flowTable) popFresh(s *flowShard) *Flow {
	for s.freshHead < len(s.fresh) {
		f := s.fresh[s.freshHead]
		s.fresh[s.freshHead] = nil
		s.freshHead++
		t.queuedAdd(s, -1)
		f.queued.Store(false)
		if !f.removed.Load() && f.evictable() {
			return f
		}
	}
	s.fresh, s.freshHead = s.fresh[:0], 0 // empty: the array is reused
	return nil
}

// pruneFresh drops the entries of flows removed or no longer evictable
// from s's queue, keeping the others in order, so that the queue holds at
// most the shard's evictable flows and those queued since the last
// Expire. The caller holds s locked.
func (t *flowTable) pruneFresh(s *flowShard) {
	q := s.fresh[s.freshHead:]
	n := 0
	for _, f := range q {
		if f.removed.Load() {
			continue
		}
		f.queued.Store(false)
		if f.evictable() {
			f.queued.Store(true)
			s.fresh[n] = f
			n++
		}
	}
	clear(s.fresh[n:])
	t.queuedAdd(s, n-len(q))
	s.fresh, s.freshHead = s.fresh[:n], 0
}
