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
// calls. Nothing is registered once closed reports true: the conn's close
// marks it closed before it calls stop.
func (n *readNotify) set(wq *waiter.Queue, mask waiter.EventMask, fn func(), closed func() bool) {
	if fn == nil {
		n.fn.Store(nil)
		return
	}
	n.fn.Store(&fn)
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.on && !closed() {
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

// stop removes the entry from wq and forgets the function, which it
// returns (nil if none was registered): a closed endpoint may outlive the
// conn's user for a while (TIME-WAIT), and must not keep what the function
// holds reachable.
func (n *readNotify) stop(wq *waiter.Queue) func() {
	n.mu.Lock()
	defer n.mu.Unlock()
	var fn func()
	if n.on {
		wq.EventUnregister(&n.ent)
		n.on = false
		if p := n.fn.Load(); p != nil {
			fn = *p
		}
	}
	n.fn.Store(nil)
	return fn
}
