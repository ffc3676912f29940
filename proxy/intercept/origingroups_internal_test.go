package intercept

import (
	"crypto/tls"
	"fmt"
	"testing"
	"time"
)

// TestExpiringSetEvicts: a full set drops its lapsed members first, then
// the one closest to lapsing, never the others; it never grows past its
// bound.
func TestExpiringSetEvicts(t *testing.T) {
	now := time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC)
	s := newExpiringSet[string](3)
	s.now = func() time.Time { return now }
	s.add("lapses", time.Minute, time.Time{})
	s.add("long", time.Hour, time.Time{})
	s.add("short", 10*time.Minute, time.Time{})
	now = now.Add(2 * time.Minute) // "lapses" has lapsed
	s.add("new1", time.Hour, time.Time{})
	if _, ok := s.members["lapses"]; ok {
		t.Error("a lapsed member outlived an eviction")
	}
	for _, k := range []string{"long", "short", "new1"} {
		if _, ok := s.members[k]; !ok {
			t.Errorf("%s was evicted while a lapsed member could go", k)
		}
	}
	s.add("new2", time.Hour, time.Time{})
	if _, ok := s.members["short"]; ok {
		t.Error("the member closest to lapsing was kept, and another evicted")
	}
	for _, k := range []string{"long", "new1", "new2"} {
		if !s.has(k) {
			t.Errorf("%s was evicted, not the member closest to lapsing", k)
		}
	}
	for i := range 10 {
		s.add(fmt.Sprint("k", i), time.Hour, time.Time{})
		if n := len(s.members); n > 3 {
			t.Fatalf("%d members, bound 3", n)
		}
	}
}

// TestExpiringSetClockSteps: a member counts only between its addition and
// its lapse on the wall clock: a clock stepped back before the addition,
// or past the lapse, voids it.
func TestExpiringSetClockSteps(t *testing.T) {
	start := time.Now() // with a monotonic reading, as time.Now gives
	now := start
	s := newExpiringSet[string](4)
	s.now = func() time.Time { return now }
	s.add("k", time.Hour, time.Time{})
	now = start.Add(-time.Minute)
	if s.has("k") {
		t.Error("a member counts before it was added (clock stepped back)")
	}
	s.add("k", time.Hour, start.Add(30*time.Minute))
	now = start.Add(31 * time.Minute)
	if s.has("k") {
		t.Error("a member counts past its own end time")
	}
}

// TestOriginGroupsForget: a hybrid or a group this code does not know,
// chosen, forgets the origin; no group at all (TLS 1.2, RSA key exchange)
// is classical.
func TestOriginGroupsForget(t *testing.T) {
	g := newOriginGroups(4)
	for _, id := range []tls.CurveID{tls.X25519MLKEM768, tls.SecP256r1MLKEM768, 0x7777} {
		g.learn("k", tls.X25519)
		g.learn("k", id)
		if g.offer("k") != nil {
			t.Errorf("an origin that chose %v is still offered classical groups only", id)
		}
	}
	g.learn("k", 0)
	if g.offer("k") == nil {
		t.Error("an origin that chose no group at all is offered the hybrids")
	}
}
