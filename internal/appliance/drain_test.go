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
