package netstack

import (
	"bytes"
	"sync"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/monoclock"
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
// demultiplexer: the wait looks, at growing intervals, for at most
// maxSynWait. A RST the stack does not take (out of its window) leaves the
// connection live; the SYN then goes in after maxSynWait and is answered as
// on a live connection, with an ACK (RFC 5961 4.2); a RST whose checksums
// fail, which the stack drops, starts no wait. One SYN per flow waits, and
// a waiting SYN whose flow leaves the table stops waiting (dropped), so
// that a client's SYNs cost at most about one goroutine per flow it holds
// in the table even while its flows are evicted and made again; another
// SYN of the flow's meanwhile does not go in (synWaits). At most
// maxSynWaiters SYNs wait in all: past that a SYN goes in at once, as
// before the wait existed. A waiting SYN was shown to the capture tap as
// it came: it is taken in, only later.

// maxSynWait bounds how long a SYN waits for the stack to let go of the
// reset connection on its 4-tuple: far longer than the stack takes to
// handle a RST, even on a loaded host, and far shorter than the second a
// client waits before it sends its SYN again.
const maxSynWait = 20 * time.Millisecond

// maxSynWaiters bounds the SYNs that wait at once, over all stacks: each
// holds a goroutine and a copy of its SYN (up to a jumbo frame), so 4,096
// cost at most some 50 MiB, while a reconnect right after a RST is rare
// enough that far fewer wait at any time.
const maxSynWaiters = 4096

// firstSynPoll is the first interval at which a waiting SYN looks whether
// the stack has let the old connection go; each later one is twice the
// last, up to lastSynPoll.
const (
	firstSynPoll = 50 * time.Microsecond
	lastSynPoll  = 2 * time.Millisecond
)

// synWait is a flow's SYN waiting for the stack to let go of the reset
// connection on its 4-tuple.
type synWait struct {
	mu   sync.Mutex
	done bool   // its goroutine has taken pkt: a later SYN goes its own way
	pkt  []byte // the client's latest SYN, a copy
	seq  uint32 // its ISN
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
	limit := s.synWaitCap
	if limit == 0 {
		limit = maxSynWaiters
	}
	if s.synWaiters.Add(1) > limit {
		s.synWaiters.Add(-1)
		return false, DropNone
	}
	w := &synWait{pkt: bytes.Clone(pkt), seq: p.seq} // the reader's buffer is reused
	if !flow.synWait.CompareAndSwap(nil, w) {
		s.synWaiters.Add(-1)
		return false, DropNone
	}
	go s.deliverSynLater(st, flow, w, p.IPv6)
	return true, DropNone
}

// deliverSynLater hands flow's waiting SYN w to st once it no longer holds
// the connection on the SYN's 4-tuple, or after maxSynWait. A SYN whose
// flow left the table meanwhile (evicted: a reset half-open flow is
// evictable at once) is dropped: taken in, it would reach the handler with
// no GWLB attachment or flow cookie and its SYN-ACK would have no flow to
// go out under; the client sends it again in a second, and makes a new
// flow.
func (s *Server) deliverSynLater(st *endpointStack, flow *Flow, w *synWait, ipv6 bool) {
	deadline := monoclock.Now() + int64(maxSynWait)
	for poll := firstSynPoll; s.holdsTCP(&flow.key) && !flow.removed.Load() && monoclock.Now() < deadline; poll = min(2*poll, lastSynPoll) {
		time.Sleep(poll)
	}
	w.mu.Lock()
	w.done = true
	flow.synWait.Store(nil)
	w.mu.Unlock()
	s.synWaiters.Add(-1)
	if flow.removed.Load() {
		s.stats.drop(DropSynWaitAbandoned)
		return
	}
	st.mu.RLock()
	if !st.closed { // closed: the client sends its SYN again to a new stack
		st.link.inject(w.pkt, ipv6)
	}
	st.mu.RUnlock()
}
