package netstack

import (
	"bytes"
	"sync"
	"time"
)

// A client that resets its connection and at once opens a new one from the
// same port (a close with SO_LINGER 0, then a connect bound to the same
// source port, as pools and some clients do: tens of microseconds apart)
// must get its new connection, as from Linux, which takes the RST before
// the SYN comes (RFC 9293: the reset connection is CLOSED, and the port
// listens). gVisor hands a connection's segments to a goroutine of its own:
// a SYN that comes before that goroutine has taken the RST is queued on
// the old connection, and when it closes, the SYN is offered to the other
// connections of the stack only, never to the forwarder that makes new
// ones, and answered with a RST (tcp.Endpoint's
// tryDeliverSegmentFromClosedEndpoint). The client's connect was refused
// (a Linux client through the appliance: 35 of 60 such connects).
//
// So a bare SYN that comes within maxSynWait of a RST of the client's on
// its flow, while the stack still holds the flow's connection, waits for
// the stack to let it go, then goes in. (Not "a RST since the flow's last
// sign of life", Flow.tcp's tcpReset: the stack's FIN, written by a proxy
// that closed its end before the stack had the RST, crosses the RST and
// clears that.) gVisor says nothing when a connection leaves its
// demultiplexer: the wait is looked at, by one goroutine for all
// (synpoll.go), for at most maxSynWait. A RST the stack does not take (out of its window) leaves the
// connection live; the SYN then goes in after maxSynWait and is answered as
// on a live connection, with an ACK (RFC 5961 4.2); a RST whose checksums
// fail, which the stack drops, starts no wait. One SYN per flow waits;
// another SYN of the flow's meanwhile does not go in (synWaits). A waiting
// SYN whose flow leaves the table stops waiting (dropped), but only at its
// next look, up to lastSynPoll later: a client whose flows are evicted and
// made again keeps more SYNs waiting than it holds flows (113 to 126 for a
// 96-flow client). So each client (clientKeyOf: an IPv4 address, or an
// IPv6 prefix) has a share of the waiting SYNs, maxSynWaitersPerClient,
// counted on its client (clientshares.go), which it keeps while any of its
// SYNs waits, its flows gone or not; and at most maxSynWaiters wait in
// all. Past either, a SYN goes in at once, as before the wait existed:
// with the global bound alone, one client holding many connections and
// sending on each a RST the stack ignores (out of its window: the SYN
// waits the whole maxSynWait) and a SYN held every place, and other
// clients' reconnects right after their RSTs were refused again (8 to 12
// of 20, the bound lowered to 64). A client's SYNs so cost at most
// maxSynWaitersPerClient copies, however its flows churn. A
// waiting SYN was shown to the capture tap as it came: it is taken in,
// only later.

// maxSynWait bounds how long a SYN waits for the stack to let go of the
// reset connection on its 4-tuple: far longer than the stack takes to
// handle a RST, even on a loaded host, and far shorter than the second a
// client waits before it sends its SYN again.
const maxSynWait = 20 * time.Millisecond

// maxSynWaiters bounds the SYNs that wait at once, over all stacks: each
// holds a copy of its SYN (up to a jumbo frame) and, with a capture on,
// at most maxHeldBytesBehindSyn of the segments behind it (in copies of up
// to 8 segments, each allocated in Go's size classes: 29 KiB for a jumbo
// SYN and 7 segments of 2,305 bytes), so 4,096 cost at most some 130 MiB
// (a client's 64, 1.9 MiB), while a
// reconnect right after a RST is rare enough that far fewer wait at any
// time.
const maxSynWaiters = 4096

// maxSynWaitersPerClient is a client's share of the waiting SYNs: far more
// than the connections a client resets and opens again from the same ports
// within maxSynWait, and a 64th of maxSynWaiters, so that a client whose
// RSTs the stack ignores, each making its SYN wait the whole maxSynWait,
// leaves the others their waits.
const maxSynWaitersPerClient = 64

// lastSynPoll is the longest time between two looks at a waiting SYN
// (synPollEvery).
const lastSynPoll = 2 * time.Millisecond

// synWait is a flow's SYN waiting for the stack to let go of the reset
// connection on its 4-tuple.
type synWait struct {
	mu   sync.Mutex
	done bool   // its goroutine has taken pkt: a later SYN goes its own way
	pkt  []byte // the client's latest SYN, a copy
	seq  uint32 // its ISN
	held []heldSegment
	// heldBytes is the bytes of held's copies.
	heldBytes int
}

// heldSegment is a client's segment of the flow held behind its waiting
// SYN, while a capture is on (holdBehindSyn), as the tap is to be shown it.
type heldSegment struct {
	pkt      []byte // the inner packet, a copy
	p        Packet
	endpoint uint64
	cookie   uint32
}

// maxHeldBehindSyn and maxHeldBytesBehindSyn bound the segments held
// behind a waiting SYN: what a client sends between its SYN and the
// stack's answer is a few segments (a Fast Open's or a decoy's); more are
// dropped (syn_waiting), as they would be shown before the stack has
// taken the client's RST: a client resends what it sent on a live
// connection. The bytes bound keeps a client's waits from holding 8 jumbo
// frames each (4.6 MiB for its 64, 330 MiB for all).
const (
	maxHeldBehindSyn      = 8
	maxHeldBytesBehindSyn = 16 << 10
)

