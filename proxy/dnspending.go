package proxy

import (
	"sync"
	"sync/atomic"
)

// maxPendingDNSPerClient bounds the DNS queries one client (shareKey) can
// leave waiting for an answer across all its flows; a query beyond it is
// recorded at once as untracked, as one beyond a flow's maxPendingDNS is.
//
// A pending query stays until its answer comes or its flow ends, and a
// flow that keeps sending lives on: without this budget a client's 1,024
// flows (DefaultMaxUDPFlowsPerClient) could each hold 1,024 (maxPendingDNS)
// queries with the longest names (about 1.2 GiB when they were kept under
// their text, 450 MiB under their wire form), all of it grown inside
// flows admitted while memory was ample, which the memory watch never
// refuses. A pending query costs at most about 500 bytes (its wire-form
// name, at most 254, and its map slot), so a client holds at most about
// 2 MiB. 4,096 is far above what clients leave unanswered: stub resolvers
// use a flow per lookup, which ends a second after its answer, so even a
// NAT'ing node doing 500 lookups a second has a few hundred pending, and
// those only while its resolver is slow.
const maxPendingDNSPerClient = 4096

// dnsPending counts the pending DNS queries of each client with a DNS flow
// open. A flow takes its client's budget when it starts and gives it back
// when it ends, so that a query costs one atomic add, not a map lookup
// under a lock every flow of every client takes.
type dnsPending struct {
	mu sync.Mutex
	m  map[shareKey]*dnsBudget
}

// dnsBudget is one client's count of pending queries.
type dnsBudget struct {
	flows int // DNS flows holding the budget; under dnsPending.mu
	n     atomic.Int64
}

// acquire returns k's budget, for one more of its flows.
func (s *dnsPending) acquire(k shareKey) *dnsBudget {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[shareKey]*dnsBudget)
	}
	b := s.m[k]
	if b == nil {
		b = &dnsBudget{}
		s.m[k] = b
	}
	b.flows++
	return b
}

// release gives back a flow's hold on k's budget b, which has given back
// its pending queries; the budget goes with its client's last DNS flow.
func (s *dnsPending) release(k shareKey, b *dnsBudget) {
	if b == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if b.flows--; b.flows <= 0 && s.m[k] == b {
		delete(s.m, k)
	}
}

// take counts one more pending query, if the budget has room. A nil budget
// (a flow that has ended) has none.
func (b *dnsBudget) take() bool {
	if b == nil {
		return false
	}
	if b.n.Add(1) > maxPendingDNSPerClient {
		b.n.Add(-1)
		return false
	}
	return true
}

// give counts n pending queries fewer.
func (b *dnsBudget) give(n int) {
	if b != nil && n > 0 {
		b.n.Add(-int64(n))
	}
}
