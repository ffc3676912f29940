package intercept

import (
	"context"
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
// what nothing wakes it for, the upstream's reset). rl, if not nil, is
// the tunnel's reload recheck, started at a look and answered beside the
// rest: its deny ends the wait (endedByLook).
func (u *upgradedBody) awaitBounded(start time.Time, done, brk <-chan struct{}, setBound func(time.Duration), look func() bool, rl *reloadLook) boundedEnd {
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
		if look != nil && look() || rl.poll() != nil {
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
		case err := <-rl.answer():
			if rl.took(err) != nil {
				return endedByLook // the check aborted the session: Close records the deny
			}
		case <-t.C:
		case <-woken:
		}
	}
}

// reloadLook runs a waiting tunnel's reload recheck (tunnelReload.check)
// off the waiting goroutine. After a reload, the check may make the
// destination check, a lookup of up to DestinationCheckTimeout (two back
// to back for a bumped tunnel: its request's name, then the connection's),
// and a wait that made it itself saw nothing else meanwhile: not the
// client's end, its break, the session's abort nor the stacks' close,
// which end it at once (review r5s27 F4). So one check at a time runs on a
// goroutine of its own, started at a look when a policy other than the
// tunnel's is in force, and its answer is the wait's to select on. stop,
// at the wait's end, cancels one under way: the wait ended first, and what
// it would have found ends nothing (tunnelReload.checkCtx). Nil (no
// recheck: no policy holder) is a look that never answers. The waiting
// goroutine's only.
type reloadLook struct {
	r      *tunnelReload
	ctx    context.Context
	cancel context.CancelFunc
	res    chan error // the answer of the check under way; nil when none is
	// wake, a linger's look's (newLingerLook), wakes the lingers
	// (WakeLingers) on its deny; nil for a wait's.
	wake func()
}

// newReloadLook is the reload look of r's tunnel's wait (awaitBounded),
// nil for a nil r.
func newReloadLook(r *tunnelReload) *reloadLook {
	if r == nil {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &reloadLook{r: r, ctx: ctx, cancel: cancel}
}

// newLingerLook is the reload look of r's tunnel's linger (lingerStop),
// nil for a nil r. A linger asks its stop only at its looks, and nothing
// but WakeLingers, which wakes every linger and every tunnel's wait in the
// process, makes it look sooner: only a linger's deny wakes them. A
// wait's deny came on its own channel (answer), and woke them all, each
// looking again: looks grew with the square of the waits a reload denied
// (review r4s28 F4).
func newLingerLook(r *tunnelReload) *reloadLook {
	l := newReloadLook(r)
	if l != nil {
		l.wake = hostconn.WakeLingers
	}
	return l
}

// poll returns the answer of the check under way if it has come, else
// nil, and starts a check when one is due (a policy other than the
// tunnel's in force: once per policy) and none is under way.
func (l *reloadLook) poll() error {
	if l == nil {
		return nil
	}
	if l.res != nil {
		select {
		case err := <-l.res:
			if l.took(err) != nil {
				return err
			}
		default:
			return nil
		}
	}
	if l.r.due() {
		res := make(chan error, 1)
		l.res = res
		go func(wake func()) {
			err := l.r.checkCtx(l.ctx)
			res <- err // buffered: there for the look the wake makes
			if err != nil && wake != nil {
				// A linger asks its stop only at its looks (lingerStop):
				// the deny is seen now. Woken before the answer was
				// there, it found none, and slept to its next look, up
				// to a second on (review r8s28 N1).
				wake()
			}
		}(l.wake)
	}
	return nil
}

// answer is the channel of the answer of the check under way, nil (never
// ready) when none is.
func (l *reloadLook) answer() <-chan error {
	if l == nil {
		return nil
	}
	return l.res
}

// took notes err, the answer of the check under way, received from
// answer, and returns it.
func (l *reloadLook) took(err error) error {
	l.res = nil
	return err
}

// stop cancels the check under way, if any: the wait is over.
func (l *reloadLook) stop() {
	if l != nil {
		l.cancel()
	}
}
