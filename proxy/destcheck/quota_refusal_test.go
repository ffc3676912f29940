package destcheck

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// A check whose lookup waits beyond its endpoint's share, and whose own
// context ends before it starts, is a LookupError, even when an answer
// relayed to the endpoint's clients names other addresses of the name: the
// lookup that could have vouched for the destination never ran, so "DEST
// is not an address of NAME" would be a verdict nobody reached. The lookup
// no check waits for any more leaves the queue then: a flood of fresh
// names does not leave one waiting per name.
func TestQuotaWaitNotAMismatch(t *testing.T) {
	srv := startServer(t)
	srv.Set("*.slow.test", 60, addr("192.0.2.1"))
	srv.SetDelay(300 * time.Millisecond)
	c := newTestChecker(t, Config{Resolver: srv.Addr(), MaxLookups: 8}, nil)
	c.Observe(epA, msg(t, "z.slow.test.", rr{name: "z.slow.test.", ttl: 60, addr: "192.0.2.9"}))
	var wg sync.WaitGroup
	for i := range 5 { // epA's share and more, until three slots are left
		name := string(rune('a'+i)) + ".slow.test"
		wg.Go(func() { _ = check(c, epA, name, "192.0.2.1") })
	}
	for srv.Queries("") < 10 {
		time.Sleep(5 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err := c.Check(ctx, epA, "z.slow.test", addr("192.0.2.1"))
	var le *LookupError
	var me *MismatchError
	if !errors.As(err, &le) || errors.As(err, &me) || !errors.Is(err, errGaveUpWaiting) {
		t.Errorf("a check whose lookup still waited beyond its share, other addresses known: %v (%T), want a LookupError", err, err)
	}
	if s := c.Stats(); s.Mismatches != 0 || s.LookupFailures != 1 {
		t.Errorf("stats %+v, want no mismatch and a lookup failure", s)
	}
	c.callMu.Lock()
	queued, inFlight := c.slots.overShare.len(), c.calls["z.slow.test"] != nil
	c.callMu.Unlock()
	if queued != 0 || inFlight {
		t.Errorf("after its only check gave up, %d lookups wait beyond their share, z.slow.test's in flight: %v; want none", queued, inFlight)
	}
	wg.Wait()
	if q := srv.Queries("z.slow.test"); q != 0 {
		t.Errorf("%d questions about the name nobody waited for, want none", q)
	}
}
