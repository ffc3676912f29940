package proxy

import (
	"container/list"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// A QUIC connection outlives its 5-tuple: a client that moves to a new
// source port (NAT rebinding, or active migration, RFC 9000 §9) goes on
// with short-header packets, under connection IDs it got in encrypted
// NEW_CONNECTION_ID frames, which nothing here can match to the ClientHello
// the connection was decided on. Decided as plain udp, on no name, that new
// flow would let a connection that a reload denied carry on, under any
// policy that lets udp reach its destination. So the QUIC connections a
// client address relayed are remembered by that address and destination:
// a new flow from it there that does not begin with an Initial, while the
// policy looks at names, is taken for a new path of one of them, and
// decided as it. Deny wins: if the policy in force denies any of them
// (its live quic flows, or those that ended, or were denied by a reload,
// within quicPathMemory: a few per destination, maxQUICEndedPerPath), the
// flow is denied as that one, whatever others it allows; else it is let
// through as an allowed one. Any allowed one covering the rest let one
// decoy Initial of another name, allowed by default, carry a connection a
// reload denied. Any first datagram counts, not only a short-header
// packet: a server ignores a datagram it cannot read, so a client could
// send some other one first and migrate behind it.
//
// A connection refused at its Initial, for whatever reason, is not
// remembered: it reached no server, so no path of it can follow, and
// remembering it denied the client's plain udp there, and every
// connection's new path, under a name refused on a shared CDN address.
// Only the flow's own address's connections decide it: a neighbour's in
// the same share (an IPv6 prefix) must neither cover a denied connection
// nor deny another's flows; the share bounds the memory only.
//
// What this cannot tell apart is documented in policy.md (UDP flows and
// their limits): a denied connection denies an allowed one's new paths to
// the same address and port, the memory is bounded and lasts 10 minutes,
// and a server's preferred_address moves the connection to an address no
// flow went to.

// quicPathMemory is how long a client's QUIC connection to a destination
// is remembered from when it ended, or was last denied (a reload, or a
// new path of it refused), whatever its held flow (udpdenied.go) sends
// meanwhile: refreshing from those would keep no attacker out (one who
// waits, silent, 10 minutes gets the same), and cost the held flow's
// packet path a lookup under the memory's lock.
const quicPathMemory = 10 * time.Minute

// maxQUICPaths bounds the destinations of ended or denied QUIC
// connections remembered, and maxQUICPathsPerClient one client's share of
// them (a 64th, as for the hold of denied flows: udpdenied.go says why).
// A client past its share forgets its own oldest, not another client's;
// past the bound, the oldest of all is forgotten. Only relayed connections
// are remembered, so a client forgets one only by relaying 256 others to
// other destinations (each its own host socket, within the UDP share).
// Live flows are remembered while they last, bounded by the UDP share.
const (
	maxQUICPaths          = 1 << 14
	maxQUICPathsPerClient = maxQUICPaths / deniedUDPShares
)

// quicPathKey is a client address behind a GWLB endpoint, and a
// destination: one address's memories alone decide its flows. The
// endpoint too: the same address in two VPCs (overlapping ranges, every
// default VPC's 172.31.0.0/16) is two hosts, whose memories never
// collide (a host's connection denied another's plain udp, or its allowed
// one covered the other's).
type quicPathKey struct {
	endpoint uint64
	client   netip.Addr
	dest     netip.AddrPort
}

// quicPath is what is known of one client address's QUIC flows to one
// destination.
type quicPath struct {
	key   quicPathKey
	share shareKey   // the client's, as the bounds count it
	live  []liveQUIC // its allowed quic flows relayed now
	// Its connections that ended, or were denied, lately, oldest first:
	// one entry per connection as a decision tells them apart (sameConn),
	// at most maxQUICEndedPerPath.
	ended []endedQUIC
	at    time.Time     // when the newest of ended came
	elem  *list.Element // in quicPaths.order while ended is not empty
	celem *list.Element // in its client's list while ended is not empty
}

// endedQUIC is one relayed connection of a quicPath that ended, or was
// denied: by the policy deniedBy (nil: it ended allowed, idle or its
// client gone), with why and rule for the record.
type endedQUIC struct {
	s         udpSubject
	deniedBy  *policy.Policy
	why, rule string
	at        time.Time
}

// maxQUICEndedPerPath bounds a quicPath's ended connections: a page's
// HTTP/3 connections to one CDN address are a few names at once.
const maxQUICEndedPerPath = 4

// sameConn reports whether a and b are one connection as far as a
// decision can tell them apart.
func sameConn(a, b udpSubject) bool {
	return a.client == b.client && a.proto == b.proto && a.name == b.name && a.ech == b.ech && a.unread == b.unread
}

type liveQUIC struct {
	f *udpFlow
	s udpSubject
}

// quicPaths is the memory of every client's QUIC flows.
type quicPaths struct {
	mu      sync.Mutex
	m       map[quicPathKey]*quicPath
	order   list.List               // the ended memories, oldest first
	clients map[shareKey]*list.List // each client's, oldest first
	memory  time.Duration           // quicPathMemory, unless a test sets it
}

func (q *quicPaths) lasts() time.Duration {
	if q.memory > 0 {
		return q.memory
	}
	return quicPathMemory
}

func (f *udpFlow) quicPathKey() quicPathKey {
	return quicPathKey{endpoint: f.info.Endpoint, client: f.info.Client.Addr(), dest: f.info.Dest}
}

// opened remembers f, an allowed quic flow whose relay starts, or one
// found to carry a QUIC connection unread (smuggled). A flow is live once,
// however often it is opened: a new path whose guardInitials a reload to a
// policy that looks at no names cleared is opened again at its next
// Initial, and closed takes one entry out, so a second would stay, alive
// for ever, past every bound. Opened again, it is remembered as what it
// now is.
func (q *quicPaths) opened(f *udpFlow) {
	s := f.subject()
	q.mu.Lock()
	defer q.mu.Unlock()
	e := q.entry(f.quicPathKey(), clientShareKey(f.info))
	for i := range e.live {
		if e.live[i].f == f {
			e.live[i].s = s
			return
		}
	}
	e.live = append(e.live, liveQUIC{f: f, s: s})
}

// closed forgets f as live, remembering how it ended.
func (q *quicPaths) closed(f *udpFlow) {
	s := f.subject()
	q.mu.Lock()
	defer q.mu.Unlock()
	e := q.m[f.quicPathKey()]
	if e == nil {
		return
	}
	for i := range e.live {
		if e.live[i].f == f {
			e.live = append(e.live[:i], e.live[i+1:]...)
			break
		}
	}
	if f.mayBe != nil && f.deniedBy != nil && f.rec.SNI == "" {
		// A path ended for a connection it may be (mayBeDenied, which
		// clears its name): those are remembered as themselves. Kept, it
		// was a connection of no name, denied, which denied the client's
		// next paths there under a policy that allows all it could be
		// (review r14s26 F3).
		return
	}
	q.end(e, s, f.deniedBy, f.deniedWhy, f.rec.Rule, f.p.deniesNow)
}

// denied remembers that a new path of the connection s, to k's
// destination, was denied under pol: for why, by rule. Only a connection
// remembered there (one that was relayed) is: a connection refused at its
// Initial is not.
func (q *quicPaths) denied(k quicPathKey, s udpSubject, pol *policy.Policy, why, rule string, denies func(udpSubject) bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	e := q.m[k]
	if e == nil || !slices.ContainsFunc(e.ended, func(m endedQUIC) bool { return sameConn(m.s, s) }) {
		return
	}
	q.end(e, s, pol, why, rule, denies)
}

func (q *quicPaths) entry(k quicPathKey, share shareKey) *quicPath {
	if q.m == nil {
		q.m = make(map[quicPathKey]*quicPath)
		q.clients = make(map[shareKey]*list.List)
	}
	e := q.m[k]
	if e == nil {
		e = &quicPath{key: k, share: share}
		q.m[k] = e
	}
	return e
}

// end makes s, what the flow was decided on, the newest of e's ended
// connections (in place of what was known of that connection), and e the
// newest memory, within the bounds. Past maxQUICEndedPerPath the oldest
// connection the policy in force allows (denies, nil: none does) goes
// first: four decoy Initials of other names that ended allowed pushed a
// denied connection out, which then migrated through (review r12s26 F3).
// Under mu.
func (q *quicPaths) end(e *quicPath, s udpSubject, pol *policy.Policy, why, rule string, denies func(udpSubject) bool) {
	now := time.Now()
	e.ended = slices.DeleteFunc(e.ended, func(m endedQUIC) bool { return sameConn(m.s, s) })
	e.ended = append(e.ended, endedQUIC{s: s, deniedBy: pol, why: why, rule: rule, at: now})
	if len(e.ended) > maxQUICEndedPerPath {
		i := slices.IndexFunc(e.ended, func(m endedQUIC) bool { return m.deniedBy == nil && (denies == nil || !denies(m.s)) })
		e.ended = slices.Delete(e.ended, max(i, 0), max(i, 0)+1)
	}
	q.unlist(e)
	e.at = now
	cl := q.clients[e.share]
	if cl == nil {
		cl = new(list.List)
		q.clients[e.share] = cl
	}
	e.elem, e.celem = q.order.PushBack(e), cl.PushBack(e)
	for front := q.order.Front(); front != nil && now.Sub(front.Value.(*quicPath).at) > q.lasts(); front = q.order.Front() {
		q.drop(front.Value.(*quicPath))
	}
	if cl.Len() > maxQUICPathsPerClient {
		q.drop(cl.Front().Value.(*quicPath))
	}
	if q.order.Len() > maxQUICPaths {
		q.drop(q.order.Front().Value.(*quicPath))
	}
}

// unlist takes e out of the lists of ended memories. Under mu.
func (q *quicPaths) unlist(e *quicPath) {
	if e.elem == nil {
		return
	}
	q.order.Remove(e.elem)
	if cl := q.clients[e.share]; cl != nil {
		cl.Remove(e.celem)
		if cl.Len() == 0 {
			delete(q.clients, e.share)
		}
	}
	e.elem, e.celem = nil, nil
}

// drop forgets e's ended memory, and e itself once no live flow is left.
// Under mu.
func (q *quicPaths) drop(e *quicPath) {
	q.unlist(e)
	e.ended = nil
	if len(e.live) == 0 {
		delete(q.m, e.key)
	}
}

// pathHistory is a copy of what is known of a client's QUIC flows to a
// destination, taken to decide on outside the lock.
type pathHistory struct {
	live  []udpSubject
	ended []endedQUIC // oldest first
}

// history returns what is known for k; ok is false when nothing is.
func (q *quicPaths) history(k quicPathKey) (h pathHistory, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	e := q.m[k]
	if e == nil {
		return h, false
	}
	now := time.Now()
	e.ended = slices.DeleteFunc(e.ended, func(m endedQUIC) bool { return now.Sub(m.at) > q.lasts() })
	if len(e.ended) == 0 {
		q.drop(e)
		if q.m[k] == nil {
			return h, false
		}
	}
	for _, l := range e.live {
		h.live = append(h.live, l.s)
	}
	h.ended = slices.Clone(e.ended)
	return h, len(h.live) > 0 || len(h.ended) > 0
}

// len returns how many client and destination pairs are remembered.
func (q *quicPaths) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.m)
}
