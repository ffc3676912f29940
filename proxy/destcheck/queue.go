package destcheck

import (
	"iter"
	"slices"
	"time"
)

// queue is a list of calls waiting for a slot, oldest first, linked
// through the calls: a call leaves it in O(1) (a flood's lookups leave it
// one by one, under the lock every new name's lookup takes), and queuing
// allocates nothing. Under callMu.
type queue struct {
	head, tail *call
	n          int
	by         map[string]int // calls queued by endpoint, if counted
}

type link struct {
	prev, next *call
	in         *queue // the queue it waits in, if any
}

// leave takes cl out of the queue it waits in for a slot, and reports
// whether it was in one. Under callMu.
func (s *slots) leave(cl *call) bool {
	return s.waiting.remove(cl) || s.overShare.remove(cl)
}

func (q *queue) len() int { return q.n }

func (q *queue) front() *call { return q.head }

func (q *queue) push(cl *call) {
	cl.link = link{prev: q.tail, in: q}
	if q.tail != nil {
		q.tail.next = cl
	} else {
		q.head = cl
	}
	q.tail = cl
	q.n++
	if q.by != nil {
		q.by[cl.endpoint]++
	}
}

// remove takes cl out of q, and reports whether it was in it.
func (q *queue) remove(cl *call) bool {
	if cl.in != q {
		return false
	}
	if cl.prev != nil {
		cl.prev.next = cl.next
	} else {
		q.head = cl.next
	}
	if cl.next != nil {
		cl.next.prev = cl.prev
	} else {
		q.tail = cl.prev
	}
	cl.link = link{}
	q.n--
	if q.by != nil {
		if q.by[cl.endpoint]--; q.by[cl.endpoint] <= 0 {
			delete(q.by, cl.endpoint)
		}
	}
	return true
}

// all yields the calls in q, oldest first; the yielded call may leave q.
func (q *queue) all() iter.Seq[*call] {
	return func(yield func(*call) bool) {
		for cl := q.head; cl != nil; {
			next := cl.next
			if !yield(cl) {
				return
			}
			cl = next
		}
	}
}

// joiner is an endpoint whose checks joined a call waiting beyond another
// endpoint's share while it was at its own, and how many of them wait.
type joiner struct {
	endpoint string
	checks   int
}

// joinIndex returns the index of endpoint in cl.joinedBy, or -1.
func (cl *call) joinIndex(endpoint string) int {
	for i, j := range cl.joinedBy {
		if j.endpoint == endpoint {
			return i
		}
	}
	return -1
}

// join counts a check of endpoint waiting for cl. Under callMu.
func (cl *call) join(endpoint string) {
	if i := cl.joinIndex(endpoint); i >= 0 {
		cl.joinedBy[i].checks++
		return
	}
	cl.joinedBy = append(cl.joinedBy, joiner{endpoint, 1})
}

// unjoin uncounts a check of endpoint that gave up waiting for cl, and
// forgets endpoint with its last one: promote hands cl only to an endpoint
// a check of which still waits for it. Under callMu.
func (cl *call) unjoin(endpoint string) {
	if i := cl.joinIndex(endpoint); i >= 0 {
		if cl.joinedBy[i].checks--; cl.joinedBy[i].checks <= 0 {
			cl.joinedBy = slices.Delete(cl.joinedBy, i, i+1)
		}
	}
}

// promote lets the call of endpoint (or that its checks wait for, see adopt)
// that waited longest beyond its share on, once the endpoint has fallen
// below it: to a slot if one is free, or to the queue within shares.
// Under callMu.
func (c *Checker) promote(endpoint string) {
	if c.callsBy[endpoint] >= c.share() {
		return
	}
	for cl := range c.slots.overShare.all() {
		if cl.endpoint == endpoint || cl.joinIndex(endpoint) >= 0 {
			c.adopt(cl, endpoint)
			return
		}
	}
}

// adopt makes cl, waiting beyond its endpoint's share, a lookup of
// endpoint, below its share, whose check joins it (or joined it, at its
// share then): it counts in that share and takes a free slot or waits
// within the share. Otherwise the check
// would wait behind the other endpoint's whole second queue, and fail with
// its share's error, though its own endpoint may start lookups. Under
// callMu.
func (c *Checker) adopt(cl *call, endpoint string) {
	c.slots.overShare.remove(cl)
	cl.overShare = false
	cl.endpoint, cl.joinedBy = endpoint, nil
	c.callsBy[endpoint]++
	cl.waitUntil = time.Now().Add(c.slotWait()) // its wait starts again, within this share
	if c.slots.running < c.cfg.MaxLookups {
		c.grant(cl)
		return
	}
	c.slots.waiting.push(cl)
}

// admit gives cl, waiting beyond its endpoint's share, a slot. Under
// callMu.
func (c *Checker) admit(cl *call) {
	c.slots.overShare.remove(cl)
	cl.overShare = false
	c.callsBy[cl.endpoint]++
	c.grant(cl)
}
