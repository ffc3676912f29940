// Package destcheck answers one question for the proxy: is this destination
// address one that this name resolves to? It closes the oldest way around a
// domain allow list: a client that sends an allowed name (TLS SNI, QUIC SNI,
// HTTP Host) towards an address of its own choosing.
//
// A Checker knows a name's addresses from two sources:
//
//   - the DNS answers the appliance relays to clients (Observe, the proxy's
//     DNSAnswer hook), kept per GWLB endpoint: the answers a client acted
//     on count for that endpoint's clients only;
//   - its own lookups: A and AAAA queries to the instance's resolver, sent
//     when no observed answer vouches for the destination.
//
// Answers are kept for their TTL (clamped) and a grace period after it, so
// that a connection made just after a record expired still passes. Names
// compare case-insensitively, without a trailing dot; IPv4-mapped IPv6
// addresses count as their IPv4 address. Memory is bounded (claims per
// client, entries and claims per endpoint and in all), one lookup per name is in flight at a time, lookups
// in flight are bounded, and a check waits for a lookup no longer than its
// context allows.
package destcheck

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// Defaults of Config.
const (
	DefaultGrace         = 30 * time.Second
	DefaultMinTTL        = 5 * time.Second
	DefaultMaxTTL        = time.Hour
	DefaultNegativeTTL   = 5 * time.Second
	DefaultFailureTTL    = time.Second
	DefaultRecheck       = 5 * time.Second
	DefaultLookupTimeout = 3 * time.Second
	DefaultMaxLookups    = 64
	DefaultMaxEntries    = 100_000
)

// MaxMaxEntries is the most Config.MaxEntries and the bounds under it take:
// a thousand times the default, more names than the appliance has memory
// for (a name costs up to about 2.8 KiB), and far from where the store's
// bound of claims (claimsPerName times it) would overflow.
const MaxMaxEntries = 100_000_000

const (
	// defaultRetransmit is how long a query over UDP waits for its answer
	// before it is sent again.
	defaultRetransmit = time.Second
	// maxAddrsInMismatchMsg bounds the addresses a MismatchError names.
	maxAddrsInMismatchMsg = 8
)

// Config configures a Checker. The zero value of each field picks its
// default.
type Config struct {
	// Resolver is the DNS server the checker's own lookups ask, over UDP
	// (TCP when an answer comes back truncated). The zero value disables
	// them: a name no observed answer vouches for cannot be looked up.
	Resolver netip.AddrPort
	// Grace is how long an address still counts after its TTL has run out
	// (default 30 s): clients connect after their own lookup, and may use
	// an address a little past its TTL.
	Grace time.Duration
	// MinTTL and MaxTTL clamp the TTL of every answer, observed or looked
	// up (default 5 s and 1 h): a TTL of 0 would make the checker look the
	// name up for every connection, and a TTL of years would pin an
	// address forever.
	MinTTL, MaxTTL time.Duration
	// NegativeTTL is how long an answer without addresses (NXDOMAIN, or
	// no A or AAAA records) stands before the name is looked up again
	// (default 5 s).
	NegativeTTL time.Duration
	// FailureTTL is how long a failed lookup is repeated to further checks
	// of the name instead of asking the resolver again (default 1 s).
	FailureTTL time.Duration
	// Recheck: when a destination is not among the addresses of a lookup
	// still current, the name is looked up again if that lookup is at
	// least this old (default 5 s). Round-robin names hand out different
	// subsets of their addresses, and the addresses found accumulate.
	Recheck time.Duration
	// LookupTimeout bounds one lookup: A and AAAA in parallel, a
	// retransmission, and TCP after a truncated answer (default 3 s).
	LookupTimeout time.Duration
	// MaxLookups bounds the lookups running at once (default 64); more
	// wait for a slot, about another LookupTimeout (and while a lookup
	// holding one is past its LookupTimeout).
	MaxLookups int
	// MaxEntries bounds the names kept: observed answers (a name as seen
	// by one endpoint is one entry) and the checker's own lookups, each
	// (default 100,000; at most MaxMaxEntries, as are the two bounds
	// below). The entry updated longest ago is evicted first.
	MaxEntries int
	// MaxEntriesPerEndpoint bounds the observed names of one GWLB
	// endpoint (default half of MaxEntries), so that one VPC's clients
	// cannot evict every other's. Each client told a name claims it; an
	// endpoint holds at most twice as many claims as names, and at either
	// bound the client holding the most claims gives back its oldest, so
	// that clients filling their shares trim each other first.
	MaxEntriesPerEndpoint int
	// MaxEntriesPerClient bounds the claims one client behind an endpoint
	// holds on observed names (default a quarter of
	// MaxEntriesPerEndpoint): a client that asks for ever new names (of a
	// zone of its own, each answer a CNAME chain of eight) gives back its
	// own oldest claims, which evict a name only when no other client
	// claims it, not the names its endpoint's other clients were told.
	MaxEntriesPerClient int
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.Grace, DefaultGrace)
	def(&c.MinTTL, DefaultMinTTL)
	def(&c.MaxTTL, DefaultMaxTTL)
	def(&c.NegativeTTL, DefaultNegativeTTL)
	def(&c.FailureTTL, DefaultFailureTTL)
	def(&c.Recheck, DefaultRecheck)
	def(&c.LookupTimeout, DefaultLookupTimeout)
	c.MaxTTL = max(c.MaxTTL, c.MinTTL)
	if c.MaxLookups <= 0 {
		c.MaxLookups = DefaultMaxLookups
	}
	// Past MaxMaxEntries, the store's bounds of claims (claimsPerName
	// times these) can overflow negative and evict every name but the
	// newest. The appliance refuses such a --dns-cache-size; other
	// callers get the cap.
	if c.MaxEntries <= 0 {
		c.MaxEntries = DefaultMaxEntries
	}
	c.MaxEntries = min(c.MaxEntries, MaxMaxEntries)
	if c.MaxEntriesPerEndpoint <= 0 {
		c.MaxEntriesPerEndpoint = max(c.MaxEntries/2, 1)
	}
	c.MaxEntriesPerEndpoint = min(c.MaxEntriesPerEndpoint, MaxMaxEntries)
	if c.MaxEntriesPerClient <= 0 {
		c.MaxEntriesPerClient = max(c.MaxEntriesPerEndpoint/4, 1)
	}
	c.MaxEntriesPerClient = min(c.MaxEntriesPerClient, MaxMaxEntries)
}

