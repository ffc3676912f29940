package destcheck

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// The entries of one endpoint, and all entries, are bounded; the entry
// updated longest ago goes first.
func TestStoreBounds(t *testing.T) {
	c := newTestChecker(t, Config{MaxEntries: 4, MaxEntriesPerEndpoint: 2}, nil)
	observe := func(ep, name string) {
		c.Observe(ep, msg(t, name+".", rr{name: name + ".", ttl: 60, addr: "192.0.2.1"}))
	}
	known := func(ep, name string) bool { return check(c, ep, name, "192.0.2.1") == nil }
	observe(epA, "a1.test")
	observe(epA, "a2.test")
	observe(epA, "a1.test") // a1 is now newer than a2
	observe(epA, "a3.test") // the endpoint's bound: a2 goes
	if !known(epA, "a1.test") || known(epA, "a2.test") || !known(epA, "a3.test") {
		t.Errorf("per-endpoint bound: want a1 and a3 kept, a2 evicted")
	}
	observe(epB, "b1.test")
	observe(epB, "b2.test") // 4 in all
	observe("vpce-c", "c1.test")
	// The total bound: the oldest of all (a1) goes.
	if known(epA, "a1.test") || !known(epA, "a3.test") || !known(epB, "b1.test") || !known("vpce-c", "c1.test") {
		t.Errorf("total bound: want a1 evicted, the rest kept")
	}
	st := c.Stats()
	if st.ObservedNames != 4 || st.Evicted != 2 {
		t.Errorf("stats %+v: want 4 names, 2 evicted", st)
	}
	c.observed.mu.RLock()
	defer c.observed.mu.RUnlock()
	checkLists(t, c.observed)
}

// Entries that count for nothing any more are dropped before live ones.
func TestStoreDropsExpiredFirst(t *testing.T) {
	clk := newFakeClock()
	c := newTestChecker(t, Config{MaxEntries: 100, Grace: time.Second, MinTTL: time.Second}, clk)
	for i := range 10 {
		c.Observe(epA, msg(t, fmt.Sprintf("old%d.test.", i), rr{name: fmt.Sprintf("old%d.test.", i), ttl: 1, addr: "192.0.2.1"}))
	}
	clk.Advance(time.Minute)
	for i := range 5 {
		c.Observe(epA, msg(t, fmt.Sprintf("new%d.test.", i), rr{name: fmt.Sprintf("new%d.test.", i), ttl: 60, addr: "192.0.2.1"}))
	}
	if st := c.Stats(); st.ObservedNames != 5 || st.Evicted != 0 {
		t.Errorf("stats %+v: want the 10 expired names dropped, 5 kept, no live one evicted", st)
	}
	c.observed.mu.RLock()
	defer c.observed.mu.RUnlock()
	checkLists(t, c.observed)
}

// Addresses of one name are bounded too.
func TestStoreAddressBound(t *testing.T) {
	c := newTestChecker(t, Config{}, nil)
	for i := range 100 {
		c.Observe(epA, msg(t, "many.test.", rr{name: "many.test.", ttl: uint32(60 + i), addr: fmt.Sprintf("192.0.2.%d", i)}))
	}
	c.observed.mu.RLock()
	n := len(c.observed.get(key{epA, "many.test"}).addrs)
	c.observed.mu.RUnlock()
	if n != maxAddrsPerName {
		t.Errorf("%d addresses kept, want %d", n, maxAddrsPerName)
	}
	// The longest-lived stay.
	if err := check(c, epA, "many.test", "192.0.2.99"); err != nil {
		t.Error(err)
	}
	if err := check(c, epA, "many.test", "192.0.2.0"); err == nil {
		t.Error("the address expiring first was kept")
	}
}

// checkLists verifies the store's lists against its map.
func checkLists(t *testing.T, s *store) {
	t.Helper()
	n := 0
	for e := s.root.next; e != &s.root; e = e.next {
		if s.m[e.key] != e || e.next.prev != e {
			t.Fatalf("global list broken at %v", e.key)
		}
		n++
	}
	if n != len(s.m) {
		t.Fatalf("global list holds %d entries, the map %d", n, len(s.m))
	}
	// Every entry is claimed, by distinct clients, and counted by its
	// endpoint; every claim is on its client's list and its entry's.
	entries, claims := map[string]int{}, map[string]int{}
	for e := s.root.next; e != &s.root; e = e.next {
		if len(e.claims) == 0 {
			t.Fatalf("entry %v has no claim", e.key)
		}
		seen := map[netip.Addr]bool{}
		for i, c := range e.claims {
			if c.e != e || c.i != i || c.cl.key.endpoint != e.key.endpoint || seen[c.cl.key.client] || s.clients[c.cl.key] != c.cl {
				t.Fatalf("entry %v: claim %d broken", e.key, i)
			}
			seen[c.cl.key.client] = true
		}
		entries[e.key.endpoint]++
		claims[e.key.endpoint] += len(e.claims)
	}
	total := 0
	for ep, st := range s.endpoints {
		if st.n != entries[ep] || st.n == 0 || st.claims != claims[ep] || st.n > s.maxPerEP || st.claims > claimsPerName*s.maxPerEP {
			t.Fatalf("endpoint %s: %d entries and %d claims, counted %d and %d (bound %d)", ep, entries[ep], claims[ep], st.n, st.claims, s.maxPerEP)
		}
		total += st.claims
		for i, cl := range st.heap {
			if cl.hi != i || cl.ep != st || i > 0 && st.heap[(i-1)/2].n < cl.n {
				t.Fatalf("endpoint %s: heap broken at %d", ep, i)
			}
		}
	}
	if len(entries) != len(s.endpoints) || total != s.claims || s.claims > claimsPerName*s.max {
		t.Fatalf("%d endpoints with entries, %d counted; %d claims, %d counted", len(entries), len(s.endpoints), total, s.claims)
	}
	total = 0
	for ck, l := range s.clients {
		k := 0
		for c := l.root.next; c != &l.root; c = c.next {
			if c.cl != l || c.next.prev != c || c.e.claims[c.i] != c || s.m[c.e.key] != c.e || s.claimOf[claimKey{c.e, ck.client}] != c {
				t.Fatalf("client list %v broken at %v", ck, c.e.key)
			}
			k++
		}
		if k != l.n || k == 0 || ck.client.IsValid() && k > s.maxPerCl || s.endpoints[ck.endpoint] != l.ep || l.ep.heap[l.hi] != l {
			t.Fatalf("client %v: list of %d, count %d, share %d", ck, k, l.n, s.maxPerCl)
		}
		total += k
	}
	if total != s.claims || len(s.claimOf) != s.claims {
		t.Fatalf("client lists hold %d claims, the index %d, %d counted", total, len(s.claimOf), s.claims)
	}
}
