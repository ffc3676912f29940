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
// policy that lets udp reach its destination. So a client's QUIC flows are
// remembered by client (as the UDP share counts it) and destination: a new
// flow from that client to that destination that does not begin with an
// Initial, while the policy looks at names, is taken for a new path of that
// client's QUIC connection there, and decided as it, on its own client
// address (the share groups a prefix; client_cidrs match one address):
// let through, as quic with that connection's name, if the policy in
// force still allows any of the client's connections there: its live quic
// flows, or those that ended, or were denied, within quicPathMemory (a few
// per destination: maxQUICEndedPerPath); denied only when all are denied.
// Any first datagram counts, not only a short-header packet: a server
// ignores a datagram it cannot read, so a client could send some other
// one first and migrate behind it. A QUIC flow refused because QUIC
// cannot be bumped is not remembered: it reached no server, and the policy
// denies QUIC to its name, not the destination.
//
// What this cannot tell apart is documented in policy.md (UDP flows and
// their limits): one allowed connection covers another to the same address
// and port, the memory is per client address and bounded, and a server's
// preferred_address moves the connection to an address no flow went to.

// quicPathMemory is how long a client's ended or denied QUIC flow to a
// destination is remembered. Its held flow (udpdenied.go) lasts until it
// idles for --idle-timeout; a connection whose two ends stay silent for
// longer than this comes back as udp.
const quicPathMemory = 10 * time.Minute

// maxQUICPaths bounds the destinations of ended or denied QUIC flows
// remembered, and maxQUICPathsPerClient one client's share of them (a
// 64th, as for the hold of denied flows: udpdenied.go says why). A client
// past its share forgets its own oldest, not another client's; past the
// bound, the oldest of all is forgotten. Either way, what holds only
// refusals at an Initial goes first, and a connection that was relayed
// last: a refusal costs its client one datagram and no server, so 256 of
// them to other ports would otherwise forget, on purpose, the connection a
// reload denied, which then moves on as udp. Live flows are remembered
// while they last, bounded by the UDP share.
const (
	maxQUICPaths          = 1 << 14
	maxQUICPathsPerClient = maxQUICPaths / deniedUDPShares
)

type quicPathKey struct {
	share shareKey
	dest  netip.AddrPort
}

// quicPath is what is known of one client's QUIC flows to one destination.
type quicPath struct {
	key  quicPathKey
	live []liveQUIC // its allowed quic flows relayed now
	// Its connections that ended, or were denied, lately, oldest first:
	// one entry per connection as a decision tells them apart (sameConn),
	// at most maxQUICEndedPerPath. A set, not the last one only: a
	// denial of another name at the same address and port must not
	// override an allowed connection that resumes there.
	ended []endedQUIC
	at    time.Time     // when the newest of ended came
	class int           // of the lists elem and celem are in: classOf
	elem  *list.Element // in quicPaths.order while ended is not empty
	celem *list.Element // in its client's lists while ended is not empty
}

// The classes of ended memories, in the order they are forgotten when a
// bound is reached: those of refusals at an Initial alone, then those with
// a connection that was relayed.
const (
	refusedOnly = iota
	withRelayed
	pathClasses
)

// classOf returns e's class.
func (e *quicPath) classOf() int {
	if slices.ContainsFunc(e.ended, func(m endedQUIC) bool { return m.relayed }) {
		return withRelayed
	}
	return refusedOnly
}

// endedQUIC is one connection of a quicPath that ended, or was denied:
// by the policy deniedBy (nil: it ended allowed, idle or its client
// gone), with why and rule for the record.
type endedQUIC struct {
	s         udpSubject
	deniedBy  *policy.Policy
	why, rule string
	at        time.Time
	relayed   bool // the connection was relayed (not only refused at its Initial)
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
	order   [pathClasses]list.List               // the ended memories, oldest first, by class
	clients map[shareKey]*[pathClasses]list.List // each client's, oldest first, by class
	memory  time.Duration                        // quicPathMemory, unless a test sets it
}

