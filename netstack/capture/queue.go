package capture

import (
	"sync/atomic"
)

// Slot sizes: most inner packets fit a small slot (an Internet MTU); jumbo
// packets (up to the GWLB's 8500-byte datagrams) take a large one.
const (
	smallSlot = 2048
	largeSlot = 8500
)

// slot is one queued packet: a copy of its bytes and what the outputs need
// to know about it.
type slot struct {
	endpoint uint64
	cookie   uint32
	out      bool
	plain    bool  // synthesized: the decrypted side of a bumped connection
	ts       int64 // unix nanoseconds
	n        int   // len(buf) used
	buf      []byte
	free     chan *slot // the free list it goes back to
}

func (s *slot) data() []byte { return s.buf[:s.n] }

// queue is a bounded queue of packets between the packet path and one
// output's goroutine. Its slots are allocated once, up front: put never
// allocates, and never blocks (a packet without a free slot is dropped and
// counted).
type queue struct {
	small, large chan *slot // free slots
	full         chan *slot // queued packets, in order
	dropped      atomic.Uint64
	// abandoned is set when Close stopped waiting for the output: what is
	// still queued is dropped, not written.
	abandoned atomic.Bool
	// plain counts the slots synthesized packets hold, queued or being
	// written; they may hold plainLimit at most, so that a bumped
	// connection's plaintext never crowds the wire packets out.
	plain      atomic.Int64
	plainLimit int64
}

// plainShare is the part of a queue's slots synthesized packets may hold
// at once: the rest is the wire packets' alone.
const plainShare = 4 // a quarter

func newQueue(packets int) *queue {
	nLarge := max(packets/16, 1)
	nSmall := max(packets-nLarge, 1)
	q := &queue{
		small: make(chan *slot, nSmall),
		large: make(chan *slot, nLarge),
		full:  make(chan *slot, nSmall+nLarge),
	}
	q.plainLimit = int64(max((nSmall+nLarge)/plainShare, 1))
	for range nSmall {
		q.small <- &slot{buf: make([]byte, smallSlot), free: q.small}
	}
	for range nLarge {
		q.large <- &slot{buf: make([]byte, largeSlot), free: q.large}
	}
	return q
}

// put queues a copy of pkt, or counts a drop and returns false.
func (q *queue) put(endpoint uint64, cookie uint32, out, plain bool, now int64, pkt []byte) bool {
	free := q.small
	if len(pkt) > smallSlot {
		if len(pkt) > largeSlot {
			q.dropped.Add(1)
			return false
		}
		free = q.large
	}
	if plain && q.plain.Add(1) > q.plainLimit {
		q.plain.Add(-1)
		q.dropped.Add(1)
		return false
	}
	var s *slot
	select {
	case s = <-free:
	default:
		if plain {
			q.plain.Add(-1)
		}
		q.dropped.Add(1)
		return false
	}
	s.endpoint, s.cookie, s.out, s.plain, s.ts = endpoint, cookie, out, plain, now
	s.n = copy(s.buf, pkt)
	// full holds every slot there is: this never waits.
	q.full <- s
	return true
}

// release returns s to its free list once its output is done with it.
func (q *queue) release(s *slot) {
	if s.plain {
		q.plain.Add(-1)
	}
	s.free <- s
}

// abandon tells the output to write nothing more, and counts what is still
// queued as dropped: about, as the output may be taking one packet now.
func (q *queue) abandon() uint64 {
	q.abandoned.Store(true)
	n := uint64(len(q.full))
	q.dropped.Add(n)
	return n
}

// take hands s to write and returns it to its free list, unless the queue
// was abandoned: then it returns false, and the output stops.
func (q *queue) take(s *slot, write func(*slot)) bool {
	defer q.release(s)
	if q.abandoned.Load() {
		return false
	}
	write(s)
	return true
}
