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

// clientKey names a client behind an endpoint, whose observed answers
// brought names into the store.
type clientKey struct {
	endpoint string
	client   netip.Addr
}

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

	// owner is the client whose answer brought the name in (invalid when
	// no client was named: the appliance's own lookups, Observe): the
	// entry counts against that client's share until it goes, whoever
	// updates it since, so that a client cannot take another's names into
	// its share by asking for them, and then evict them.
	owner netip.Addr

	// Links of the store's list (oldest update first), of the endpoint's
	// list and of its owner's list.
	prev, next   *entry
	eprev, enext *entry
	cprev, cnext *entry
}

// has reports whether addr counts for e at clock now.
func (e *entry) has(addr netip.Addr, now int64) bool {
	for i := range e.addrs {
		if e.addrs[i].addr == addr && e.addrs[i].until > now {
			return true
		}
	}
	return false
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

// epList is the entries of one endpoint, oldest update first.
type epList struct {
	root entry // sentinel: root.enext is the oldest
	n    int
}

// clientList is the entries one client brought in, oldest update first.
type clientList struct {
	root entry // sentinel: root.cnext is the oldest
	n    int
}

// store is a bounded map of entries. An update moves an entry to the end
// of its lists; past a bound, the entry updated longest ago goes first.
// Readers take the read lock, so that checks never wait for each other.
type store struct {
	mu        sync.RWMutex
	m         map[key]*entry
	root      entry // sentinel: root.next is the oldest
	endpoints map[string]*epList
	clients   map[clientKey]*clientList
	max       int // entries in all
	maxPerEP  int // entries of one endpoint
	maxPerCl  int // entries one client brought in
	evicted   uint64
	// gen counts the resets (Checker.ForgetObserved): advanced under mu
	// for writing, and read without it by Checker.Generation.
	gen atomic.Uint64
}

func newStore(max, maxPerEndpoint, maxPerClient int) *store {
	s := &store{
		m: make(map[key]*entry), endpoints: make(map[string]*epList), clients: make(map[clientKey]*clientList),
		max: max, maxPerEP: maxPerEndpoint, maxPerCl: maxPerClient,
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
	s.root.prev, s.root.next = &s.root, &s.root
}

// get returns the entry for k, or nil. The caller holds s.mu (read or
// write) for as long as it uses the entry.
func (s *store) get(k key) *entry { return s.m[k] }

// update returns the entry for k, created if missing, as the newest of
// its lists; a new entry is client's (which may be the zero Addr: no
// client). The caller holds s.mu for writing. Making room evicts the
// oldest entries, first any that hold nothing any more: the client's own
// when it holds its share, then the endpoint's, then the store's.
func (s *store) update(k key, client netip.Addr, now int64) *entry {
	if e := s.m[k]; e != nil {
		s.touch(e)
		return e
	}
	// Entries that count for nothing are dropped as they come to the
	// front, so that expired names do not sit out their turn.
	for i := 0; i < 2 && s.root.next != &s.root && s.root.next.dead(now); i++ {
		s.remove(s.root.next)
	}
	ep := s.endpoints[k.endpoint]
	if ep == nil {
		ep = &epList{}
		ep.root.eprev, ep.root.enext = &ep.root, &ep.root
		s.endpoints[k.endpoint] = ep
	}
	ck := clientKey{k.endpoint, client}
	var cl *clientList
	if client.IsValid() {
		if cl = s.clients[ck]; cl == nil {
			cl = &clientList{}
			cl.root.cprev, cl.root.cnext = &cl.root, &cl.root
			s.clients[ck] = cl
		}
		for cl.n > 0 && cl.n >= s.maxPerCl {
			s.remove(cl.root.cnext)
			s.evicted++
		}
	}
	for ep.n > 0 && ep.n >= s.maxPerEP {
		s.remove(ep.root.enext)
		s.evicted++
	}
	for len(s.m) > 0 && len(s.m) >= s.max {
		s.remove(s.root.next)
		s.evicted++
	}
	if s.endpoints[k.endpoint] == nil { // emptied by the evictions
		s.endpoints[k.endpoint] = ep
	}
	if cl != nil && s.clients[ck] == nil {
		s.clients[ck] = cl
	}
	e := &entry{key: k, owner: client}
	s.m[k] = e
	e.prev, e.next = s.root.prev, &s.root
	s.root.prev.next, s.root.prev = e, e
	e.eprev, e.enext = ep.root.eprev, &ep.root
	ep.root.eprev.enext, ep.root.eprev = e, e
	ep.n++
	if cl != nil {
		e.cprev, e.cnext = cl.root.cprev, &cl.root
		cl.root.cprev.cnext, cl.root.cprev = e, e
		cl.n++
	}
	return e
}

// touch makes e the newest of its lists.
func (s *store) touch(e *entry) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = s.root.prev, &s.root
	s.root.prev.next, s.root.prev = e, e
	ep := s.endpoints[e.key.endpoint]
	e.eprev.enext, e.enext.eprev = e.enext, e.eprev
	e.eprev, e.enext = ep.root.eprev, &ep.root
	ep.root.eprev.enext, ep.root.eprev = e, e
	if e.owner.IsValid() {
		cl := s.clients[clientKey{e.key.endpoint, e.owner}]
		e.cprev.cnext, e.cnext.cprev = e.cnext, e.cprev
		e.cprev, e.cnext = cl.root.cprev, &cl.root
		cl.root.cprev.cnext, cl.root.cprev = e, e
	}
}

func (s *store) remove(e *entry) {
	delete(s.m, e.key)
	e.prev.next, e.next.prev = e.next, e.prev
	e.eprev.enext, e.enext.eprev = e.enext, e.eprev
	e.prev, e.next, e.eprev, e.enext = nil, nil, nil, nil
	ep := s.endpoints[e.key.endpoint]
	if ep.n--; ep.n == 0 {
		delete(s.endpoints, e.key.endpoint)
	}
	if e.owner.IsValid() {
		ck := clientKey{e.key.endpoint, e.owner}
		e.cprev.cnext, e.cnext.cprev = e.cnext, e.cprev
		e.cprev, e.cnext = nil, nil
		cl := s.clients[ck]
		if cl.n--; cl.n == 0 {
			delete(s.clients, ck)
		}
	}
}

// len returns the number of entries; the caller holds s.mu.
func (s *store) len() int { return len(s.m) }