func (q *quicPaths) lasts() time.Duration {
	if q.memory > 0 {
		return q.memory
	}
	return quicPathMemory
}

func (f *udpFlow) quicPathKey() quicPathKey {
	return quicPathKey{share: clientShareKey(f.info), dest: f.info.Dest}
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
	e := q.entry(f.quicPathKey())
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
	q.end(e, s, f.deniedBy, f.deniedWhy, f.rec.Rule, true)
}

// denied remembers a QUIC flow (or a new path of one) denied under pol
// before it was relayed.
func (q *quicPaths) denied(f *udpFlow, pol *policy.Policy, why string) {
	s := f.subject()
	q.mu.Lock()
	defer q.mu.Unlock()
	q.end(q.entry(f.quicPathKey()), s, pol, why, f.rec.Rule, false)
}

func (q *quicPaths) entry(k quicPathKey) *quicPath {
	if q.m == nil {
		q.m = make(map[quicPathKey]*quicPath)
		q.clients = make(map[shareKey]*[pathClasses]list.List)
	}
	e := q.m[k]
	if e == nil {
		e = &quicPath{key: k}
		q.m[k] = e
	}
	return e
}

// end makes s, what the flow was decided on, the newest of e's ended
// connections (in place of what was known of that connection, which stays
// relayed if it was), and e the newest memory, within the bounds. Under mu.
func (q *quicPaths) end(e *quicPath, s udpSubject, pol *policy.Policy, why, rule string, relayed bool) {
	now := time.Now()
	e.ended = slices.DeleteFunc(e.ended, func(m endedQUIC) bool {
		relayed = relayed || sameConn(m.s, s) && m.relayed
		return sameConn(m.s, s)
	})
	e.ended = append(e.ended, endedQUIC{s: s, deniedBy: pol, why: why, rule: rule, at: now, relayed: relayed})
	if len(e.ended) > maxQUICEndedPerPath {
		i := slices.IndexFunc(e.ended, func(m endedQUIC) bool { return !m.relayed })
		if i < 0 {
			i = 0
		}
		e.ended = slices.Delete(e.ended, i, i+1)
	}
	q.unlist(e)
	e.at, e.class = now, e.classOf()
	cl := q.clients[e.key.share]
	if cl == nil {
		cl = new([pathClasses]list.List)
		q.clients[e.key.share] = cl
	}
	e.elem, e.celem = q.order[e.class].PushBack(e), cl[e.class].PushBack(e)
	for c := range q.order {
		for front := q.order[c].Front(); front != nil && now.Sub(front.Value.(*quicPath).at) > q.lasts(); front = q.order[c].Front() {
			q.drop(front.Value.(*quicPath))
		}
	}
	if cl[refusedOnly].Len()+cl[withRelayed].Len() > maxQUICPathsPerClient {
		q.drop(oldestOf(cl))
	}
	if q.order[refusedOnly].Len()+q.order[withRelayed].Len() > maxQUICPaths {
		q.drop(oldestOf(&q.order))
	}
}

// oldestOf returns the memory to forget first of lists: the oldest of the
// first class that has one. Not called on empty lists.
func oldestOf(lists *[pathClasses]list.List) *quicPath {
	for c := range lists {
		if front := lists[c].Front(); front != nil {
			return front.Value.(*quicPath)
		}
	}
	panic("quicPaths: no memory to forget")
}

// unlist takes e out of the lists of ended memories. Under mu.
func (q *quicPaths) unlist(e *quicPath) {
	if e.elem == nil {
		return
	}
	q.order[e.class].Remove(e.elem)
	if cl := q.clients[e.key.share]; cl != nil {
		cl[e.class].Remove(e.celem)
		if cl[refusedOnly].Len()+cl[withRelayed].Len() == 0 {
			delete(q.clients, e.key.share)
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
