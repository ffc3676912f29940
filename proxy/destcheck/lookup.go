package destcheck

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// ednsSize is the UDP payload size the checker's queries offer (EDNS0):
// the size DNS Flag Day 2020 settled on, which avoids IP fragmentation.
const ednsSize = 1232

// errNoResolver is the cause of every lookup without a configured resolver.
var errNoResolver = errors.New("no resolver is configured")

// errEndpointLookups fails a lookup that waited in vain for its turn
// beyond its endpoint's share: the resolver was never asked.
var errEndpointLookups = errors.New("too many lookups in flight for this GWLB endpoint")

// errNoSlot fails a lookup that waited for a slot in vain: the resolver
// was never asked, so nothing is learned of the name and nothing cached.
var errNoSlot = errors.New("no lookup slot came free")

// errGaveUpWaiting fails a check whose own context ended while its lookup
// still waited for a slot: the resolver was not asked for it either.
var errGaveUpWaiting = errors.New("gave up waiting for a lookup slot")

// errNoCheckWaits ends a lookup waiting beyond its endpoint's share once
// every check that wanted it has given up: nobody would read its answer,
// and a flood of fresh names would otherwise leave a lookup per name
// waiting for the whole slot wait.
var errNoCheckWaits = errors.New("no check waits for the lookup any more")

// slotWait bounds a lookup's wait for a slot: LookupTimeout and a margin,
// since a slot held by a lookup the resolver never answers comes free a
// few ms after its LookupTimeout (the read's timeout, the other query, the
// store), and a lookup queued right behind it should get it.
func (c *Checker) slotWait() time.Duration {
	return c.cfg.LookupTimeout + min(c.cfg.LookupTimeout/4, 250*time.Millisecond)
}

// call is one lookup in flight; its waiters share its outcome.
type call struct {
	done chan struct{}
	err  error

	// Under callMu (and fixed once done is closed):
	endpoint  string        // whose share it counts in: the starter's, or a joiner's (adopt)
	granted   bool          // it holds a slot
	deadline  time.Time     // when its lookup gives up: LookupTimeout from its grant
	overShare bool          // it waits in slots.overShare
	checks    int           // checks waiting for it while it waits for a slot
	joinedBy  []joiner      // other endpoints whose checks wait for it beyond its share, at theirs
	waitUntil time.Time     // when its wait for a slot ends: slotWait from its queuing or hand-over
	slot      chan struct{} // closed when granted or dropped, if it had to wait; set once
	link                    // in slots.waiting or slots.overShare
}

// slots are the MaxLookups slots the lookups run in. Under callMu.
type slots struct {
	running int // slots held
	// waiting are the calls within their endpoint's share that found no
	// slot free, oldest first; only while none is free.
	waiting queue
	// overShare are the calls of endpoints at their share, oldest first,
	// each to start once more than three shares are free (or its endpoint
	// falls below its share), at most MaxLookups of an endpoint (counted
	// by endpoint). They do not count in callsBy.
	overShare queue
	heldBy    map[string]int // slots held, by endpoint
	// held are the calls holding slots, in the order of their grants, so
	// of their deadlines: the first is the one to give up first.
	held queue
}

