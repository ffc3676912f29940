package monoclock

import (
	"testing"
	"time"
)

// Stamps look like unix nanoseconds, move with the monotonic clock, and
// turn back into the times they were taken at; Shift moves later ones.
func TestStamps(t *testing.T) {
	before := time.Now()
	n := Now()
	if d := time.Duration(n - before.UnixNano()); d < -time.Second || d > time.Second {
		t.Fatalf("a stamp is %s from the wall clock's unix nanoseconds", d)
	}
	if got := Time(Stamp(before)); !got.Equal(before) {
		t.Errorf("Time(Stamp(t)) = %s, want %s", got, before)
	}
	if Now() < n {
		t.Error("stamps went back")
	}
	Shift(-time.Hour)
	shifted := Now()
	Shift(time.Hour)
	if d := time.Duration(n - shifted); d < 59*time.Minute || d > 61*time.Minute {
		t.Errorf("after Shift(-1h), a stamp is %s before the one taken before it, want an hour", d)
	}
}
