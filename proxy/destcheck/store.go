package destcheck

import (
	"net/netip"
	"sync"
	"sync/atomic"
)

// maxAddrsPerName bounds the addresses kept for one name (round-robin
// names gather more over time); when full, the one expiring first goes.
const maxAddrsPerName = 64

// key names an entry: a name as seen from one GWLB endpoint (observed
// answers), or as the appliance's own lookups found it (endpoint "").
type key struct{ endpoint, name string }

// timedAddr is an address and the clock reading (see Checker.clock) until
// which it counts, grace included.
type timedAddr struct {
	addr  netip.Addr
	until int64
}

// entry is what is known of one name. The lookup fields are used only by
// the store of the appliance's own lookups.
type entry struct {
	key   key
	addrs []timedAddr

	// fresh is when the last lookup's answer stops being current: until
	// then a destination not among addrs is a mismatch without a new
	// lookup (except for a recheck, see Config.Recheck).
	fresh int64
	// looked is when the name was last looked up.
	looked int64
	// negative names an answer without addresses (NXDOMAIN, NODATA),
	// current until fresh.
	negative string
	// failed is the last lookup's error, repeated until failedUntil
	// instead of asking a resolver that just failed again.
	failed      error
	failedUntil int64

	// claims are the clients told the name (one of the zero Addr for
	// answers that named no client and for the appliance's own lookups):
	// the entry stays while any of them claims it, so that a client
	// cannot evict a name another client was told, whether it asked for
	// it first or after (see store.update).
	claims []*claim

	// Links of the store's list (oldest update first).
	prev, next *entry
}

// has reports whether addr counts for e at clock now: it is one of e's
// addresses, or it is in 64:ff9b::/96 and the IPv4 address it embeds is
// (nat64Embedded).
func (e *entry) has(addr netip.Addr, now int64) bool {
	v4, nat64 := nat64Embedded(addr)
	for i := range e.addrs {
		if (e.addrs[i].addr == addr || nat64 && e.addrs[i].addr == v4) && e.addrs[i].until > now {
			return true
		}
	}
	return false
}

// nat64WellKnown is the well-known NAT64 prefix (RFC 6052).
var nat64WellKnown = netip.MustParsePrefix("64:ff9b::/96")

// nat64Embedded returns the IPv4 address a destination in 64:ff9b::/96
// carries in its last 32 bits, and whether it is in that prefix. A client
// behind DNS64 (the Route 53 Resolver of an IPv6-only subnet, whose answers
// never pass the GWLB) connects to 64:ff9b::c633:6407 for a name whose only
// address is 198.51.100.7, and the NAT gateway delivers it there: the
// appliance's own lookup, from a subnet without DNS64, gets that A record
// and no AAAA. The policy's dest_cidrs and the forbidden addresses judge
// that embedded address too. Not for 64:ff9b:1::/48, whose layouts read as
// several IPv4 addresses, nor 2002::/16: no translator of a DNS64 answer
// uses them.
func nat64Embedded(a netip.Addr) (netip.Addr, bool) {
	if !a.Is6() || !nat64WellKnown.Contains(a) {
		return netip.Addr{}, false
	}
	b := a.As16()
	return netip.AddrFrom4([4]byte(b[12:])), true
}

// add records addr as counting until until (a later time wins), dropping
// what has expired by now and, when full, the address expiring first.
func (e *entry) add(addr netip.Addr, until, now int64) {
	first, live := -1, e.addrs[:0]
	for _, a := range e.addrs {
		if a.until <= now {
			continue
		}
		if a.addr == addr {
			a.until = max(a.until, until)
			until = -1 // merged
		}
		live = append(live, a)
	}
	clear(e.addrs[len(live):])
	e.addrs = live
	if until < 0 {
		return
	}
	if len(e.addrs) >= maxAddrsPerName {
		for i := range e.addrs {
			if first < 0 || e.addrs[i].until < e.addrs[first].until {
				first = i
			}
		}
		if e.addrs[first].until >= until {
			return // every address kept outlives this one
		}
		e.addrs[first] = timedAddr{addr, until}
		return
	}
	e.addrs = append(e.addrs, timedAddr{addr, until})
}

// dead reports whether e holds nothing that counts at now: no address, no
// current lookup answer, no failure to repeat.
func (e *entry) dead(now int64) bool {
	if e.fresh > now || e.failedUntil > now {
		return false
	}
	for i := range e.addrs {
		if e.addrs[i].until > now {
			return false
		}
	}
	return true
}

// store is a bounded map of entries, each held by the claims of the
// clients told its name (see update for how room is made). Readers take
// the read lock, so that checks never wait for each other.
type store struct {
	mu        sync.RWMutex
	m         map[key]*entry
	root      entry // sentinel: root.next is the oldest update
	endpoints map[string]*epState
	clients   map[clientKey]*clientList
	// claimOf indexes every claim by entry and client, so that an answer
	// finds its client's claim on a name in O(1) (see claimBy). Like the
	// claims, it holds at most claimsPerName*max of them.
	claimOf  map[claimKey]*claim
	claims   int
	max      int // entries in all
	maxPerEP int // entries of one endpoint
	maxPerCl int // claims of one client (a client's share)
	evicted  uint64
	// gen counts the resets (Checker.ForgetObserved): advanced under mu
	// for writing, and read without it by Checker.Generation.
	gen atomic.Uint64
	// held: no answer is taken in (HoldObserved), until the next
	// ForgetObserved; under mu.
	held bool
}

