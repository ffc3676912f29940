package appliance

import (
	"testing"
	"time"
)

// TestCutKeepsTheFloor: a drain cut (SIGINT) whose time for a phase has
// already passed, as when flows held on to the end of theirs and closing
// the stacks took a moment, still leaves the phase the least time it has
// without a cut: the records of the flows just ended need it to come.
// Before, the phase's context ended at once and those records were lost.
func TestCutKeepsTheFloor(t *testing.T) {
	a := &Appliance{}
	a.CutDrain(0) // its deadline is now: any phase's time from it has passed
	floor := time.Now().Add(300 * time.Millisecond)
	ctx, cancel := a.untilCut(time.Now().Add(time.Hour), floor, func(deadline time.Time, _ time.Duration) time.Time {
		return deadline.Add(-time.Second)
	})
	defer cancel()
	select {
	case <-ctx.Done():
		t.Fatalf("the phase ended %v before its floor", time.Until(floor).Round(time.Millisecond))
	case <-time.After(150 * time.Millisecond):
	}
	select {
	case <-ctx.Done():
		if early := time.Until(floor); early > 0 {
			t.Errorf("the phase ended %v before its floor", early)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the cut did not end the phase at its floor")
	}
}

// TestFlushReserveAtMostHalf: the drain keeps a fifth of itself, 1 s to
// 10 s, to flush the records, but never more than half (design.md
// "Drain"): without the cap a 1 s drain would give the flows no time at all,
// and a drain of 0 would still wait a second.
func TestFlushReserveAtMostHalf(t *testing.T) {
	for d, want := range map[time.Duration]time.Duration{
		0: 0, time.Second: 500 * time.Millisecond, 2 * time.Second: time.Second,
		10 * time.Second: 2 * time.Second, 300 * time.Second: 10 * time.Second,
	} {
		if got := flushReserve(d); got != want {
			t.Errorf("flushReserve(%s) = %s, want %s", d, got, want)
		}
	}
}
