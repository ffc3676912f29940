package intercept

import (
	"context"
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

// TestConnSetSlots: a dial past maxUpstreamConns open connections waits
// for one to be released; a waiting dial is given up with its request,
// and fails once the session ends.
func TestConnSetSlots(t *testing.T) {
	var s connSet
	slots := make([]*connSlot, maxUpstreamConns)
	for i := range slots {
		sl, err := s.takeSlot(context.Background(), nil)
		if err != nil {
			t.Fatalf("slot %d: %v", i, err)
		}
		slots[i] = sl
	}
	// A request that ends gives up its dial's wait.
	reqDone := make(chan struct{})
	gaveUp := make(chan error, 1)
	go func() {
		_, err := s.takeSlot(context.Background(), reqDone)
		gaveUp <- err
	}()
	// A dial waits until a connection really closes.
	got := make(chan *connSlot, 1)
	go func() {
		sl, err := s.takeSlot(context.Background(), nil)
		if err != nil {
			t.Errorf("waiting dial: %v", err)
		}
		got <- sl
	}()
	select {
	case <-got:
		t.Fatalf("a dial got a slot with %d held", maxUpstreamConns)
	case err := <-gaveUp:
		t.Fatalf("a dial gave up with its request under way: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(reqDone)
	select {
	case err := <-gaveUp:
		if err == nil {
			t.Fatal("the ended request's dial got a slot")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the ended request's dial still waits")
	}
	slots[0].release()
	slots[0].release() // once only: a second release frees nothing
	select {
	case slots[0] = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("a released slot woke no dial")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := s.takeSlot(ctx, nil); err == nil {
		t.Fatal("a slot was taken twice over")
	}
	ended := make(chan error, 1)
	go func() {
		_, err := s.takeSlot(context.Background(), nil)
		ended <- err
	}()
	time.Sleep(50 * time.Millisecond)
	s.closeAll()
	select {
	case err := <-ended:
		if !errors.Is(err, errSetEnded) {
			t.Fatalf("after the set ended the waiting dial got %v, want errSetEnded", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the set's end woke no waiting dial")
	}
}
