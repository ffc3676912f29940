package netstack

import (
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/waiter"
)

// readNotify is what OnReadable needs, for Conn and UDPConn alike: an entry
// on the endpoint's wait queue, registered on first use, that calls the
// function set last.
type readNotify struct {
	mu  sync.Mutex
	on  bool
	ent waiter.Entry
	fn  atomic.Pointer[func()]
}

// set arranges for fn to be called on mask's events of wq; nil stops the
// calls. Nothing is registered once closed is set.
func (n *readNotify) set(wq *waiter.Queue, mask waiter.EventMask, fn func(), closed *atomic.Bool) {
	if fn == nil {
		n.fn.Store(nil)
		return
	}
	n.fn.Store(&fn)
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.on && !closed.Load() {
		n.ent = waiter.NewFunctionEntry(mask, n.notified)
		wq.EventRegister(&n.ent)
		n.on = true
	}
}

func (n *readNotify) notified(waiter.EventMask) {
	if fn := n.fn.Load(); fn != nil {
		(*fn)()
	}
}

// stop removes the entry from wq, and reports whether there was one.
func (n *readNotify) stop(wq *waiter.Queue) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	on := n.on
	if on {
		wq.EventUnregister(&n.ent)
		n.on = false
	}
	return on
}
