package destcheck

import (
	"net/netip"
	"testing"
	"time"
)

// An answer for a name many clients were told costs what one for a name a
// single client was told: the client's claim is found through the store's
// index, not by scanning every claim on the name under the write lock
// (which took 157µs an answer at 50,000 claims, and made building them
// quadratic). The two are timed in the same run, alternately, and the best
// of several rounds compared, so that the bound is a ratio, not a clock.
func TestClaimLookupPerAnswerBounded(t *testing.T) {
	s := newStore(DefaultMaxEntries, DefaultMaxEntries/2, DefaultMaxEntries/8)
	const clients = 50_000
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}) }
	popular, lonely := key{"vpce-1", "popular.example"}, key{"vpce-1", "lonely.example"}
	live := netip.MustParseAddr("192.0.2.1")
	for i := range clients {
		s.update(popular, addr(i), 1).add(live, 1<<60, 1)
	}
	last := addr(clients - 1) // its claim on popular is the last one added
	s.update(lonely, last, 1).add(live, 1<<60, 1)
	if n := len(s.get(popular).claims); n != clients {
		t.Fatalf("%d claims on the popular name, want %d", n, clients)
	}

	const answers, rounds = 2000, 7
	per := func(k key) time.Duration {
		start := time.Now()
		for range answers {
			s.update(k, last, 1) // the same client's answer again
		}
		return time.Since(start) / answers
	}
	bestPopular, bestLonely := time.Duration(1<<62), time.Duration(1<<62)
	for range rounds {
		bestPopular = min(bestPopular, per(popular))
		bestLonely = min(bestLonely, per(lonely))
	}
	t.Logf("an answer for a name with %d claims: %v; with 1 claim: %v", clients, bestPopular, bestLonely)
	if bestPopular > 10*bestLonely+time.Microsecond {
		t.Errorf("an answer for a name with %d claims costs %v, %.0f times one with 1 claim (%v): the claims are scanned",
			clients, bestPopular, float64(bestPopular)/float64(bestLonely), bestLonely)
	}
	checkLists(t, s)
}
