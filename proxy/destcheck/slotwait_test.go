package destcheck

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"
)

// slotInvariants checks the slots' bookkeeping under callMu, and returns
// what is wrong: no more slots held than there are, calls within their
// share waiting only while every slot is held, none waiting granted, the
// slots held counted by endpoint, and callsBy counting every call in
// flight but those waiting beyond their share.
func slotInvariants(c *Checker) string {
	c.callMu.Lock()
	defer c.callMu.Unlock()
	s := &c.slots
	if s.running < 0 || s.running > c.cfg.MaxLookups {
		return fmt.Sprintf("%d slots held of %d", s.running, c.cfg.MaxLookups)
	}
	if len(s.waiting) > 0 && s.running != c.cfg.MaxLookups {
		return fmt.Sprintf("%d waiting while only %d of %d slots are held", len(s.waiting), s.running, c.cfg.MaxLookups)
	}
	granted, counted := 0, 0
	for _, cl := range c.calls {
		if cl.granted {
			granted++
		}
		counted++
	}
	for _, q := range [][]*call{s.waiting} {
		for _, cl := range q {
			if cl.granted {
				return "a call waiting for a slot holds one"
			}
		}
	}
	held, total := s.running, 0
	for _, n := range c.callsBy {
		total += n
	}
	if granted != s.running || held != s.running {
		return fmt.Sprintf("%d calls hold slots, %d slots are counted held, %d by endpoint", granted, s.running, held)
	}
	if total != counted {
		return fmt.Sprintf("callsBy sums to %d, for %d calls", total, counted)
	}
	return ""
}

// TestGaveUpWaitingForSlotNotAMismatch: every slot is held. An endpoint's
// clients got an answer for n.fast.test naming 192.0.2.9. A check of
// n.fast.test to 192.0.2.1 whose own context (a short dial timeout) ends
// while its lookup waits for a slot is a LookupError, counted as a lookup
// failure: the resolver was not asked, and what is known of the name is no
// verdict. Before, it was a mismatch naming 192.0.2.9. The lookup itself
// goes on, and the next check passes on its answer.
func TestGaveUpWaitingForSlotNotAMismatch(t *testing.T) {
	res, slow := zoneResolver(t, 0)
	c := newTestChecker(t, Config{Resolver: res, LookupTimeout: time.Second, MaxLookups: 1}, nil)
	go checkWithin(c, epA, "h.slow.test")
	waitFor(t, "the slot taken", func() bool { return slow.Load() >= 2 })
	c.Observe(epB, msg(t, "n.fast.test.", rr{name: "n.fast.test.", ttl: 60, addr: "192.0.2.9"}))
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err := c.Check(ctx, epB, "n.fast.test", addr("192.0.2.1"))
	var le *LookupError
	var me *MismatchError
	if !errors.As(err, &le) || errors.As(err, &me) || !errors.Is(err, errGaveUpWaiting) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a check that gave up while its lookup waited for a slot: %v (%T), want a LookupError", err, err)
	}
	if s := c.Stats(); s.Mismatches != 0 || s.LookupFailures != 1 {
		t.Errorf("stats %+v, want no mismatch and a lookup failure", s)
	}
	if _, err := checkWithin(c, epB, "n.fast.test"); err != nil {
		t.Errorf("once the waiting lookup ran: %v", err)
	}
}

// TestSlotGrantedAsWaitEnds: one slot, held by a lookup the resolver never
// answers for its LookupTimeout; another lookup starts waiting for it up to
// 2 ms later. Its wait, LookupTimeout and a margin, outlasts the holder:
// it gets the slot. Before, it waited exactly LookupTimeout, and about a
// third of such lookups failed "no lookup slot came free" a few ms before
// the slot did.
func TestSlotGrantedAsWaitEnds(t *testing.T) {
	const timeout = 100 * time.Millisecond
	res, _ := zoneResolver(t, 0)
	c := newTestChecker(t, Config{Resolver: res, LookupTimeout: timeout, MaxLookups: 1}, nil)
	var failed []string
	for i := range 30 {
		var wg sync.WaitGroup
		wg.Go(func() { checkWithin(c, fmt.Sprintf("vpce-a%016x", i), fmt.Sprintf("h%d.slow.test", i)) })
		time.Sleep(time.Duration(rand.Int64N(int64(2 * time.Millisecond))))
		var err error
		wg.Go(func() { _, err = checkWithin(c, fmt.Sprintf("vpce-b%016x", i), fmt.Sprintf("w%d.fast.test", i)) })
		wg.Wait()
		if err != nil {
			failed = append(failed, err.Error())
		}
		if s := slotInvariants(c); s != "" {
			t.Fatalf("round %d: %s", i, s)
		}
	}
	if len(failed) > 0 {
		t.Errorf("%d of 30 lookups queued right behind a hanging one failed: %s", len(failed), strings.Join(failed, "; "))
	}
}
