package destcheck

import "testing"

// TestHoldObserved: a reload holds the observed answers from before its
// store of the new policy until its forget after it. An answer handed in
// meanwhile, at the generation it reads (the proxy's answer path, the old
// policy still in force), is not taken in, so that nothing checked during
// the reload passes on it (review r3s27 F1); nor is one read at the held
// generation and handed in after the forget. The forget ends the hold.
func TestHoldObserved(t *testing.T) {
	c := newTestChecker(t, Config{}, nil)
	forged := msg(t, "allowed.example.", rr{name: "allowed.example.", ttl: 3600, addr: "198.51.100.66"})
	c.Observe(epA, forged)
	c.HoldObserved()
	if n := c.Stats().ObservedNames; n != 0 {
		t.Fatalf("%d observed names after HoldObserved, want 0: it forgets as ForgetObserved does", n)
	}
	held := c.Generation()
	c.ObserveAt(held, epA, addr("10.0.0.9"), forged)
	if err := check(c, epA, "allowed.example", "198.51.100.66"); err == nil {
		t.Fatal("an answer handed in while held vouched for allowed.example")
	}
	c.ForgetObserved()
	if c.Generation() == held {
		t.Fatal("ForgetObserved kept the held generation")
	}
	c.ObserveAt(held, epA, addr("10.0.0.9"), forged)
	if n := c.Stats().ObservedNames; n != 0 {
		t.Fatalf("an answer read while held and handed in after the forget was kept (%d names)", n)
	}
	c.ObserveAt(c.Generation(), epA, addr("10.0.0.9"), forged)
	if err := check(c, epA, "allowed.example", "198.51.100.66"); err != nil {
		t.Fatalf("after the forget ended the hold, an answer was not observed: %v", err)
	}
}
