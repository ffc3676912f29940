package netstack

import (
	"cmp"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/gwlbproxy/gwlbproxy/internal/clientkey"
)

// Reclaiming memory. Memory pressure refuses new flows to the clients that
// hold many, but admission does not take back what admitted flows hold: a
// client that grew its connections' buffers by moving bytes, and then holds
// them (out-of-order bytes past a hole it never fills, a zero window, a
// destination of its own that stops reading), pins several MiB a
// connection, and a trickle defeats the write-stall bound. So while memory
// is critical the server resets, every reclaimEvery, up to reclaimBatch
// connections of the client whose connections may hold the most bytes,
// largest buffers first (newest first among equals), for as long as that
// client may hold more than reclaimFloor, sixteen new connections' worth.
//
// The measure is bytes, not connections: an attacker spread over several
// client keys (addresses, IPv6 /80s), at most 16 connections each, each
// grown to a 4 MiB buffer, holds far more than a NAT'd host with hundreds
// of new ones, and counted by connections it was never touched while the
// busy host was reset. What a connection may hold is its receive buffer
// (three quarters of it out of order) plus its send buffer, the sizes the
// stack grants it: moderation grows them with use and never shrinks them,
// and each is an atomic load; what an endpoint actually queues has no
// count gVisor offers without the endpoint's lock. To those it adds what
// the handler says it holds for the connection outside the stack
// (AddHeld): the bumping proxy's requests waiting on an origin, up to a
// hundred HTTP/2 streams a connection, each a goroutine, a request and a
// header list, can make a few connections with small buffers hold more
// than many with grown ones, and weighed by buffers alone their client
// was never reset while honest ones were.
//
// The connections are those the handler accepted and has not closed
// (Conn), listed per client as the flow table counts shares (endpoint and
// address, an IPv6 prefix): Accept and Close each take one shard lock, and
// nothing is done per packet. The sizes are read only while memory is
// critical, a walk of every list each reclaimEvery.

const (
	// reclaimEvery is how often the connections of the biggest holder are
	// reset while memory is critical; memwatch reads the level as often.
	reclaimEvery = 250 * time.Millisecond
	// reclaimBatch bounds the connections reset at a time: a few ticks
	// bring a client with thousands down, and memwatch sees each batch's
	// effect before the next when the level is about to leave critical.
	reclaimBatch = 64
	// reclaimFloor is what a client's connections may hold and never be
	// reset for: CriticalMemoryClientFlows new connections, each with its
	// two initialTCPBuffer buffers (8 MiB). A client with a few ordinary
	// connections is never reset, however heavy its neighbours.
	reclaimFloor = CriticalMemoryClientFlows * 2 * initialTCPBuffer
)

// ErrMemoryReclaimed is the error a Conn's reads and writes return once
// the server has reset it to reclaim memory.
var ErrMemoryReclaimed = errors.New("reset by the appliance: memory critical, and its client's connections held the most")

// liveConns is the accepted connections of each client, oldest first.
type liveConns struct {
	shards [flowShards]liveShard
}

type liveShard struct {
	mu      sync.Mutex
	clients map[clientKey]*liveClient
}

// liveClient is one client's accepted connections, a list linked through
// Conn.prev and Conn.next.
type liveClient struct {
	key        clientKey
	n          int
	head, tail *Conn
}

// add counts c, just accepted, as k's newest connection.
func (l *liveConns) add(c *Conn, k clientKey) {
	s := &l.shards[clientShardOf(&k)]
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.clients == nil {
		s.clients = make(map[clientKey]*liveClient)
	}
	lc := s.clients[k]
	if lc == nil {
		lc = &liveClient{key: k}
		s.clients[k] = lc
	}
	c.live, c.liveOf = s, lc
	c.prev = lc.tail
	if lc.tail != nil {
		lc.tail.next = c
	} else {
		lc.head = c
	}
	lc.tail = c
	lc.n++
}

// remove stops counting c; it may have been removed already.
func (s *liveShard) remove(c *Conn) {
	s.mu.Lock()
	s.removeLocked(c)
	s.mu.Unlock()
}