// lookup looks name up for a check from endpoint unless a lookup of it is
// already in flight, and waits for that lookup or for ctx. The lookup runs
// on its own, bounded by LookupTimeout once it has a slot (and its wait
// for one by slotWait), whatever happens to ctx: other checks may be
// waiting for it, and its answer is cached for the next ones.
//
// An endpoint with an eighth of MaxLookups lookups in flight (its share,
// running or waiting within it) starts another only while more than three
// shares of slots are free, and takes one of those; otherwise that lookup
// waits in a queue of its own until so many are free or its endpoint falls
// below its share (joining a lookup in flight is always allowed). So one
// endpoint's clients, sending fresh names under an allowed wildcard whose
// servers never answer, hold at most MaxLookups less three shares, and two
// endpoints' a share more: the other endpoints' checks find slots free
// instead of waiting for them until they fail. And a burst of new names
// from one endpoint waits for slots a few lookups' time instead of failing.
func (c *Checker) lookup(ctx context.Context, endpoint, name string) error {
	c.callMu.Lock()
	cl := c.calls[name]
	if cl == nil {
		if c.closed {
			c.callMu.Unlock()
			return ErrClosed
		}
		cl = &call{done: make(chan struct{}), endpoint: endpoint}
		switch free := c.cfg.MaxLookups - c.slots.running; {
		case c.callsBy[endpoint] >= c.share() && free <= 3*c.share():
			if queued := c.slots.overShare.by[endpoint]; queued >= c.cfg.MaxLookups {
				// Each queued name holds a call and a goroutine for up to
				// slotWait: a flood of fresh names is refused beyond a
				// queue as long as the slots, uncached, as before there
				// was a queue.
				running := c.callsBy[endpoint]
				c.callMu.Unlock()
				return fmt.Errorf("%w: %d of its own and %d more waiting, %d of %d slots free", errEndpointLookups,
					running, queued, free, c.cfg.MaxLookups)
			}
			cl.slot, cl.waitUntil = make(chan struct{}), time.Now().Add(c.slotWait())
			cl.overShare = true
			c.slots.overShare.push(cl)
		case free > 0:
			c.grant(cl)
			c.callsBy[endpoint]++
		default:
			cl.slot, cl.waitUntil = make(chan struct{}), time.Now().Add(c.slotWait())
			c.slots.waiting.push(cl)
			c.callsBy[endpoint]++
		}
		c.calls[name] = cl
		c.wg.Add(1)
		go c.run(name, cl)
	} else if cl.in == &c.slots.overShare && cl.endpoint != endpoint { // one whose wait just ended has failed
		if c.callsBy[endpoint] < c.share() {
			c.adopt(cl, endpoint)
		} else {
			cl.join(endpoint) // promote adopts it
		}
	}
	cl.checks++
	c.callMu.Unlock()
	select {
	case <-cl.done:
		if cl.endpoint != endpoint && errors.Is(cl.err, errEndpointLookups) {
			// It waited beyond another endpoint's share, joined while this
			// one was at its own: say so of this one, never of the other.
			c.callMu.Lock()
			defer c.callMu.Unlock()
			return fmt.Errorf("%w: %d of its own, %d of %d slots free after waiting %s", errEndpointLookups,
				c.callsBy[endpoint], c.cfg.MaxLookups-c.slots.running, c.cfg.MaxLookups, c.slotWait())
		}
		return cl.err
	case <-ctx.Done():
	}
	c.callMu.Lock()
	defer c.callMu.Unlock()
	if cl.checks--; cl.overShare && cl.endpoint != endpoint {
		cl.unjoin(endpoint) // promote must not hand it to an endpoint none of whose checks wants it
	}
	if cl.granted || cl.slot == nil {
		return fmt.Errorf("gave up waiting for the lookup: %w", context.Cause(ctx))
	}
	if cl.checks == 0 && cl.overShare && c.slots.leave(cl) {
		close(cl.slot)        // not granted: run ends it
		delete(c.calls, name) // a check of name from now on starts anew
	}
	return fmt.Errorf("%w: %w", errGaveUpWaiting, context.Cause(ctx))
}

// share is the lookups an endpoint may have in flight whatever the others
// do.
func (c *Checker) share() int { return max(c.cfg.MaxLookups/8, 1) }

// grant gives cl a slot. Under callMu.
func (c *Checker) grant(cl *call) {
	c.slots.running++
	c.slots.heldBy[cl.endpoint]++
	cl.granted = true
	// From the grant, not from when run gets to it: a lookup queued behind
	// this one waits slotWait, whose margin must not absorb scheduling delays.
	cl.deadline = time.Now().Add(c.cfg.LookupTimeout)
	c.slots.held.push(cl)
	if cl.slot != nil {
		close(cl.slot)
	}
}

// testHookBeforeResolve, if set, runs before each lookup asks the resolver
// (a test standing in for a scheduling delay).
var testHookBeforeResolve func(name string)

