package destcheck

import "iter"

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