// MismatchError says that a destination is not an address of the name.
type MismatchError struct {
	Name string
	Dest netip.Addr
	// Addrs are the addresses the name is known to resolve to (sorted).
	Addrs []netip.Addr
	// NoAddress, when the name resolves to none, says why: NXDOMAIN, or
	// NODATA (the name exists, without A or AAAA records).
	NoAddress string
}

// Error says "DEST is not an address of NAME (resolves to A, B)", naming at
// most eight addresses.
func (e *MismatchError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s is not an address of %s (", e.Dest, e.Name)
	switch {
	case len(e.Addrs) > 0:
		b.WriteString("resolves to ")
		for i, a := range e.Addrs {
			if i == maxAddrsInMismatchMsg {
				fmt.Fprintf(&b, " and %d more", len(e.Addrs)-i)
				break
			}
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(a.String())
		}
	case e.NoAddress != "":
		b.WriteString("resolves to no address: " + e.NoAddress)
	default:
		b.WriteString("resolves to no address")
	}
	b.WriteByte(')')
	return b.String()
}

// LookupError says that the name's addresses could not be looked up, so the
// destination could not be checked.
type LookupError struct {
	Name string
	Err  error
}

// Error says "no address of NAME could be looked up: " and why.
func (e *LookupError) Error() string {
	return fmt.Sprintf("no address of %s could be looked up: %v", e.Name, e.Err)
}

// Unwrap returns the cause.
func (e *LookupError) Unwrap() error { return e.Err }

// ErrClosed is the cause of a LookupError after Close.
var ErrClosed = errors.New("the destination checker is closed")

// Stats is a snapshot of a Checker's counters.
type Stats struct {
	Checks         uint64 `json:"checks"`
	ObservedHits   uint64 `json:"observed_hits"`   // passed on an observed answer
	ResolvedHits   uint64 `json:"resolved_hits"`   // passed on the checker's own lookup
	Mismatches     uint64 `json:"mismatches"`      // destination not an address of the name
	LookupFailures uint64 `json:"lookup_failures"` // checks that failed for want of an answer
	Lookups        uint64 `json:"lookups"`         // lookups sent to the resolver
	Observed       uint64 `json:"observed"`        // DNS responses read for addresses
	ObservedNames  int    `json:"observed_names"`  // entries of observed answers
	ResolvedNames  int    `json:"resolved_names"`  // entries of own lookups
	Evicted        uint64 `json:"evicted"`         // entries evicted to stay within bounds
}

// Checker ties names to addresses; see the package documentation. Its
// methods are safe for concurrent use.
type Checker struct {
	cfg      Config
	now      func() time.Time
	epoch    time.Time
	observed *store // by endpoint and name
	resolved *store // by name, endpoint ""

	ctx    context.Context // cancelled by Close: ends lookups
	cancel context.CancelFunc
	wg     sync.WaitGroup

	callMu  sync.Mutex
	calls   map[string]*call // lookups in flight (running or waiting), by name
	callsBy map[string]int   // lookups in flight but those waiting beyond their share, by the endpoint that started them
	slots   slots
	closed  bool

	retransmit time.Duration // UDP retransmission interval

	stats struct {
		checks, observedHits, resolvedHits, mismatches, lookupFailures, lookups, observed atomic.Uint64
	}
}

// New returns a Checker. Close it to end its lookups.
func New(cfg Config) *Checker { return newChecker(cfg, time.Now) }

func newChecker(cfg Config, now func() time.Time) *Checker {
	cfg.setDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	return &Checker{
		cfg:        cfg,
		now:        now,
		epoch:      now(),
		observed:   newStore(cfg.MaxEntries, cfg.MaxEntriesPerEndpoint, cfg.MaxEntriesPerClient),
		resolved:   newStore(cfg.MaxEntries, cfg.MaxEntries, cfg.MaxEntries),
		ctx:        ctx,
		cancel:     cancel,
		calls:      make(map[string]*call),
		callsBy:    make(map[string]int),
		slots:      slots{heldBy: make(map[string]int), overShare: queue{by: make(map[string]int)}},
		retransmit: min(defaultRetransmit, cfg.LookupTimeout/2),
	}
}

// Close ends the lookups in flight (their checks fail) and waits for them.
// Checks after Close use what is known, and fail where a lookup is needed.
func (c *Checker) Close() {
	c.callMu.Lock()
	c.closed = true
	c.callMu.Unlock()
	c.cancel()
	c.wg.Wait()
}

// clock is the time since the checker started, in nanoseconds, read from
// the monotonic clock: wall-clock steps do not move it.
func (c *Checker) clock() int64 { return int64(c.now().Sub(c.epoch)) }

// until returns the clock reading at which an answer with ttl seconds,
// received at now, stops counting: its clamped TTL plus the grace.
func (c *Checker) until(now int64, ttl uint32) int64 {
	return now + int64(c.clampTTL(ttl)+c.cfg.Grace)
}

func (c *Checker) clampTTL(ttl uint32) time.Duration {
	return min(max(time.Duration(ttl)*time.Second, c.cfg.MinTTL), c.cfg.MaxTTL)
}

// Check returns nil if dest is an address name resolves to, as seen from
// GWLB endpoint endpoint: an answer relayed to that endpoint's clients
// says so, or the checker's own lookup does. A dest in 64:ff9b::/96 is
// also one when the IPv4 address it embeds is (DNS64 clients). Otherwise it returns a
// *MismatchError naming both, or a *LookupError when no answer could be
// had. It waits for a lookup no longer than ctx allows. On a cache hit it
// neither blocks on I/O nor allocates.
func (c *Checker) Check(ctx context.Context, endpoint, name string, dest netip.Addr) error {
	c.stats.checks.Add(1)
	dest = dest.Unmap()
	name = canonical(name)
	if a, ok := literal(name); ok {
		if literalIs(a, dest) {
			return nil
		}
		c.stats.mismatches.Add(1)
		return &MismatchError{Name: name, Dest: dest, Addrs: []netip.Addr{a.Unmap()}}
	}
	now := c.clock()
	if c.observedHas(endpoint, name, dest, now) {
		c.stats.observedHits.Add(1)
		return nil
	}
	switch st, failed := c.resolvedState(name, dest, now); st {
	case stateHit:
		c.stats.resolvedHits.Add(1)
		return nil
	case stateMismatch:
		return c.mismatch(endpoint, name, dest, now)
	case stateFailed:
		return c.failed(endpoint, name, dest, failed)
	}
	if err := c.lookup(ctx, endpoint, name); err != nil {
		return c.failed(endpoint, name, dest, err)
	}
	// The lookup's answer is in the store now (and an observed answer may
	// have arrived meanwhile).
	now = c.clock()
	if c.observedHas(endpoint, name, dest, now) {
		c.stats.observedHits.Add(1)
		return nil
	}
	if st, _ := c.resolvedState(name, dest, now); st == stateHit {
		c.stats.resolvedHits.Add(1)
		return nil
	}
	return c.mismatch(endpoint, name, dest, now)
}

// LookedUp reports whether dest is an address of name by what
// ForgetObserved leaves: name is that address, or a current answer of the
// checker's own lookups holds it. It looks nothing up, and counts nothing.
// The proxy asks it of a destination that passed Check: one it does not
// vouch for passed on an observed answer alone, which a reload that forgets
// them withdraws.
func (c *Checker) LookedUp(name string, dest netip.Addr) bool {
	dest = dest.Unmap()
	name = canonical(name)
	if a, ok := literal(name); ok {
		return literalIs(a, dest)
	}
	st, _ := c.resolvedState(name, dest, c.clock())
	return st == stateHit
}

// literal returns the address name is, if it is one (a Host of
// "192.0.2.1").
func literal(name string) (netip.Addr, bool) {
	if !looksLikeAddr(name) {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(name)
	return a, err == nil
}

// literalIs reports whether a name that is the address a names dest (an
// unmapped address).
func literalIs(a, dest netip.Addr) bool {
	// A zone names an interface of the sender's, never a destination; and
	// Unmap drops it, which made any "::ffff:D%anything" equal to D.
	v4, nat64 := nat64Embedded(dest)
	return a.Zone() == "" && (a.Unmap() == dest || nat64 && a.Unmap() == v4)
}

// looksLikeAddr reports whether name could be an IP address literal (a
// Host of "192.0.2.1" or "::1"): digits and dots only, or a colon.
func looksLikeAddr(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c == ':' {
			return true
		} else if c != '.' && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

func (c *Checker) observedHas(endpoint, name string, dest netip.Addr, now int64) bool {
	c.observed.mu.RLock()
	defer c.observed.mu.RUnlock()
	e := c.observed.get(key{endpoint, name})
	return e != nil && e.has(dest, now)
}

// What the checker's own lookups say about a destination.
const (
	stateLookup   = iota // nothing current: look the name up
	stateHit             // dest is an address of the name
	stateMismatch        // a current answer does not include dest
	stateFailed          // a lookup just failed: repeat its error
)

func (c *Checker) resolvedState(name string, dest netip.Addr, now int64) (int, error) {
	c.resolved.mu.RLock()
	defer c.resolved.mu.RUnlock()
	e := c.resolved.get(key{"", name})
	switch {
	case e == nil:
		return stateLookup, nil
	case e.has(dest, now):
		return stateHit, nil
	case e.fresh > now:
		if e.negative == "" && now-e.looked >= int64(c.cfg.Recheck) {
			return stateLookup, nil
		}
		return stateMismatch, nil
	case e.failedUntil > now:
		return stateFailed, e.failed
	}
	return stateLookup, nil
}

// failed returns the error of a check whose lookup failed with err: a
// mismatch if addresses of name are known all the same (an answer this
// endpoint's clients got, or an earlier lookup's, not yet expired), since
// dest is not among them; a LookupError otherwise.
func (c *Checker) failed(endpoint, name string, dest netip.Addr, err error) error {
	if errors.Is(err, errEndpointLookups) || errors.Is(err, errNoSlot) || errors.Is(err, errGaveUpWaiting) || errors.Is(err, errNoCheckWaits) ||
		errors.Is(err, ErrClosed) {
		// The resolver was not asked (or its answer cut off by Close): what
		// is known of the name is no verdict.
		c.stats.lookupFailures.Add(1)
		return &LookupError{Name: name, Err: err}
	}
	if me := c.known(endpoint, name, dest, c.clock()); len(me.Addrs) > 0 {
		c.stats.mismatches.Add(1)
		return me
	}
	c.stats.lookupFailures.Add(1)
	return &LookupError{Name: name, Err: err}
}

// mismatch returns the MismatchError for dest, naming every address known
// for name at now.
func (c *Checker) mismatch(endpoint, name string, dest netip.Addr, now int64) error {
	c.stats.mismatches.Add(1)
	return c.known(endpoint, name, dest, now)
}

// known returns a MismatchError for dest naming what is known of name at
// now: the addresses of answers to endpoint's clients and of lookups, or
// why there is none.
func (c *Checker) known(endpoint, name string, dest netip.Addr, now int64) *MismatchError {
	e := &MismatchError{Name: name, Dest: dest}
	collect := func(s *store, k key) {
		s.mu.RLock()
		defer s.mu.RUnlock()
		en := s.get(k)
		if en == nil {
			return
		}
		for _, a := range en.addrs {
			if a.until > now && !slices.Contains(e.Addrs, a.addr) {
				e.Addrs = append(e.Addrs, a.addr)
			}
		}
		if en.fresh > now && en.negative != "" {
			e.NoAddress = en.negative
		}
	}
	collect(c.observed, key{endpoint, name})
	collect(c.resolved, key{"", name})
	slices.SortFunc(e.Addrs, netip.Addr.Compare)
	return e
}

// Observe reads a DNS response relayed to a client behind GWLB endpoint
// endpoint (the proxy's DNSAnswer hook): the A and AAAA records it holds
// for the name asked, and for each alias on its CNAME chain, count for that
// endpoint's checks until their TTL and the grace have passed. Anything
// but a well-formed NOERROR response to a standard query is ignored:
// NOERROR in its whole rcode, the header's 4 bits and its OPT record's 8
// (a header's NOERROR with an OPT's BADVERS is a failed lookup).
// Observe does not keep msg. It names no client: the names it brings in
// count against the endpoint's bound only (see ObserveAt).
func (c *Checker) Observe(endpoint string, msg []byte) {
	c.ObserveAt(c.Generation(), endpoint, netip.Addr{}, msg)
}

// Generation returns the generation of the observed answers, which each
// ForgetObserved advances. The proxy reads it before it checks that the
// policy which let a DNS flow out is still in force, and hands it to
// ObserveAt with that flow's answer.
func (c *Checker) Generation() uint64 { return c.observed.gen.Load() }

// ObserveAt is Observe of an answer whose right to be observed was checked
// at generation gen (see Generation): if ForgetObserved has run since, the
// answer is dropped. Without it, a reload landing between the proxy's
// policy check and the store would forget the old answers and then take in
// one the old policy let a client's own server send, to vouch under the
// new policy for its TTL.
//
// client is who the answer was relayed to, as the proxy counts clients (an
// address, an IPv6 prefix): it claims the names of the answer, against its
// share of the endpoint's (Config.MaxEntriesPerClient), beyond which it
// gives back its own oldest claims; a name stays while any client claims
// it. The zero Addr names no client.
func (c *Checker) ObserveAt(gen uint64, endpoint string, client netip.Addr, msg []byte) {
	if len(msg) < 12 {
		return
	}
	r := responsePool.Get().(*response)
	defer responsePool.Put(r)
	if r.parse(msg) != nil || r.header.OpCode != 0 || r.rcode != uint16(dnsmessage.RCodeSuccess) ||
		r.question.Class != dnsmessage.ClassINET || r.naddrs == 0 {
		return
	}
	c.stats.observed.Add(1)
	r.bind()
	if r.nbound == 0 {
		return
	}
	var names [maxChain]string
	for i := range r.nbound {
		if n := r.bound[i].name; names[n] == "" {
			names[n] = canonicalName(&r.chain[n])
		}
	}
	now := c.clock()
	s := c.observed
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gen.Load() != gen || s.held {
		return // forgotten while it was read (see ObserveAt), or held (HoldObserved)
	}
	for n := range r.nchain {
		if names[n] == "" {
			continue
		}
		e := s.update(key{endpoint, names[n]}, client, now)
		for i := range r.nbound {
			if b := &r.bound[i]; b.name == n {
				e.add(b.addr, c.until(now, b.ttl), now)
			}
		}
	}
}

// ForgetObserved drops every observed answer, of every endpoint, and keeps
// the checker's own lookups. The appliance calls it when a new policy comes
// into force: answers relayed under the old one may come from a resolver the
// new one no longer lets clients ask (one a client runs itself), and kept,
// they would vouch for their names for up to MaxTTL and the grace. It
// advances Generation, so that an answer checked before it and stored after
// (ObserveAt) is dropped, and so that the proxy checks again the flows whose
// check passed on an answer it dropped (LookedUp). It ends a hold (HoldObserved).
func (c *Checker) ForgetObserved() {
	s := c.observed
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reset()
	s.held = false
	s.gen.Add(1)
}

// Stats returns a snapshot of the checker's counters.
func (c *Checker) Stats() Stats {
	st := Stats{
		Checks: c.stats.checks.Load(), ObservedHits: c.stats.observedHits.Load(),
		ResolvedHits: c.stats.resolvedHits.Load(), Mismatches: c.stats.mismatches.Load(),
		LookupFailures: c.stats.lookupFailures.Load(), Lookups: c.stats.lookups.Load(),
		Observed: c.stats.observed.Load(),
	}
	for _, s := range []*store{c.observed, c.resolved} {
		s.mu.RLock()
		if s == c.observed {
			st.ObservedNames = s.len()
		} else {
			st.ResolvedNames = s.len()
		}
		st.Evicted += s.evicted
		s.mu.RUnlock()
	}
	return st
}