// run performs one lookup, stores its outcome and hands it to the waiters.
func (c *Checker) run(name string, cl *call) {
	defer c.wg.Done()
	qname, err := c.question(name)
	if err == nil { // a name that cannot be asked needs no slot
		err = c.awaitSlot(cl)
	}
	var res result
	if err == nil {
		if testHookBeforeResolve != nil {
			testHookBeforeResolve(name)
		}
		c.callMu.Lock()
		deadline := cl.deadline
		c.callMu.Unlock()
		ctx, cancel := context.WithDeadline(c.ctx, deadline)
		res, err = c.resolve(ctx, qname)
		cancel()
	}
	if err != nil && c.ctx.Err() != nil {
		err = ErrClosed
	}
	if !errors.Is(err, errNoSlot) && !errors.Is(err, errEndpointLookups) && !errors.Is(err, errNoCheckWaits) && !errors.Is(err, ErrClosed) {
		c.store(name, res, err)
	}
	c.callMu.Lock()
	counted := !cl.overShare // it counts in callsBy
	c.slots.leave(cl)
	if c.calls[name] == cl {
		delete(c.calls, name)
	}
	if cl.granted {
		c.slots.held.remove(cl)
		if c.slots.heldBy[cl.endpoint]--; c.slots.heldBy[cl.endpoint] <= 0 {
			delete(c.slots.heldBy, cl.endpoint)
		}
	}
	if counted {
		if c.callsBy[cl.endpoint]--; c.callsBy[cl.endpoint] <= 0 {
			delete(c.callsBy, cl.endpoint)
		}
	}
	if cl.granted {
		c.release()
	}
	if counted {
		c.promote(cl.endpoint)
	}
	c.callMu.Unlock()
	cl.err = err
	close(cl.done)
}

// awaitSlot returns once cl holds a slot, or fails after slotWait without
// one (or when the checker closes, or no check waits for it any more).
// Waiting within its share, it waits on while a lookup holding a slot is
// past its LookupTimeout: that slot comes free as soon as the lookup's
// goroutine runs, which slotWait's margin cannot promise on a loaded
// machine (a stall of the process longer than the margin expires both at
// once).
func (c *Checker) awaitSlot(cl *call) error {
	if cl.slot == nil { // it had one at once
		return nil
	}
	t := time.NewTimer(c.slotWait())
	defer t.Stop()
	var overdue <-chan struct{} // the done of a holder past its deadline
	for {
		select {
		case <-cl.slot:
			c.callMu.Lock()
			defer c.callMu.Unlock()
			if !cl.granted {
				return errNoCheckWaits
			}
			return nil
		case <-t.C:
		case <-overdue:
		case <-c.ctx.Done():
			return ErrClosed
		}
		c.callMu.Lock()
		// A lookup handed to another endpoint (adopt) waits a whole
		// slotWait from then, as that endpoint's fresh name would.
		left := time.Until(cl.waitUntil)
		if cl.granted {
			break
		}
		if left > 0 {
			c.callMu.Unlock()
			overdue = nil
			t.Reset(left)
			continue
		}
		h := c.slots.held.front()
		if cl.in != &c.slots.waiting || h == nil || time.Now().Before(h.deadline) {
			break
		}
		overdue = h.done
		c.callMu.Unlock()
	}
	defer c.callMu.Unlock()
	if cl.granted { // a slot that came with the timer is as good
		return nil
	}
	c.slots.leave(cl)
	if cl.overShare {
		return fmt.Errorf("%w: %d of its own, %d of %d slots free after waiting %s", errEndpointLookups,
			c.callsBy[cl.endpoint], c.cfg.MaxLookups-c.slots.running, c.cfg.MaxLookups, c.slotWait())
	}
	return fmt.Errorf("%w within %s: %d lookups running", errNoSlot, c.slotWait(), c.cfg.MaxLookups)
}

// release lets go of a slot: to a call waiting within its endpoint's
// share, if one waits, that of the endpoint holding the fewest slots
// (oldest first among those), or else to calls beyond their share while
// more than three shares are free. Fewest first, not oldest: while
// endpoints at their share keep every slot held, an endpoint holding none
// would otherwise wait behind all their calls queued ahead of its own,
// about half a LookupTimeout, and its own waiting calls count against its
// share meanwhile. Under callMu.
func (c *Checker) release() {
	c.slots.running--
	if next := c.slots.waiting.front(); next != nil {
		for cl := range c.slots.waiting.all() {
			if c.slots.heldBy[cl.endpoint] < c.slots.heldBy[next.endpoint] {
				next = cl
			}
		}
		c.slots.waiting.remove(next)
		c.grant(next)
		return
	}
	for c.slots.overShare.len() > 0 && c.cfg.MaxLookups-c.slots.running > 3*c.share() {
		c.admit(c.slots.overShare.front())
	}
}

// result is what a lookup found: addresses with their TTLs, or none and
// why (negative).
type result struct {
	addrs    []boundAddr
	negative string // NXDOMAIN or NODATA, when there is no address
}