func (s *liveShard) removeLocked(c *Conn) {
	lc := c.liveOf
	if lc == nil {
		return
	}
	if c.prev != nil {
		c.prev.next = c.next
	} else {
		lc.head = c.next
	}
	if c.next != nil {
		c.next.prev = c.prev
	} else {
		lc.tail = c.prev
	}
	c.liveOf, c.prev, c.next = nil, nil, nil
	if lc.n--; lc.n == 0 {
		delete(s.clients, lc.key)
	}
}

// weight is what c may hold: its receive and send buffers, and what its
// handler holds for it (AddHeld) past heldUnweighed; nothing once its
// endpoint is no longer connected (peerConnected).
func (c *Conn) weight() int64 {
	if !c.peerConnected() {
		return 0
	}
	o := c.ep.SocketOptions()
	return o.GetReceiveBufferSize() + o.GetSendBufferSize() + max(c.held.Load()-heldUnweighed, 0)
}

// peerConnected reports whether c's endpoint is still connected (an
// atomic load). One its client reset (or that timed out) is not: it
// stays listed until its handler closes it, which for a session winding
// down its requests takes a while, still charged with them (AddHeld).
// The reclaim neither weighs nor takes nor marks it: resetting it frees
// nothing its handler is not freeing already, and marked, its records
// would say the appliance reset a connection its client had ended.
func (c *Conn) peerConnected() bool {
	switch tcp.EndpointState(c.ep.State()) {
	case tcp.StateEstablished, tcp.StateFinWait1, tcp.StateFinWait2, tcp.StateTimeWait,
		tcp.StateCloseWait, tcp.StateLastAck, tcp.StateClosing:
		return true
	}
	return false
}

// heldUnweighed is what a handler may hold for a connection (AddHeld) and
// the reclaim not weigh: a connection in ordinary use holds a request or
// two that way (an HTTP/1 request waiting for its answer, about 23 KB with
// a browser's head), and a client with sixteen of them is left alone, as
// one with sixteen new connections is (reclaimFloor).
const heldUnweighed = 64 << 10

// AddHeld tells the reclaim that the handler holds delta more bytes for c
// (fewer, when negative) outside the stack: requests it took from the
// client and has not answered yet (an HTTP/2 connection's streams waiting
// on an origin, each a goroutine, a request and its header list), which
// the client can make the most of its connection's cost while its stack
// buffers stay small. The reclaim weighs a connection by its buffers and
// this, so a client that holds much that way is reset as one with grown
// buffers is. A handler adds what it takes and takes back what it adds;
// it is an atomic add, for a handler to call as often as requests come
// and go, from any goroutine.
func (c *Conn) AddHeld(delta int64) { c.held.Add(delta) }

// weightOf is the sum of lc's connections' weights; its shard is locked.
func (lc *liveClient) weightOf() int64 {
	var w int64
	for c := lc.head; c != nil; c = c.next {
		w += c.weight()
	}
	return w
}

// takeHeaviest finds the client whose connections may hold the most and,
// if that is more than keep bytes, takes up to batch of its connections,
// largest first and newest first among equals, out of the list while it
// still holds more than keep, and returns them with the client.
func (l *liveConns) takeHeaviest(keep int64, batch int) (clientKey, []*Conn) {
	var top *liveClient
	var topShard *liveShard
	most := keep
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		for _, lc := range s.clients {
			if w := lc.weightOf(); w > most {
				top, topShard, most = lc, s, w
			}
		}
		s.mu.Unlock()
	}
	if top == nil {
		return clientKey{}, nil
	}
	type weighed struct {
		c *Conn
		w int64
	}
	topShard.mu.Lock()
	defer topShard.mu.Unlock()
	if top.n == 0 { // its last connection closed since the walk
		return clientKey{}, nil
	}
	// Weighed again under the lock: connections come and go, and buffers
	// grow, between the walk and now.
	all := make([]weighed, 0, top.n)
	var total int64
	for c := top.tail; c != nil; c = c.prev {
		w := c.weight()
		all = append(all, weighed{c, w})
		total += w
	}
	slices.SortStableFunc(all, func(a, b weighed) int { return cmp.Compare(b.w, a.w) })
	var taken []*Conn
	for _, x := range all {
		if total <= keep || len(taken) == batch {
			break
		}
		if x.w == 0 && !x.c.peerConnected() {
			continue // its client ended it: its handler closes it
		}
		topShard.removeLocked(x.c)
		taken = append(taken, x.c)
		total -= x.w
	}
	return top.key, taken
}

