package destcheck

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// floodBeyondShare has endpoint A's clients hold slots with names the
// resolver never answers, until held slots are held, and queue 63 more
// beyond A's share, then one of A's clients check popular.fast.test, which
// waits at the end of A's second queue (the 64th, its last place). It
// returns once all that is so.
func floodBeyondShare(t *testing.T, ctx context.Context, c *Checker, wg *sync.WaitGroup, held int) {
	t.Helper()
	c.callMu.Lock()
	n := held - c.slots.heldBy[epB] + 63
	c.callMu.Unlock()
	for i := range n {
		wg.Go(func() { _ = c.Check(ctx, epA, fmt.Sprintf("h%d.slow.test", i), addr("192.0.2.1")) })
	}
	waitFor(t, "A's flood queued", func() bool {
		c.callMu.Lock()
		defer c.callMu.Unlock()
		return c.slots.running == held && c.slots.overShare.len() == 63
	})
	wg.Go(func() { _ = c.Check(ctx, epA, "popular.fast.test", addr("192.0.2.1")) })
	waitFor(t, "A's popular lookup queued", func() bool {
		c.callMu.Lock()
		defer c.callMu.Unlock()
		return c.slots.overShare.len() == 64
	})
}

// TestJoinBeyondOthersShare: endpoint B, holding no slot with 24 free,
// checks a name whose lookup waits at the end of endpoint A's second
// queue. The lookup becomes B's and starts at once. Before, B's check
// joined it, waited behind A's whole queue and failed after 1.25 s with
// A's share error ("40 of its own"). (Found by review r9s28 F1.)
func TestJoinBeyondOthersShare(t *testing.T) {
	c, ctx, wg := floodChecker(t)
	floodBeyondShare(t, ctx, c, wg, 40)
	if d, err := checkWithin(c, epB, "popular.fast.test"); err != nil || d > 500*time.Millisecond {
		t.Errorf("B, holding no slot with 24 free, checked a name queued beyond A's share: %v after %v", err, d.Round(time.Millisecond))
	}
	wantSlotInvariants(t, c)
}

// TestJoinBeyondOthersShareAtOwnShare: as above, but B holds its share of
// slots with lookups the resolver never answers, so the lookup stays in
// A's queue; once B's lookups end (after LookupTimeout, 1 s) it becomes
// B's and starts, ahead of A's queue. Before, B's check failed with A's
// share error after 1.25 s.
func TestJoinBeyondOthersShareAtOwnShare(t *testing.T) {
	c, ctx, wg := floodChecker(t)
	fillBShare(t, ctx, c, wg)
	floodBeyondShare(t, ctx, c, wg, 40)
	d, err := checkWithin(c, epB, "popular.fast.test")
	if err != nil {
		t.Errorf("B at its share, joining a lookup beyond A's: %v after %v", err, d.Round(time.Millisecond))
	}
	wantSlotInvariants(t, c)
}

// TestOverShareQueueBounded: endpoint A's clients send 300 fresh names
// the resolver never answers at once. A gets 40 slots, 64 names wait
// beyond its share, and the other 196 are refused at once (the share's
// error, uncached) instead of each holding a call and a goroutine in the
// queue for the whole slot wait. (Found by review r9s28 F2: 48,454 names
// queued at 15,000/s, about 8 KB each.)
func TestOverShareQueueBounded(t *testing.T) {
	c, ctx, wg := floodChecker(t)
	var refused atomic.Int32
	for i := range 300 {
		wg.Go(func() {
			start := time.Now()
			err := c.Check(ctx, epA, fmt.Sprintf("h%d.slow.test", i), addr("192.0.2.1"))
			if errors.Is(err, errEndpointLookups) && time.Since(start) < 500*time.Millisecond {
				refused.Add(1)
			}
		})
	}
	waitFor(t, "A's flood refused beyond the queue", func() bool { return refused.Load() >= 196 })
	c.callMu.Lock()
	running, queued := c.slots.running, c.slots.overShare.len()
	c.callMu.Unlock()
	if running != 40 || queued != 64 || refused.Load() != 196 {
		t.Errorf("%d running, %d queued beyond the share, %d refused at once; want 40, 64, 196", running, queued, refused.Load())
	}
	wantSlotInvariants(t, c)
}