// HoldObserved is ForgetObserved, and takes in no answer after it until
// the next ForgetObserved. A reload holds from before its store of the new
// policy until after it: an answer relayed meanwhile, under the old policy
// still in force, would be observed at the new generation, and a flow
// checked again (or opened) before the second forget could pass on it and
// keep that pass at a generation no later reload moves past, and so never
// be checked again (review r3s27 F1). Held, nothing checked during the
// reload passes on an observed answer at all, whatever flow asks (spliced
// TLS, QUIC, a bumped tunnel, the connection's name), and the flows' read
// paths need no second trigger.
func (c *Checker) HoldObserved() {
	s := c.observed
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reset()
	s.held = true
	s.gen.Add(1)
}

func newStore(max, maxPerEndpoint, maxPerClient int) *store {
	s := &store{
		m: make(map[key]*entry), endpoints: make(map[string]*epState), clients: make(map[clientKey]*clientList),
		claimOf: make(map[claimKey]*claim),
		max:     max, maxPerEP: maxPerEndpoint, maxPerCl: maxPerClient,
	}
	s.root.prev, s.root.next = &s.root, &s.root
	return s
}

// reset drops every entry (not counted as evicted). The caller holds s.mu
// for writing.
func (s *store) reset() {
	clear(s.m)
	clear(s.endpoints)
	clear(s.clients)
	clear(s.claimOf)
	s.claims = 0
	s.root.prev, s.root.next = &s.root, &s.root
}

// get returns the entry for k, or nil. The caller holds s.mu (read or
// write) for as long as it uses the entry.
func (s *store) get(k key) *entry { return s.m[k] }

// update returns the entry for k, created if missing, claimed by client
// (the zero Addr: no client) as the newest of its claims and the newest of
// the store's entries. The caller holds s.mu for writing.
//
// Making room for a claim not yet held takes back, in this order, until
// none applies: a client at its share (maxPerCl claims) its own oldest
// claim; an endpoint at its bound (maxPerEP entries, claimsPerName times
// as many claims) the oldest claim of the client holding the most (the
// zero Addr's included), so that a client with few names loses them last;
// the store at its bound (max entries, claimsPerName times as many claims)
// its oldest entry, with every claim on it. A claim taken back evicts its
// entry only if no other client claims it.
func (s *store) update(k key, client netip.Addr, now int64) *entry {
	e := s.m[k]
	if e != nil {
		if c := s.claimBy(e, client); c != nil {
			s.touch(e)
			touchClaim(c)
			return e
		}
	}
	// Entries that count for nothing are dropped as they come to the
	// front, so that expired names do not sit out their turn.
	for i := 0; i < 2 && s.root.next != &s.root && s.root.next.dead(now); i++ {
		s.remove(s.root.next)
	}
	s.makeRoom(k, clientKey{k.endpoint, client})
	if e = s.m[k]; e == nil { // new, or evicted making room
		e = &entry{key: k}
		s.m[k] = e
		e.prev, e.next = s.root.prev, &s.root
		s.root.prev.next, s.root.prev = e, e
		ep := s.endpoints[k.endpoint]
		if ep == nil {
			ep = &epState{}
			s.endpoints[k.endpoint] = ep
		}
		ep.n++
	} else {
		s.touch(e)
	}
	s.addClaim(e, client)
	return e
}

// makeRoom evicts until a claim of ck on the entry k (created if missing)
// is within every bound; see update.
func (s *store) makeRoom(k key, ck clientKey) {
	for {
		fresh := s.m[k] == nil
		ep := s.endpoints[k.endpoint]
		if cl := s.clients[ck]; cl != nil && ck.client.IsValid() && cl.n >= s.maxPerCl {
			s.drop(cl.root.next)
		} else if ep != nil && (fresh && ep.n >= s.maxPerEP || ep.claims >= claimsPerName*s.maxPerEP) {
			s.drop(ep.heap[0].root.next)
		} else if len(s.m) > 0 && (fresh && len(s.m) >= s.max || s.claims >= claimsPerName*s.max) {
			s.remove(s.root.next)
			s.evicted++
		} else {
			return
		}
	}
}

// touch makes e the newest of the store's entries.
func (s *store) touch(e *entry) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = s.root.prev, &s.root
	s.root.prev.next, s.root.prev = e, e
}

// remove drops e and every claim on it.
func (s *store) remove(e *entry) {
	delete(s.m, e.key)
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
	for _, c := range e.claims {
		s.unlinkClaim(c)
	}
	clear(e.claims)
	e.claims = nil
	ep := s.endpoints[e.key.endpoint]
	if ep.n--; ep.n == 0 {
		delete(s.endpoints, e.key.endpoint)
	}
}

// len returns the number of entries; the caller holds s.mu.
func (s *store) len() int { return len(s.m) }
