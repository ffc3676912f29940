package intercept

import (
	"sync"
	"time"
)

// expiringSet is a bounded set whose members lapse: what the interceptor
// remembers of origins between connections (origingroups.go,
// verifycache.go). Forgetting a member early only costs some work on the
// next connection, so a full set makes room by dropping the member
// closest to lapsing.
//
// Times are wall-clock readings (no monotonic part), as certificates'
// validity is: a member counts only between when it was added and when
// it lapses, so a clock stepped forward (NTP, a VM resumed) lapses it and
// one stepped back before its addition voids it.
type expiringSet[K comparable] struct {
	max int
	now func() time.Time // replaced in tests

	mu      sync.Mutex
	members map[K]span
}

// span is when a member counts: from since (inclusive) to until.
type span struct{ since, until time.Time }

func newExpiringSet[K comparable](max int) *expiringSet[K] {
	return &expiringSet[K]{max: max, now: time.Now, members: make(map[K]span)}
}

// has reports whether k is a member that has not lapsed.
func (s *expiringSet[K]) has(k K) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.members[k]
	if !ok {
		return false
	}
	if now := s.now().Round(0); now.Before(m.since) || !now.Before(m.until) {
		delete(s.members, k)
		return false
	}
	return true
}

// add makes k a member until the given time, or for ttl from now if that
// is sooner or until is zero; a member already there starts anew.
func (s *expiringSet[K]) add(k K, ttl time.Duration, until time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now().Round(0)
	if limit := now.Add(ttl); until.IsZero() || limit.Before(until) {
		until = limit
	}
	if _, ok := s.members[k]; !ok && len(s.members) >= s.max {
		s.evictLocked(now)
	}
	s.members[k] = span{since: now, until: until}
}

// remove drops k.
func (s *expiringSet[K]) remove(k K) {
	s.mu.Lock()
	delete(s.members, k)
	s.mu.Unlock()
}

// evictLocked makes room for one member: the lapsed ones go, and if none
// has, the one closest to lapsing. A full set costs a scan of it per
// addition (a few microseconds at the sizes used, against a TLS
// handshake's milliseconds).
func (s *expiringSet[K]) evictLocked(now time.Time) {
	var soonest K
	var soonestUntil time.Time
	for k, m := range s.members {
		if now.Before(m.since) || !now.Before(m.until) {
			delete(s.members, k)
			continue
		}
		if soonestUntil.IsZero() || m.until.Before(soonestUntil) {
			soonest, soonestUntil = k, m.until
		}
	}
	if len(s.members) >= s.max {
		delete(s.members, soonest)
	}
}
