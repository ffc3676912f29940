package intercept

import (
	"errors"
	"net"
	"sync"
	"testing"
	"time"
)

// TestConnSetAddAfterEndLocksNothing: a connection dialled after the set
// was closed is closed and unwatched outside the set's lock. The proxy's
// stall watch holds its own lock while it aborts a session (abortAll takes
// the set's), and the unwatch takes that lock: called under the set's lock
// the two waited for each other, and the appliance's one stall sweeper
// hung for good.
func TestConnSetAddAfterEndLocksNothing(t *testing.T) {
	c1, c2 := net.Pipe()
	u1, u2 := net.Pipe()
	late, late2 := net.Pipe()
	defer func() {
		for _, c := range []net.Conn{c1, c2, u1, u2, late, late2} {
			c.Close()
		}
	}()
	s := &Session{Client: c1, Upstream: u1}
	s.upstreams.closeAll() // the session has ended
	var watchMu sync.Mutex // the stall watch's lock
	watchMu.Lock()         // held by a stall under way
	added := make(chan error, 1)
	go func() {
		_, err := s.upstreams.add(late, func() { watchMu.Lock(); watchMu.Unlock() }) // a late dial
		added <- err
	}()
	time.Sleep(50 * time.Millisecond) // the dial is waiting for the watch's lock
	aborted := make(chan bool, 1)
	go func() { aborted <- s.Abort("stalled", errors.New("test")); watchMu.Unlock() }()
	select {
	case ok := <-aborted:
		if !ok {
			t.Error("Abort reported that it did not abort")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("deadlock: the stall's Abort waits for the set's lock, which the late dial holds while it waits for the watch's lock")
	}
	if err := <-added; err == nil {
		t.Error("a connection was added to an ended set")
	}
}
