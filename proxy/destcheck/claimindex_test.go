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

// A name that many clients were told and then gave back does not keep the
// room their claims took: otherwise clients could tell one name after
// another to thousands of clients, keep each alive with one claim, and
// leave 8 bytes a claim (a pointer in e.claims) behind for every claim
// ever made, beyond the bounds on names and claims.
func TestClaimsGivenBackFreeTheirRoom(t *testing.T) {
	s := newStore(10_000, 10_000, 1) // a client's share: one claim
	const clients = 4096
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}) }
	live := netip.MustParseAddr("192.0.2.1")
	popular, other := key{"vpce-1", "popular.example"}, key{"vpce-1", "other.example"}
	keeper := netip.MustParseAddr("10.255.0.1")
	s.update(popular, keeper, 1).add(live, 1<<60, 1)
	for i := range clients {
		s.update(popular, addr(i), 1)
	}
	e := s.get(popular)
	grown := cap(e.claims)
	for i := range clients {
		s.update(other, addr(i), 1).add(live, 1<<60, 1) // at its share: gives back popular
	}
	if s.get(popular) != e || len(e.claims) != 1 {
		t.Fatalf("the popular name has %d claims, want the keeper's", len(e.claims))
	}
	t.Logf("claims on the popular name: room for %d at %d claims, for %d at 1", grown, clients+1, cap(e.claims))
	if cap(e.claims) > 8 {
		t.Errorf("one claim left keeps room for %d (%d bytes)", cap(e.claims), 8*cap(e.claims))
	}
	checkLists(t, s)
}
