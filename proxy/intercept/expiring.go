package intercept

import (
	"sync"
	"time"
)

// expiringSet is a bounded set whose members lapse: what the interceptor
// remembers of origins between connections (origingroups.go,
// verifycache.go). Forgetting a member early only costs some work on the
// next connection, so a full set makes room by dropping any member.
type expiringSet[K comparable] struct {
	max int
	now func() time.Time // replaced in tests

	mu    sync.Mutex
	until map[K]time.Time
}

func newExpiringSet[K comparable](max int) *expiringSet[K] {
	return &expiringSet[K]{max: max, now: time.Now, until: make(map[K]time.Time)}
}

// has reports whether k is a member that has not lapsed.
func (s *expiringSet[K]) has(k K) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	until, ok := s.until[k]
	if ok && !s.now().Before(until) {
		delete(s.until, k)
		ok = false
	}
	return ok
}

// add makes k a member until the given time, or for ttl from now when
// until is zero; a member already there gets the new time.
func (s *expiringSet[K]) add(k K, ttl time.Duration, until time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if limit := now.Add(ttl); until.IsZero() || limit.Before(until) {
		until = limit
	}
	if _, ok := s.until[k]; !ok && len(s.until) >= s.max {
		s.evictLocked(now)
	}
	s.until[k] = until
}

// remove drops k.
func (s *expiringSet[K]) remove(k K) {
	s.mu.Lock()
	delete(s.until, k)
	s.mu.Unlock()
}

// len returns the number of members, lapsed ones included.
func (s *expiringSet[K]) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.until)
}

// evictLocked makes room for one member: the lapsed ones go, and if none
// has lapsed, others until there is room.
func (s *expiringSet[K]) evictLocked(now time.Time) {
	for k, until := range s.until {
		if !now.Before(until) {
			delete(s.until, k)
		}
	}
	for k := range s.until {
		if len(s.until) < s.max {
			return
		}
		delete(s.until, k)
	}
}
