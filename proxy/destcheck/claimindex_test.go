package destcheck

import (
	"fmt"
	"net/netip"
	"testing"
)

// popularStore returns a store with a name that clients clients were
// told, each one claim, and the last of those clients: its claim on the
// name is the last one added.
func popularStore(clients int) (s *store, popular key, last netip.Addr) {
	s = newStore(DefaultMaxEntries, DefaultMaxEntries/2, DefaultMaxEntries/8)
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}) }
	popular = key{"vpce-1", "popular.example"}
	live := netip.MustParseAddr("192.0.2.1")
	for i := range clients {
		s.update(popular, addr(i), 1).add(live, 1<<60, 1)
	}
	return s, popular, addr(clients - 1)
}

// An answer for a name many clients were told finds the client's claim
// through the store's index, not by scanning every claim on the name under
// the write lock (which took 157µs an answer at 50,000 claims, and made
// building them quadratic): the index holds every claim, under its own
// client, and an answer again for a client touches that client's claim
// and adds none. What it costs is BenchmarkAnswerAgain's.
func TestClaimIndexHoldsEveryClaim(t *testing.T) {
	const clients = 50_000
	s, popular, last := popularStore(clients)
	e := s.get(popular)
	if n := len(e.claims); n != clients {
		t.Fatalf("%d claims on the popular name, want %d", n, clients)
	}
	if len(s.claimOf) != s.claims || s.claims != clients {
		t.Fatalf("the index holds %d claims, the store counts %d, want %d", len(s.claimOf), s.claims, clients)
	}
	for i, c := range e.claims {
		if got := s.claimBy(e, c.cl.key.client); got != c || c.i != i {
			t.Fatalf("claim %d (client %v) is indexed as %p at %d, want %p", i, c.cl.key.client, got, c.i, c)
		}
	}
	first := e.claims[0].cl
	s.update(popular, first.key.client, 2)
	if len(e.claims) != clients || first.root.prev != e.claims[0] {
		t.Fatalf("an answer again for a client: %d claims, its claim newest: %v", len(e.claims), first.root.prev == e.claims[0])
	}
	if s.claimBy(e, netip.MustParseAddr("10.255.255.255")) != nil || s.claimBy(e, last) == nil {
		t.Fatal("the index answers for a client that was never told the name, or not for one that was")
	}
	checkLists(t, s)
}

// BenchmarkAnswerAgain: an answer for a name its client was already told,
// on a name one client was told and one 50,000 were; the two should cost
// the same (the claim is found through the index).
func BenchmarkAnswerAgain(b *testing.B) {
	for _, clients := range []int{1, 50_000} {
		b.Run(fmt.Sprintf("claims=%d", clients), func(b *testing.B) {
			s, popular, last := popularStore(clients)
			b.ReportAllocs()
			for b.Loop() {
				s.update(popular, last, 1)
			}
		})
	}
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
