package netstack

// Eviction. The per-client share bounds what one address holds, but an
// instance is one client with as many addresses as it has secondary IPs:
// ten of them, each sending bare ACKs or SYNs to new ports, held the whole
// table with transitory flows (30 s each), and every other client of every
// endpoint got flow_table_full while memory pressure never tripped (an
// entry is small). So a new flow in a full table takes the place of the
// oldest fresh flow: one never established (TCP) or never answered
// (others). A flood of such flows then churns through its own kind, while
// an established flow, or one the stack has answered, is never evicted,
// and a table full of those still refuses new flows.

// evictable reports whether f is fresh: a TCP flow whose connection was
// never seen established, or another flow the stack never answered. A
// flow made again on an established connection's ports (after its entry
// expired) becomes established with the stack's first segment on it.
func (f *Flow) evictable() bool {
	if f.key.Proto == protoTCP {
		return f.tcp.Load()&tcpEstablished == 0
	}
	return !f.replied.Load()
}

// evict takes the oldest fresh flow of one shard out of the table, looking
// in shard first (the new flow's, whose lock the caller is about to take
// anyway) and then in the others, and reports whether it found one. Flows
// are spread over the shards by a hash, so a shard's oldest is close to
// the table's. It is called only for a new flow in a full table; the
// entries it skips (flows established or removed since) leave their queue
// for good, so the work is bounded by the flows made.
func (t *flowTable) evict(first int) bool {
	for i := range flowShards {
		if t.freshQueued.Load() <= 0 {
			return false
		}
		s := &t.shards[(first+i)%flowShards]
		s.mu.Lock()
		f := t.popFresh(s)
		if f != nil {
			t.removeLocked(s, f)
		}
		s.mu.Unlock()
		if f != nil {
			t.count.Add(-1)
			t.evicted.Add(1)
			return true
		}
	}
	return false
}

// popFresh takes the oldest flow still fresh and in the table off s's
// queue, dropping the entries before it; nil if there is none. The caller
// holds s locked.
func (t *flowTable) popFresh(s *flowShard) *Flow {
	for s.freshHead < len(s.fresh) {
		f := s.fresh[s.freshHead]
		s.fresh[s.freshHead] = nil
		s.freshHead++
		t.freshQueued.Add(-1)
		if !f.removed.Load() && f.evictable() {
			return f
		}
	}
	s.fresh, s.freshHead = s.fresh[:0], 0 // empty: the array is reused
	return nil
}

// pruneFresh drops the entries of flows removed or no longer fresh from
// s's queue, keeping the others in order, so that the queue holds at most
// the shard's fresh flows and those made since the last Expire. The caller
// holds s locked.
func (t *flowTable) pruneFresh(s *flowShard) {
	q := s.fresh[s.freshHead:]
	n := 0
	for _, f := range q {
		if !f.removed.Load() && f.evictable() {
			s.fresh[n] = f
			n++
		}
	}
	clear(s.fresh[n:])
	t.freshQueued.Add(int64(n - len(q)))
	s.fresh, s.freshHead = s.fresh[:n], 0
}
