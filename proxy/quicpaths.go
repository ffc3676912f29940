package proxy

import (
	"container/list"
	"fmt"
	"net/netip"
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
// let through, as quic with that connection's name, only if one of the client's live quic flows
// there is still allowed by the policy in force; otherwise decided as the
// last of its QUIC flows there that ended, or was denied, within
// quicPathMemory. Any first datagram counts, not only a short-header
// packet: a server ignores a datagram it cannot read, so a client could
// send some other one first and migrate behind it.
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

// maxQUICPaths bounds the ended or denied QUIC flows remembered, and
// maxQUICPathsPerClient one client's share of them (a 64th, as for the
// hold of denied flows: udpdenied.go says why). A client past its share
// forgets its own oldest, not another client's; past the bound, the
// oldest of all is forgotten. Live flows are remembered while they last,
// bounded by the UDP share.
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
	// The last one that ended, or was denied, when ended is set: by the
	// policy deniedBy (nil: it ended allowed, idle or its client gone),
	// with why and rule for the record.
	ended    bool
	last     udpSubject
	deniedBy *policy.Policy
	why      string
	rule     string
	at       time.Time
	elem     *list.Element // in quicPaths.order while ended
	celem    *list.Element // in its client's list while ended
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
	q.end(e, s, f.deniedBy, f.deniedWhy, f.rec.Rule)
}

// denied remembers a QUIC flow (or a new path of one) denied under pol
// before it was relayed.
func (q *quicPaths) denied(f *udpFlow, pol *policy.Policy, why string) {
	s := f.subject()
	q.mu.Lock()
	defer q.mu.Unlock()
	q.end(q.entry(f.quicPathKey()), s, pol, why, f.rec.Rule)
}

func (q *quicPaths) entry(k quicPathKey) *quicPath {
	if q.m == nil {
		q.m = make(map[quicPathKey]*quicPath)
		q.clients = make(map[shareKey]*list.List)
	}
	e := q.m[k]
	if e == nil {
		e = &quicPath{key: k}
		q.m[k] = e
	}
	return e
}

// end makes s, what the flow was decided on, the last of e's ended flows,
// the newest memory, within the bounds. Under mu.
func (q *quicPaths) end(e *quicPath, s udpSubject, pol *policy.Policy, why, rule string) {
	now := time.Now()
	q.forget(e)
	e.ended, e.last, e.deniedBy, e.why, e.rule, e.at = true, s, pol, why, rule, now
	cl := q.clients[e.key.share]
	if cl == nil {
		cl = list.New()
		q.clients[e.key.share] = cl
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

// forget takes e's ended memory out of the lists. Under mu.
func (q *quicPaths) forget(e *quicPath) {
	if !e.ended {
		return
	}
	q.order.Remove(e.elem)
	if cl := q.clients[e.key.share]; cl != nil {
		cl.Remove(e.celem)
		if cl.Len() == 0 {
			delete(q.clients, e.key.share)
		}
	}
	e.ended, e.elem, e.celem, e.deniedBy, e.last = false, nil, nil, nil, udpSubject{}
}

// drop forgets e's ended memory, and e itself once no live flow is left.
// Under mu.
func (q *quicPaths) drop(e *quicPath) {
	q.forget(e)
	if len(e.live) == 0 {
		delete(q.m, e.key)
	}
}

// pathHistory is a copy of what is known of a client's QUIC flows to a
// destination, taken to decide on outside the lock.
type pathHistory struct {
	live     []udpSubject
	ended    bool
	last     udpSubject
	deniedBy *policy.Policy
	why      string
	rule     string
}

// history returns what is known for k; ok is false when nothing is.
func (q *quicPaths) history(k quicPathKey) (h pathHistory, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	e := q.m[k]
	if e == nil {
		return h, false
	}
	if e.ended && time.Since(e.at) > q.lasts() {
		q.drop(e)
		if q.m[k] == nil {
			return h, false
		}
	}
	for _, l := range e.live {
		h.live = append(h.live, l.s)
	}
	h.ended, h.last, h.deniedBy, h.why, h.rule = e.ended, e.last, e.deniedBy, e.why, e.rule
	return h, len(h.live) > 0 || h.ended
}

// len returns how many client and destination pairs are remembered.
func (q *quicPaths) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.m)
}