// store records a lookup's outcome in the resolved store. A failure keeps
// what an earlier lookup found: its addresses count until they expire.
func (c *Checker) store(name string, res result, err error) {
	now := c.clock()
	s := c.resolved
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.update(key{"", name}, netip.Addr{}, now)
	if err != nil {
		e.failed, e.failedUntil = err, now+int64(c.cfg.FailureTTL)
		return
	}
	e.looked, e.failed, e.failedUntil, e.negative = now, nil, 0, res.negative
	if len(res.addrs) == 0 {
		e.fresh = now + int64(c.cfg.NegativeTTL)
		return
	}
	ttl := res.addrs[0].ttl
	for _, a := range res.addrs {
		ttl = min(ttl, a.ttl)
		e.add(a.addr, c.until(now, a.ttl), now)
	}
	e.fresh = now + int64(c.clampTTL(ttl))
}

// question returns the name to ask the resolver about, or why there is
// none.
func (c *Checker) question(name string) (dnsmessage.Name, error) {
	if !c.cfg.Resolver.IsValid() {
		return dnsmessage.Name{}, errNoResolver
	}
	qname, err := dnsmessage.NewName(name + ".")
	if err != nil || name == "" {
		return dnsmessage.Name{}, fmt.Errorf("%q is not a name that can be looked up", name)
	}
	return qname, nil
}

// resolve asks the resolver for qname's A and AAAA records at once.
func (c *Checker) resolve(ctx context.Context, qname dnsmessage.Name) (result, error) {
	c.stats.lookups.Add(1)
	var a, aaaa typeResult
	var wg sync.WaitGroup
	wg.Go(func() { aaaa = c.query(ctx, qname, dnsmessage.TypeAAAA) })
	a = c.query(ctx, qname, dnsmessage.TypeA)
	wg.Wait()
	res := result{addrs: append(a.addrs, aaaa.addrs...)}
	switch {
	case len(res.addrs) > 0:
		// One type may have failed while the other answered: its addresses
		// are still the name's.
		return res, nil
	case a.err != nil:
		return result{}, a.err
	case aaaa.err != nil:
		return result{}, aaaa.err
	case a.rcode == dnsmessage.RCodeNameError || aaaa.rcode == dnsmessage.RCodeNameError:
		res.negative = "NXDOMAIN"
	default:
		res.negative = "NODATA"
	}
	return res, nil
}

// typeResult is the answer to one query.
type typeResult struct {
	addrs []boundAddr // of the question's name (through its CNAME chain)
	rcode dnsmessage.RCode
	err   error
}

// query asks the resolver one question: over UDP, and again over TCP if
// the answer comes back truncated.
func (c *Checker) query(ctx context.Context, qname dnsmessage.Name, qtype dnsmessage.Type) typeResult {
	id := uint16(rand.Uint32())
	q, err := buildQuery(id, qname, qtype)
	if err != nil {
		return typeResult{err: err}
	}
	r := responsePool.Get().(*response)
	defer responsePool.Put(r)
	buf := make([]byte, 4096)
	if err := c.exchangeUDP(ctx, q, id, qname, qtype, buf, r); err != nil {
		return typeResult{err: err}
	}
	if r.header.Truncated {
		if err := c.exchangeTCP(ctx, q, id, qname, qtype, r); err != nil {
			return typeResult{err: fmt.Errorf("the answer over UDP was truncated, and over TCP: %w", err)}
		}
	}
	// The whole rcode, as ObserveAt reads it: the query carries EDNS, and
	// a header's NOERROR with an OPT's BADVERS is a failed lookup.
	rcode := dnsmessage.RCode(r.rcode)
	switch rcode {
	case dnsmessage.RCodeSuccess, dnsmessage.RCodeNameError:
	default:
		return typeResult{rcode: rcode, err: fmt.Errorf("resolver %s answered %s for %s", c.cfg.Resolver, rcodeName(rcode), qtype)}
	}
	res := typeResult{rcode: rcode}
	r.bind()
	for i := range r.nbound {
		if b := r.bound[i]; b.name == 0 {
			res.addrs = append(res.addrs, b)
		}
	}
	return res
}

func buildQuery(id uint16, qname dnsmessage.Name, qtype dnsmessage.Type) ([]byte, error) {
	b := dnsmessage.NewBuilder(make([]byte, 0, 64+qname.Length), dnsmessage.Header{ID: id, RecursionDesired: true})
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(dnsmessage.Question{Name: qname, Type: qtype, Class: dnsmessage.ClassINET}); err != nil {
		return nil, fmt.Errorf("building the query: %w", err)
	}
	var opt dnsmessage.ResourceHeader
	if err := opt.SetEDNS0(ednsSize, dnsmessage.RCodeSuccess, false); err != nil {
		return nil, err
	}
	if err := b.StartAdditionals(); err != nil {
		return nil, err
	}
	if err := b.OPTResource(opt, dnsmessage.OPTResource{}); err != nil {
		return nil, err
	}
	return b.Finish()
}