// SetReclaim says whether critical memory resets connections (reclaim):
// on unless the caller knows what made memory critical is nothing the
// stack's buffers hold (the kernel's TCP memory, host wide: its own
// sockets, other tenants'), where resetting the heaviest client's
// connections would free nothing of it and hurt a client that did no harm.
func (s *Server) SetReclaim(on bool) { s.reclaimOff.Store(!on) }

// SetMemoryPressure sets how short of memory the appliance is; new flows
// are admitted by it (MemoryPressure) from the next packet on, and while
// it is MemoryCritical the connections of the client whose connections may
// hold the most bytes are reset down to reclaimFloor (see liveConns).
func (s *Server) SetMemoryPressure(p MemoryPressure) {
	s.flows.setPressure(p)
	if p == MemoryCritical && s.reclaiming.CompareAndSwap(false, true) {
		go s.reclaimWhileCritical()
	}
}

// reclaimWhileCritical resets connections every reclaimEvery until memory
// is no longer critical or the server closes. A round walks every live
// connection (takeHeaviest): with hundreds of thousands that takes tens of
// milliseconds, so the next round waits at least four times as long as
// the last took, and the walk keeps to a fifth of a core at most.
func (s *Server) reclaimWhileCritical() {
	t := time.NewTimer(reclaimEvery)
	defer t.Stop()
	for {
		if s.pressure() != MemoryCritical {
			s.reclaiming.Store(false)
			// Set critical again between the load and the store, the
			// setter found the flag set and started nothing.
			if s.pressure() != MemoryCritical || !s.reclaiming.CompareAndSwap(false, true) {
				return
			}
		}
		wait := reclaimEvery
		if !s.reclaimOff.Load() {
			began := time.Now()
			s.reclaim()
			wait = max(wait, 4*time.Since(began))
		}
		t.Reset(wait)
		select {
		case <-s.done:
			return
		case <-t.C:
		}
	}
}

func (s *Server) pressure() MemoryPressure { return MemoryPressure(s.flows.pressure.Load()) }

// reclaim resets one batch of the heaviest client's connections, if they
// may hold more than reclaimFloor.
func (s *Server) reclaim() {
	k, conns := s.live.takeHeaviest(reclaimFloor, reclaimBatch)
	s.resetTaken(k, conns)
}

// resetTaken resets conns, taken from k's list, and counts those it reset:
// a handler may close one between the taking and the reset.
func (s *Server) resetTaken(k clientKey, conns []*Conn) {
	n := 0
	for _, c := range conns {
		if c.abortReclaimed() {
			n++
		}
	}
	if n == 0 {
		return
	}
	s.stats.memoryReclaimed.Add(uint64(n))
	var client any = netip.AddrFrom16(k.addr).Unmap()
	if a := client.(netip.Addr); a.Is6() {
		client = clientkey.Prefix(a) // the prefix's connections, not the address's
	}
	slog.Warn("memory is critical: reset connections of the client whose connections held the most",
		"endpoint", FlowInfo{Endpoint: k.endpoint}.EndpointName(), "client", client, "reset", n,
		"client_keeps_at_most_bytes", reclaimFloor)
}

// abortReclaimed resets c to reclaim memory, unless its handler has closed
// it since it was taken from the list (that one ends as the handler chose,
// with its FIN and no RST), or its client has reset it (peerConnected):
// neither is counted. It reports whether it reset
// c.
func (c *Conn) abortReclaimed() bool {
	// Marked first, and only if still open, in the word Close marks too:
	// the reads and writes the reset wakes say why, and a conn its handler
	// closed first is never, even for a moment, seen as reclaimed (marked,
	// then unmarked on finding it closed, a handler recording its end
	// between the two would have said "reset by the appliance" of a
	// connection that ended with its FIN). A Close that begins after the
	// mark races with the Abort as a handler's Close always may.
	if !c.peerConnected() {
		// Its client reset it since it was taken: it ended as the client
		// chose, and its records say so. A RST that comes between this
		// load and the mark races with the reset, as any may.
		return false
	}
	if !c.state.CompareAndSwap(0, connReclaimed) {
		return false
	}
	c.ep.Abort()
	return true
}