// floodChecker is a checker whose resolver answers no *.slow.test name and
// whose lookups time out after a second, with a context and a wait group
// for its flood's checks: at the test's end the context is cancelled and
// the checks waited for.
func floodChecker(t *testing.T) (*Checker, context.Context, *sync.WaitGroup) {
	res, _ := zoneResolver(t, 0)
	c := newTestChecker(t, Config{Resolver: res, LookupTimeout: time.Second}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	wg := new(sync.WaitGroup)
	t.Cleanup(wg.Wait)
	t.Cleanup(cancel)
	return c, ctx, wg
}

// TestGivenUpJoinNotHandedOver: B, holding its share, has checks join 20
// of A's lookups queued beyond A's share, which give up after 50 ms; then
// B checks its own fresh name, queued beyond B's share. Once B's lookups
// end, B's share goes to its own name, not to A's names that no check of
// B's waits for any more. Before, it went to 8 of A's names and B's own
// check failed after 1.25 s with "8 of its own" (found by review r11s28
// F1).
func TestGivenUpJoinNotHandedOver(t *testing.T) {
	c, ctx, wg := floodChecker(t)
	fillBShare(t, ctx, c, wg)
	time.Sleep(300 * time.Millisecond) // A's held lookups end 300 ms after B's
	for i := range 32 + 64 {
		wg.Go(func() { _ = c.Check(ctx, epA, fmt.Sprintf("h%d.slow.test", i), addr("192.0.2.1")) })
	}
	waitFor(t, "A's flood", func() bool {
		c.callMu.Lock()
		defer c.callMu.Unlock()
		return c.slots.running == 40 && c.slots.overShare.len() == 64
	})
	var queued []string
	c.callMu.Lock()
	for name, cl := range c.calls {
		if cl.overShare && len(queued) < 20 {
			queued = append(queued, name)
		}
	}
	c.callMu.Unlock()
	var jwg sync.WaitGroup
	for _, name := range queued {
		jwg.Go(func() {
			jctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			_ = c.Check(jctx, epB, name, addr("192.0.2.1"))
		})
	}
	jwg.Wait()
	if d, err := checkWithin(c, epB, "bown.fast.test"); err != nil {
		t.Errorf("B's own name, after B's checks of 20 of A's queued names gave up: %v after %v", err, d.Round(time.Millisecond))
	}
	c.callMu.Lock()
	for name, cl := range c.calls {
		if cl.endpoint == epB && name[0] == 'h' {
			t.Errorf("A's %s, which no check of B waits for, counts in B's share", name)
		}
	}
	c.callMu.Unlock()
	wantSlotInvariants(t, c)
}

// TestAdoptedLookupWaitsFullSlotWait: B, holding no slot while none is
// free, checks a name A queued beyond its share 0.9 s before. The lookup
// becomes B's and waits within B's share a whole slot wait from then, as
// a fresh name would, and gets a slot as the first lookups end. Before, it
// kept the wait that began when A queued it and failed after 0.35 s with
// "no lookup slot came free within 1.25s" (found by review r11s28 F2).
func TestAdoptedLookupWaitsFullSlotWait(t *testing.T) {
	res, _ := zoneResolver(t, 0)
	c := newTestChecker(t, Config{Resolver: res, LookupTimeout: time.Second, MaxLookups: 8}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	wg := new(sync.WaitGroup)
	t.Cleanup(wg.Wait)
	t.Cleanup(cancel)
	ep := func(i int) string { return fmt.Sprintf("vpce-%017x", i+100) }
	for i := range 5 {
		wg.Go(func() { _ = c.Check(ctx, epA, fmt.Sprintf("a%d.slow.test", i), addr("192.0.2.1")) })
	}
	waitFor(t, "A holds 5", func() bool {
		c.callMu.Lock()
		defer c.callMu.Unlock()
		return c.slots.running == 5
	})
	wg.Go(func() { _ = c.Check(ctx, epA, "popular.fast.test", addr("192.0.2.1")) })
	waitFor(t, "A's popular queued", func() bool {
		c.callMu.Lock()
		defer c.callMu.Unlock()
		return c.slots.overShare.len() == 1
	})
	time.Sleep(300 * time.Millisecond)
	for i := range 3 { // C, D, E take the other 3 slots
		wg.Go(func() { _ = c.Check(ctx, ep(i), fmt.Sprintf("x%d.slow.test", i), addr("192.0.2.1")) })
	}
	time.Sleep(200 * time.Millisecond)
	for i := 3; i < 8; i++ { // F to J wait within their share
		wg.Go(func() { _ = c.Check(ctx, ep(i), fmt.Sprintf("x%d.slow.test", i), addr("192.0.2.1")) })
	}
	waitFor(t, "5 waiting", func() bool {
		c.callMu.Lock()
		defer c.callMu.Unlock()
		return c.slots.waiting.len() == 5 && c.slots.running == 8
	})
	time.Sleep(400 * time.Millisecond)
	if d, err := checkWithin(c, epB, "popular.fast.test"); err != nil {
		t.Errorf("B's check of a name A queued 0.9 s before, no slot free: %v after %v", err, d.Round(time.Millisecond))
	}
	wantSlotInvariants(t, c)
}

// TestEndedWaitNotHandedOver: a lookup beyond A's share whose slot wait
// has just ended (awaitSlot took it out of the queue, and run has not yet
// locked to finish it) is not handed to B's check, below B's share: the
// lookup has failed, so B's check gets the failure said of B. Before, B
// adopted it, took a slot for a lookup that would never ask, and said A's
// share error of B (found by review r11s28, by reading). The state is set
// up by hand: the window is a few instructions wide.
func TestEndedWaitNotHandedOver(t *testing.T) {
	res, _ := zoneResolver(t, 0) // never asked: no lookup runs
	c := newTestChecker(t, Config{Resolver: res, LookupTimeout: time.Second}, nil)
	cl := &call{done: make(chan struct{}), endpoint: epA, overShare: true, slot: make(chan struct{})}
	c.callMu.Lock()
	c.calls["ended.slow.test"] = cl
	c.callMu.Unlock()
	errc := make(chan error, 1)
	go func() { errc <- c.lookup(context.Background(), epB, "ended.slow.test") }()
	waitFor(t, "B's check waits", func() bool {
		c.callMu.Lock()
		defer c.callMu.Unlock()
		return cl.checks == 1
	})
	c.callMu.Lock()
	if cl.endpoint != epA || cl.granted || c.callsBy[epB] != 0 || c.slots.running != 0 {
		t.Errorf("B took over a lookup whose wait had ended: endpoint %s, granted %v, callsBy[B] %d, %d running",
			cl.endpoint, cl.granted, c.callsBy[epB], c.slots.running)
	}
	delete(c.calls, "ended.slow.test")
	c.callMu.Unlock()
	cl.err = fmt.Errorf("%w: 40 of its own", errEndpointLookups)
	close(cl.done)
	if err := <-errc; !errors.Is(err, errEndpointLookups) || strings.Contains(err.Error(), "40 of its own") {
		t.Errorf("B's check: %v, want B's share error", err)
	}
}

// fillBShare has endpoint B hold its share of 8 slots with lookups the
// resolver never answers, and waits until it does.
func fillBShare(t *testing.T, ctx context.Context, c *Checker, wg *sync.WaitGroup) {
	t.Helper()
	for i := range 8 {
		wg.Go(func() { _ = c.Check(ctx, epB, fmt.Sprintf("b%d.slow.test", i), addr("192.0.2.1")) })
	}
	waitFor(t, "B at its share", func() bool {
		c.callMu.Lock()
		defer c.callMu.Unlock()
		return c.slots.heldBy[epB] == 8
	})
}