// followQUIC decides a new flow of f's client that did not begin with an
// Initial, while the policy looks at names, as the QUIC connection it may
// be a new path of (see above). It reports false when the client has no
// QUIC flow to remember there: the flow is then decided as udp, as any
// other. Otherwise the flow is relayed (first, in the pooled buf, first)
// or refused, and buf is given back.
func (f *udpFlow) followQUIC(first []byte, buf *[]byte) bool {
	if !f.pol.NamesMatter() {
		return false // the flow is decided as its connection was: on addresses
	}
	h, ok := f.p.udp.quicPaths.history(f.quicPathKey())
	if !ok {
		return false
	}
	// Decided on the flow's own client address and endpoint: the memory
	// is per share (IPv6 per prefix), but a rule's client_cidrs match one
	// address, and a neighbour's connection must not decide this one.
	own := func(s udpSubject) udpSubject {
		s.client, s.endpoint = f.info.Client.Addr(), f.rec.Endpoint
		return s
	}
	var (
		deny *udpSubject
		d    policy.Decision
		why  string
	)
	for i := range h.live {
		// redecide may bind its vouch anew (reloadDestCheck): what it
		// leaves in s is what the new flow carries.
		s := own(h.live[i])
		dd, w := f.p.redecide(f.pol, &s, nil)
		if w == "" {
			f.followed(&s, dd, "an allowed QUIC flow of the client's to this destination is open")
			f.relay([][]byte{first}, buf)
			return true
		}
		if deny == nil {
			deny, d, why = &s, dd, w
		}
	}
	if deny == nil {
		s := own(h.last)
		deny = &s
		if h.deniedBy == f.pol && s == h.last { // denied under the policy in force, for this address: no reload since
			d.Rule, why = h.rule, h.why
		} else if d, why = f.p.redecide(f.pol, &s, nil); why == "" {
			f.followed(&s, d, "the client's last QUIC flow to this destination ended allowed")
			f.relay([][]byte{first}, buf)
			return true
		}
	}
	datagramBufPool.Put(buf)
	f.setQUIC(deny)
	f.rec.Rule, f.rec.Action, f.rec.Policy = d.Rule, policy.Deny.String(), f.pol.ID()
	f.refuseNamedAs(fmt.Sprintf("taken for a new path of the client's QUIC connection to this destination (no Initial first: connection migration, RFC 9000 §9), which is denied: %s", why), why)
	return true
}

// setQUIC makes f's record, and so what a reload decides it on (subject),
// that of the QUIC connection s: its destination check's vouch too, without
// which a reload that forgets the observed answer the check passed on
// would take the new path's check for one that holds (destVouch's zero
// value), let it go on, and remember it so for the connection's next paths.
func (f *udpFlow) setQUIC(s *udpSubject) {
	f.rec.Kind, f.rec.SNI, f.rec.ECH, f.rec.DestCheck = "quic", s.name, s.ech, s.destCheck
	f.quicUnread, f.vouch = s.unread, s.vouch
}

// followed lets f through as a new path of the QUIC connection s, allowed
// by d under the policy in force.
func (f *udpFlow) followed(s *udpSubject, d policy.Decision, because string) {
	f.setQUIC(s)
	f.rec.Rule, f.rec.Action, f.rec.Policy = d.Rule, d.Action.String(), d.Policy
	f.rec.Error = "relayed as a new path of the client's QUIC connection to this destination (no Initial first: connection migration, RFC 9000 §9): " + because
	f.guardInitials = true // an Initial here starts a connection nobody decided on
}
