package netstack

import (
	"sync"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/monoclock"
)

// gVisor says nothing when a connection leaves its demultiplexer, so the
// waiting SYNs (synwait.go) are looked at: all of them by one goroutine,
// the server's synPoller, which runs while any waits. A goroutine per
// wait, each sleeping from 50 µs up to 2 ms between its looks, made some
// 3 million wake-ups a second with the 4,096 places taken (clients
// sending a RST the stack ignores and a SYN on each of 64 connections):
// the stacks, starved, took a victim's RST late, and its SYN, its wait
// over past 20 ms (up to 175), met the old connection and went
// unanswered (28-30 reconnects of 30; 0 with no flood). One goroutine
// wakes once a sweep, and a sweep looks at each wait once (a stack
// look-up, about 100 ns).

// synPollEvery is the time between two sweeps of n waiting SYNs: a fifth
// of a millisecond for a few, so that a SYN goes in soon after the stack
// let go (it takes a RST in about half a millisecond), and longer as a
// sweep costs more, so that sweeping stays under about a tenth of a core:
// 1.2 ms for 4,096, within which the 20 ms bound is kept.
func synPollEvery(n int) time.Duration {
	return min(200*time.Microsecond+time.Duration(n)*250*time.Nanosecond, lastSynPoll)
}

// synPoller holds the waiting SYNs of a server and looks at them.
type synPoller struct {
	mu      sync.Mutex
	waits   []pendingSyn // added since the sweep under way took the others
	running bool         // a goroutine sweeps
}

// pendingSyn is a waiting SYN, w, of flow on stack st, which goes in by
// deadline (monoclock) at the latest.
type pendingSyn struct {
	st       *endpointStack
	flow     *Flow
	w        *synWait
	ipv6     bool
	deadline int64
}

// add has ps looked at from the next sweep on, starting the sweeping
// goroutine if none runs.
func (q *synPoller) add(s *Server, ps pendingSyn) {
	q.mu.Lock()
	q.waits = append(q.waits, ps)
	start := !q.running
	q.running = true
	q.mu.Unlock()
	if start {
		go q.sweep(s)
	}
}

// sweep looks at the waiting SYNs every synPollEvery until none waits:
// one whose stack has let go of the connection on its 4-tuple, whose flow
// has left the table, or whose deadline has passed goes its way
// (deliverSyn). The look runs outside the lock, which the packet path
// takes to add a SYN.
func (q *synPoller) sweep(s *Server) {
	var waits, due []pendingSyn
	for {
		q.mu.Lock()
		waits = append(waits, q.waits...)
		clear(q.waits)
		q.waits = q.waits[:0]
		if len(waits) == 0 {
			q.running = false
			q.mu.Unlock()
			return
		}
		q.mu.Unlock()
		time.Sleep(synPollEvery(len(waits)))
		now := monoclock.Now()
		kept := waits[:0]
		for _, ps := range waits {
			if now >= ps.deadline || ps.flow.removed.Load() || !s.holdsTCP(&ps.flow.key) {
				due = append(due, ps)
			} else {
				kept = append(kept, ps)
			}
		}
		clear(waits[len(kept):])
		waits = kept
		for i := range due {
			s.deliverSyn(due[i].st, due[i].flow, due[i].w, due[i].ipv6)
		}
		clear(due)
		due = due[:0]
	}
}
