package destcheck

import (
	"container/heap"
	"net/netip"
)

// claimsPerName bounds the claims a store holds against its bounds in
// entries: an endpoint's claims at most claimsPerName times its entries,
// the store's at most claimsPerName times its own. Names several clients
// were told hold a claim of each; the bound keeps the memory of the claims
// (and of the clients that hold them) proportional to the names.
const claimsPerName = 2

// clientKey names a client behind an endpoint; the zero Addr stands for
// answers that named no client (Observe) and the appliance's own lookups.
type clientKey struct {
	endpoint string
	client   netip.Addr
}

// claim records that a client was told a name: the entry stays while any
// client claims it, and the claim counts against its client's share.
type claim struct {
	e          *entry
	cl         *clientList
	prev, next *claim // the client's list, oldest first
	i          int    // index in e.claims
}

// clientList is the claims of one client behind one endpoint, oldest update
// first.
type clientList struct {
	key  clientKey
	ep   *epState
	root claim // sentinel: root.next is the oldest
	n    int
	hi   int // index in ep.heap
}

// epState is what one endpoint holds: entries, claims, and its clients by
// the claims they hold, most first.
type epState struct {
	n, claims int
	heap      clientHeap
}

// clientHeap is a max-heap of clients by claims held (container/heap).
type clientHeap []*clientList

func (h clientHeap) Len() int           { return len(h) }
func (h clientHeap) Less(i, j int) bool { return h[i].n > h[j].n }
func (h clientHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].hi, h[j].hi = i, j
}
func (h *clientHeap) Push(x any) {
	cl := x.(*clientList)
	cl.hi = len(*h)
	*h = append(*h, cl)
}
func (h *clientHeap) Pop() any {
	old := *h
	cl := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return cl
}

// claimKey names the claim of one client on one entry (store.claimOf).
type claimKey struct {
	e      *entry
	client netip.Addr
}

// claimBy returns client's claim on e, or nil. It is a lookup in the
// store's index, not a scan of e.claims: a name many clients were told
// (up to an endpoint's claimsPerName*maxPerEP) is answered again and again,
// each time under the store's write lock, so a scan would hold that lock
// for as long as the name is popular, and building its claims would be
// quadratic.
func (s *store) claimBy(e *entry, client netip.Addr) *claim {
	return s.claimOf[claimKey{e, client}]
}

// addClaim records that client (of e's endpoint) was told e's name, as the
// newest of its claims. The caller made room (store.makeRoom).
func (s *store) addClaim(e *entry, client netip.Addr) {
	ck := clientKey{e.key.endpoint, client}
	cl := s.clients[ck]
	if cl == nil {
		ep := s.endpoints[e.key.endpoint]
		cl = &clientList{key: ck, ep: ep}
		cl.root.prev, cl.root.next = &cl.root, &cl.root
		s.clients[ck] = cl
		heap.Push(&ep.heap, cl)
	}
	c := &claim{e: e, cl: cl, i: len(e.claims)}
	e.claims = append(e.claims, c)
	s.claimOf[claimKey{e, client}] = c
	c.prev, c.next = cl.root.prev, &cl.root
	cl.root.prev.next, cl.root.prev = c, c
	cl.n++
	cl.ep.claims++
	s.claims++
	heap.Fix(&cl.ep.heap, cl.hi)
}

// touchClaim makes c the newest of its client's claims.
func touchClaim(c *claim) {
	cl := c.cl
	c.prev.next, c.next.prev = c.next, c.prev
	c.prev, c.next = cl.root.prev, &cl.root
	cl.root.prev.next, cl.root.prev = c, c
}

// unlinkClaim takes c off its client's list and counts, dropping a client
// left with none; e.claims is the caller's to fix.
func (s *store) unlinkClaim(c *claim) {
	cl := c.cl
	delete(s.claimOf, claimKey{c.e, cl.key.client})
	c.prev.next, c.next.prev = c.next, c.prev
	c.prev, c.next = nil, nil
	cl.n--
	cl.ep.claims--
	s.claims--
	if cl.n == 0 {
		heap.Remove(&cl.ep.heap, cl.hi)
		delete(s.clients, cl.key)
		return
	}
	heap.Fix(&cl.ep.heap, cl.hi)
}

// drop takes back the claim c: the entry goes (counted as evicted) only if
// no other client claims it.
func (s *store) drop(c *claim) {
	e := c.e
	s.unlinkClaim(c)
	last := len(e.claims) - 1
	e.claims[c.i] = e.claims[last]
	e.claims[c.i].i = c.i
	e.claims[last] = nil
	e.claims = e.claims[:last]
	if len(e.claims) == 0 {
		s.remove(e)
		s.evicted++
		return
	}
	// Give back the room of claims given back: otherwise a name told to
	// thousands of clients and kept by one would keep room for them all,
	// and name after name could hold memory beyond the bounds on claims.
	// Halving when a quarter is in use keeps this O(1) amortized.
	if n := len(e.claims); cap(e.claims) > 8 && n <= cap(e.claims)/4 {
		e.claims = append(make([]*claim, 0, 2*n), e.claims...)
	}
}
