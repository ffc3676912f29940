package intercept

import (
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/hostconn"
)

// tunnelPoll is how often a tunnel's wait bounded as its linger is
// (awaitBounded) asks the bound again: nothing wakes it when the
// write-stall timeout in force shortens (memory turning short), and the
// linger it stands for follows such a change (hostconn.Linger polls).
const tunnelPoll = time.Second

// boundedEnd is what ended awaitBounded's wait.
type boundedEnd int

const (
	endedEarly      boundedEnd = iota // what it waited for, the abort, or the client's break
	endedAtBound                      // the bound passed
	endedAtShutdown                   // the stacks are closing
	endedByLook                       // look said to end it
)

// awaitBounded waits for done, the session's abort or brk (nil: never),
// until the linger's bound has passed since start, or the stacks close:
// the waits of a tunnel's end for its upload (boundWrite,
// relayDestinationEnd). The stacks' close has no client endpoint to abort
// once the client closed, and the drain's records must be written within
// its wait: it ends the wait at once (WakeLingers), as it ends the linger.
// The bound is asked at every look (every tunnelPoll), as the linger asks
// it, and told to setBound, if set, when it changes; look, if set, is
// asked then too, and ends the wait when it says so (relayDestinationEnd:
// what nothing wakes it for, a reload's deny, the upstream's reset).
func (u *upgradedBody) awaitBounded(start time.Time, done, brk <-chan struct{}, setBound func(time.Duration), look func() bool) boundedEnd {
	t := time.NewTimer(tunnelPoll)
	defer t.Stop()
	last := time.Duration(-1)
	for {
		woken := hostconn.LingersWoken() // before the look: a wake after it ends the wait
		if u.shuttingDown != nil && u.shuttingDown() {
			return endedAtShutdown
		}
		bound := u.lingerBound()
		if bound != last && setBound != nil {
			setBound(bound)
		}
		last = bound
		if look != nil && look() {
			return endedByLook
		}
		left := bound - time.Since(start)
		if left <= 0 {
			return endedAtBound
		}
		t.Reset(min(left, tunnelPoll))
		select {
		case <-done:
			return endedEarly
		case <-u.aborted: // nil (never) outside a session
			return endedEarly
		case <-brk:
			return endedEarly
		case <-t.C:
		case <-woken:
		}
	}
}