// holdBehindSyn holds the client's segment p, pkt (inner packet, cut to
// its length; not a SYN, a RST or a fragment) of flow, whose SYN waits,
// to be shown to the tap and go in after the SYN's wait; it reports
// whether it did. Shown now, data there could be a decoy (the client's RST
// taken, the stack drops it) or the stream's (a RST the stack ignored,
// the connection live), which only the stack tells apart, once it has
// taken the RST: the wait's end (deliverSyn) decides. full says it
// could not: the bound is reached, and the segment is to be dropped.
// Neither, the wait is over (its held segments went in as it ended, under
// w.mu): the segment goes its way.
func (s *Server) holdBehindSyn(flow *Flow, h *Header, p *Packet, pkt []byte) (held, full bool) {
	w := flow.synWait.Load()
	if w == nil {
		return false, false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return false, false
	}
	if len(w.held) >= maxHeldBehindSyn || w.heldBytes+len(pkt) > maxHeldBytesBehindSyn {
		return false, true
	}
	w.heldBytes += len(pkt)
	w.held = append(w.held, heldSegment{pkt: bytes.Clone(pkt), p: *p, endpoint: h.Endpoint, cookie: h.FlowCookie})
	return true, false
}

// synWaits reports whether the client's bare SYN p, pkt (inner packet, cut
// to its length), of flow on stack st must wait for the stack to let go of
// a reset connection on its 4-tuple, and if so has it wait and go in
// later; now is the SYN's time. While one of the flow's SYNs waits, another
// does not go in: a copy of it (the same ISN: a duplicate on the way, or a
// client repeating it) is dropped, as the waiting one answers for it, and
// one with another ISN takes the waiting one's place, as the client's
// socket knows only its latest; either is counted as reason. Taken in at
// once, it found the old connection and was answered with a RST, which
// refuses a client's connect. Call it with st.mu read-locked.
func (s *Server) synWaits(st *endpointStack, flow *Flow, p *Packet, pkt []byte, now int64) (waits bool, reason DropReason) {
	if w := flow.synWait.Load(); w != nil {
		w.mu.Lock()
		defer w.mu.Unlock()
		if !w.done {
			if w.seq != p.seq {
				w.pkt, w.seq = append(w.pkt[:0], pkt...), p.seq
			}
			return true, DropSynWaiting
		}
	}
	if now-flow.clientRst.Load() > int64(maxSynWait) || !s.holdsTCP(&flow.key) {
		return false, DropNone
	}
	cl := flow.owner
	if cl.synWaits.Add(1) > maxSynWaitersPerClient {
		cl.synWaitEnd()
		return false, DropNone
	}
	limit := s.synWaitCap
	if limit == 0 {
		limit = maxSynWaiters
	}
	if s.synWaiters.Add(1) > limit {
		s.synWaiters.Add(-1)
		cl.synWaitEnd()
		return false, DropNone
	}
	// A flow removed meanwhile may have had its client dropped, and a wait
	// counted on that would be in no share: the removal is marked before
	// clientShares.give reads synWaits, so either give sees this wait's
	// count and keeps the client, or this sees the removal.
	w := &synWait{pkt: bytes.Clone(pkt), seq: p.seq} // the reader's buffer is reused
	if flow.removed.Load() || !flow.synWait.CompareAndSwap(nil, w) {
		s.synWaiters.Add(-1)
		cl.synWaitEnd()
		return false, DropNone
	}
	s.synPoll.add(s, pendingSyn{st: st, flow: flow, w: w, ipv6: p.IPv6, deadline: now + int64(maxSynWait)})
	return true, DropNone
}

// deliverSyn hands flow's waiting SYN w to st: it no longer holds the
// connection on the SYN's 4-tuple, or maxSynWait has passed (synPoller).
// A SYN whose flow left the table meanwhile (evicted: a reset half-open
// flow is evictable at once) is dropped: taken in, it would reach the
// handler with no GWLB attachment or flow cookie and its SYN-ACK would
// have no flow to go out under; the client sends it again in a second, and
// makes a new flow.
func (s *Server) deliverSyn(st *endpointStack, flow *Flow, w *synWait, ipv6 bool) {
	// st.mu before w.mu, as deliver takes them. The held segments go in
	// under w.mu: one that comes meanwhile waits for them (holdBehindSyn),
	// rather than reach the stack, and the tap, before them.
	st.mu.RLock()
	defer st.mu.RUnlock()
	w.mu.Lock()
	defer w.mu.Unlock()
	// Cleared last: until then a segment finds the wait and waits on w.mu.
	defer flow.synWait.Store(nil)
	w.done = true
	s.synWaiters.Add(-1)
	flow.owner.synWaitEnd()
	if flow.removed.Load() {
		for range 1 + len(w.held) {
			s.stats.drop(DropSynWaitAbandoned)
		}
		return
	}
	if st.closed { // the client sends its SYN again to a new stack
		return
	}
	// Decided before the SYN goes in: the connection it makes would be
	// the one a look finds.
	for i := range w.held {
		s.tapHeld(flow, &w.held[i])
	}
	st.link.inject(w.pkt, ipv6)
	for _, seg := range w.held {
		st.link.inject(seg.pkt, ipv6)
	}
}

// synWaitEnd gives back a waiting SYN's place in cl's share, and drops cl
// if that was its last and it holds no flow (clientShares.give kept it).
func (cl *client) synWaitEnd() {
	if cl.synWaits.Add(-1) > 0 {
		return
	}
	s := cl.sh
	s.mu.Lock()
	if cl.flows <= 0 && cl.synWaits.Load() == 0 && s.clients[cl.key] == cl {
		delete(s.clients, cl.key)
	}
	s.mu.Unlock()
}
