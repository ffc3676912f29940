package destcheck

import (
	"fmt"
	"math"
	"net/netip"
	"testing"
)

// TestHugeMaxEntriesKeepsNames: a bound of entries past MaxMaxEntries is
// held to it. Taken as given, claimsPerName times it overflowed negative
// from MaxInt64/2 on, and every update evicted every other name: the cache
// kept one, and destination checks missed without a word.
func TestHugeMaxEntriesKeepsNames(t *testing.T) {
	sizes := []int{DefaultMaxEntries, MaxMaxEntries, MaxMaxEntries + 1, math.MaxInt64/2 + 1, math.MaxInt64}
	var configs []Config
	for _, size := range sizes {
		configs = append(configs, Config{MaxEntries: size}, Config{MaxEntries: size, MaxEntriesPerEndpoint: size, MaxEntriesPerClient: size})
	}
	for _, cfg := range configs {
		size := cfg.MaxEntries
		cfg.setDefaults()
		if cfg.MaxEntries > MaxMaxEntries || cfg.MaxEntriesPerEndpoint > MaxMaxEntries || cfg.MaxEntriesPerClient > MaxMaxEntries {
			t.Errorf("MaxEntries %d: bounds %d, %d, %d, want each at most %d", size,
				cfg.MaxEntries, cfg.MaxEntriesPerEndpoint, cfg.MaxEntriesPerClient, MaxMaxEntries)
		}
		s := newStore(cfg.MaxEntries, cfg.MaxEntriesPerEndpoint, cfg.MaxEntriesPerClient)
		client, live := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("192.0.2.1")
		for i := range 10 {
			s.update(key{"vpce-1", fmt.Sprintf("n%d.example", i)}, client, 1).add(live, 1<<60, 1)
		}
		if s.len() != 10 {
			t.Errorf("MaxEntries %d: the store keeps %d of 10 names", size, s.len())
		}
	}
}
