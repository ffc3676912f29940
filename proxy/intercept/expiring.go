package intercept

import (
	"sync"
	"time"
)

// expiringMap is a bounded map whose members lapse: what the interceptor
// remembers of origins between connections (origingroups.go,
// verifycache.go, verifyguard.go). Forgetting a member early only costs some work on the
// next connection, so a full set makes room by dropping the member
// closest to lapsing.
//
// Times are wall-clock readings (no monotonic part), as certificates'
// validity is: a member counts only between when it was added and when
// it lapses, so a clock stepped forward (NTP, a VM resumed) lapses it and
// one stepped back before its addition voids it.
type expiringMap[K comparable, V any] struct {
	max int
	now func() time.Time // replaced in tests

	mu      sync.Mutex
	members map[K]member[V]
}

// expiringSet is an expiringMap whose members carry nothing.
type expiringSet[K comparable] = expiringMap[K, struct{}]

// span is when a member counts: from since (inclusive) to until.
type span struct{ since, until time.Time }

// member is a key's value and when it counts.
type member[V any] struct {
	span
	v V
}

func newExpiringSet[K comparable](max int) *expiringSet[K] { return newExpiringMap[K, struct{}](max) }

func newExpiringMap[K comparable, V any](max int) *expiringMap[K, V] {
	return &expiringMap[K, V]{max: max, now: time.Now, members: make(map[K]member[V])}
}

// has reports whether k is a member that has not lapsed.
func (s *expiringMap[K, V]) has(k K) bool {
	_, ok := s.get(k)
	return ok
}

// get returns k's value, if k is a member that has not lapsed.
func (s *expiringMap[K, V]) get(k K) (V, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.members[k]
	if !ok {
		var zero V
		return zero, false
	}
	if now := s.now().Round(0); now.Before(m.since) || !now.Before(m.until) {
		delete(s.members, k)
		var zero V
		return zero, false
	}
	return m.v, true
}

// add makes k a member until the given time, or for ttl from now if that
// is sooner or until is zero; a member already there starts anew.
func (s *expiringMap[K, V]) add(k K, ttl time.Duration, until time.Time) {
	var zero V
	s.put(k, zero, ttl, until)
}

// put is add, with v as k's value.
func (s *expiringMap[K, V]) put(k K, v V, ttl time.Duration, until time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now().Round(0)
	if limit := now.Add(ttl); until.IsZero() || limit.Before(until) {
		until = limit
	}
	if _, ok := s.members[k]; !ok && len(s.members) >= s.max {
		s.evictLocked(now)
	}
	s.members[k] = member[V]{span: span{since: now, until: until}, v: v}
}

// remove drops k.
func (s *expiringMap[K, V]) remove(k K) {
	s.mu.Lock()
	delete(s.members, k)
	s.mu.Unlock()
}

// evictLocked makes room for one member: the lapsed ones go, and if none
// has, the one closest to lapsing. A full set costs a scan of it per
// addition (a few microseconds at the sizes used, against a TLS
// handshake's milliseconds).
func (s *expiringMap[K, V]) evictLocked(now time.Time) {
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