// matches reports whether r answers the query id asked: the same ID and the
// same question. Anything else arriving on the socket is not the answer
// (a late answer to a retransmission, or a forgery) and is ignored.
func matches(r *response, id uint16, qname dnsmessage.Name, qtype dnsmessage.Type) bool {
	return r.header.ID == id && r.question.Type == qtype && r.question.Class == dnsmessage.ClassINET &&
		nameEqual(&r.question.Name, &qname)
}

// exchangeUDP sends q from a connected socket (the kernel drops datagrams
// from any other address) and reads until the matching answer arrives,
// sending q again every retransmit interval, until ctx is done.
func (c *Checker) exchangeUDP(ctx context.Context, q []byte, id uint16, qname dnsmessage.Name, qtype dnsmessage.Type, buf []byte, r *response) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "udp", c.cfg.Resolver.String())
	if err != nil {
		return fmt.Errorf("resolver %s: %w", c.cfg.Resolver, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	deadline, _ := ctx.Deadline() // run always sets one
	for {
		if _, err := conn.Write(q); err != nil {
			return c.ioError(ctx, err)
		}
		wait := time.Now().Add(c.retransmit)
		if !deadline.IsZero() && wait.After(deadline) {
			wait = deadline
		}
		if ctx.Err() != nil {
			return c.ioError(ctx, ctx.Err())
		}
		_ = conn.SetReadDeadline(wait)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() && ctx.Err() == nil && time.Now().Before(deadline) {
					break // send it again
				}
				return c.ioError(ctx, err)
			}
			if r.parse(buf[:n]) == nil && matches(r, id, qname, qtype) {
				return nil
			}
		}
	}
}

// exchangeTCP asks q over TCP: each message is preceded by its length in
// two bytes (RFC 1035 4.2.2).
func (c *Checker) exchangeTCP(ctx context.Context, q []byte, id uint16, qname dnsmessage.Name, qtype dnsmessage.Type, r *response) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", c.cfg.Resolver.String())
	if err != nil {
		return c.ioError(ctx, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	if _, err := conn.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(q))), q...)); err != nil {
		return c.ioError(ctx, err)
	}
	var hdr [2]byte
	if _, err := io.ReadFull(conn, hdr[:]); err != nil {
		return c.ioError(ctx, err)
	}
	msg := make([]byte, binary.BigEndian.Uint16(hdr[:]))
	if _, err := io.ReadFull(conn, msg); err != nil {
		return c.ioError(ctx, err)
	}
	if err := r.parse(msg); err != nil {
		return fmt.Errorf("resolver %s over TCP: %w", c.cfg.Resolver, err)
	}
	if !matches(r, id, qname, qtype) {
		return fmt.Errorf("resolver %s over TCP answered another question", c.cfg.Resolver)
	}
	return nil
}

// ioError words a failed exchange: a timeout names the resolver and the
// time it had.
func (c *Checker) ioError(ctx context.Context, err error) error {
	if c.ctx.Err() != nil {
		return ErrClosed
	}
	var ne net.Error
	if ctx.Err() != nil || errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("resolver %s did not answer within %s", c.cfg.Resolver, c.cfg.LookupTimeout)
	}
	return fmt.Errorf("resolver %s: %w", c.cfg.Resolver, err)
}

var rcodeNames = [...]string{"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED"}

func rcodeName(rc dnsmessage.RCode) string {
	switch {
	case int(rc) < len(rcodeNames):
		return rcodeNames[rc]
	case rc == 16:
		return "BADVERS"
	case rc == 23:
		return "BADCOOKIE"
	}
	return fmt.Sprintf("RCODE%d", rc)
}

// ParseResolver reads a resolver address: an IP address, with an optional
// port (default 53); IPv6 with a port in brackets.
func ParseResolver(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		if ap.Port() == 0 {
			return netip.AddrPort{}, fmt.Errorf("%q: port 0", s)
		}
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q: want an IP address, optionally with a port (192.0.2.53, 192.0.2.53:5353, [2001:db8::53]:53)", s)
	}
	return netip.AddrPortFrom(a.Unmap(), 53), nil
}
