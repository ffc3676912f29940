package destcheck

import (
	"testing"
	"time"
)

// LookedUp says whether a destination passes by what ForgetObserved
// leaves: the checker's own current lookups, or the name being the
// address. A pass on an observed answer alone is not one (the proxy checks
// such a flow again after a reload that forgets them), and it looks
// nothing up and counts no check.
func TestLookedUp(t *testing.T) {
	srv := startServer(t)
	srv.Set("looked.test", 60, addr("192.0.2.1"))
	clk := newFakeClock()
	c := newTestChecker(t, Config{Resolver: srv.Addr()}, clk)
	c.Observe(epA, msg(t, "seen.test.", rr{name: "seen.test.", ttl: 60, addr: "198.51.100.7"}))
	if err := check(c, epA, "seen.test", "198.51.100.7"); err != nil {
		t.Fatal(err)
	}
	if c.LookedUp("seen.test", addr("198.51.100.7")) {
		t.Error("a pass on an observed answer alone reads as looked up")
	}
	if c.LookedUp("looked.test", addr("192.0.2.1")) || srv.Queries("looked.test") != 0 {
		t.Error("LookedUp vouched for, or looked up, a name never looked up")
	}
	if err := check(c, epA, "Looked.Test.", "192.0.2.1"); err != nil {
		t.Fatal(err)
	}
	checks := c.Stats().Checks
	for _, tc := range []struct {
		name, dest string
		want       bool
	}{
		{"looked.test", "192.0.2.1", true},
		{"LOOKED.test.", "::ffff:192.0.2.1", true},
		{"looked.test", "192.0.2.2", false},
		{"192.0.2.9", "192.0.2.9", true},
		{"192.0.2.9", "64:ff9b::c000:209", true},
		{"192.0.2.9", "192.0.2.1", false},
		{"fe80::1%eth0", "fe80::1", false},
	} {
		if got := c.LookedUp(tc.name, addr(tc.dest)); got != tc.want {
			t.Errorf("LookedUp(%s, %s) = %v, want %v", tc.name, tc.dest, got, tc.want)
		}
	}
	if n := c.Stats().Checks; n != checks {
		t.Errorf("LookedUp counted %d checks", n-checks)
	}
	clk.Advance(60*time.Second + DefaultGrace + time.Second)
	if c.LookedUp("looked.test", addr("192.0.2.1")) {
		t.Error("an expired lookup still vouches")
	}
	if n := srv.Queries("looked.test"); n != 2 {
		t.Errorf("%d queries for looked.test, want the 2 of its one lookup (A, AAAA)", n)
	}
}
