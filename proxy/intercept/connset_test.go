package intercept

import (
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
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

// TestAbortAfterEndingDoesNothing: once a session has begun to end (its
// records are being written), Abort does nothing and says so, so that the
// stall counter counts no abort that no record tells of; an Abort that came
// first still reaches the records.
func TestAbortAfterEndingDoesNothing(t *testing.T) {
	s := &Session{}
	s.markEnding()
	if s.Abort("stalled", errors.New("late")) {
		t.Error("Abort of a session that was ending reported that it aborted it")
	}
	rec := &records.Record{Result: "ok"}
	s.noteAbort(rec)
	if rec.Result != "ok" || rec.Error != "" {
		t.Errorf("the record of a session that ended on its own: %q %q", rec.Result, rec.Error)
	}

	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	s = &Session{Client: c1, Upstream: c2}
	if !s.Abort("stalled", errors.New("the client accepted nothing")) {
		t.Fatal("Abort did not abort")
	}
	s.markEnding()
	rec = &records.Record{Result: "ok"}
	s.noteAbort(rec)
	if rec.Result != "stalled" || rec.Error != "the client accepted nothing" {
		t.Errorf("the record of an aborted session: %q %q", rec.Result, rec.Error)
	}
}
