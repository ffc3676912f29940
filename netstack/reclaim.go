package netstack

import (
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"time"
)

// Reclaiming memory. Memory pressure refuses new flows to the clients that
// hold many, but admission does not take back what admitted flows hold: a
// client that opened thousands of connections while memory was ample, grew
// their buffers by moving bytes, and then holds them (out-of-order bytes
// past a hole it never fills, a zero window, a destination of its own that
// stops reading) pins several MiB a connection, and a trickle defeats the
// write-stall bound. So while memory is critical the server resets, every
// reclaimEvery, up to reclaimBatch connections of the client holding the
// most accepted TCP connections, newest first, for as long as it holds
// more than CriticalMemoryClientFlows, the share critical memory still
// admits new flows to. A client within that share is never reset, however
// much it holds: the bound is on the client that took the most, as
// admission's is.
//
// The connections are those the handler accepted and has not closed
// (Conn), counted per client as the flow table counts shares (endpoint
// and address, an IPv6 /80): Accept and Close each take one shard lock,
// and nothing is done per packet.

const (
	// reclaimEvery is how often the connections of the biggest holder are
	// reset while memory is critical; memwatch reads the level as often.
	reclaimEvery = 250 * time.Millisecond
	// reclaimBatch bounds the connections reset at a time: a few ticks
	// bring a client with thousands down, and memwatch sees each batch's
	// effect before the next when the level is about to leave critical.
	reclaimBatch = 64
)

// ErrMemoryReclaimed is the error a Conn's reads and writes return once
// the server has reset it to reclaim memory.
var ErrMemoryReclaimed = errors.New("reset by the appliance: memory critical, and its client held the most connections")

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

// takeBiggest finds the client holding the most connections and, if it
// holds more than keep, takes up to batch of its newest out of the count
// and returns them with the client.
func (l *liveConns) takeBiggest(keep, batch int) (clientKey, []*Conn) {
	var top *liveClient
	var topShard *liveShard
	most := keep
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		for _, lc := range s.clients {
			if lc.n > most {
				top, topShard, most = lc, s, lc.n
			}
		}
		s.mu.Unlock()
	}
	if top == nil {
		return clientKey{}, nil
	}
	var taken []*Conn
	topShard.mu.Lock()
	for top.n > keep && len(taken) < batch && top.tail != nil {
		c := top.tail
		topShard.removeLocked(c)
		taken = append(taken, c)
	}
	topShard.mu.Unlock()
	return top.key, taken
}

// SetMemoryPressure sets how short of memory the appliance is; new flows
// are admitted by it (MemoryPressure) from the next packet on, and while
// it is MemoryCritical the connections of the client holding the most are
// reset down to CriticalMemoryClientFlows (see liveConns).
func (s *Server) SetMemoryPressure(p MemoryPressure) {
	s.flows.setPressure(p)
	if p == MemoryCritical && s.reclaiming.CompareAndSwap(false, true) {
		go s.reclaimWhileCritical()
	}
}

// reclaimWhileCritical resets connections every reclaimEvery until memory
// is no longer critical or the server closes.
func (s *Server) reclaimWhileCritical() {
	t := time.NewTicker(reclaimEvery)
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
		s.reclaim()
		select {
		case <-s.done:
			return
		case <-t.C:
		}
	}
}

func (s *Server) pressure() MemoryPressure { return MemoryPressure(s.flows.pressure.Load()) }

// reclaim resets one batch of the biggest holder's connections, if it
// holds more than the critical share.
func (s *Server) reclaim() {
	k, conns := s.live.takeBiggest(CriticalMemoryClientFlows, reclaimBatch)
	if len(conns) == 0 {
		return
	}
	for _, c := range conns {
		// Marked first: the reads and writes the reset wakes say why.
		c.reclaimed.Store(true)
		c.ep.Abort()
	}
	s.stats.memoryReclaimed.Add(uint64(len(conns)))
	var client any = netip.AddrFrom16(k.addr).Unmap()
	if a := client.(netip.Addr); a.Is6() {
		client = netip.PrefixFrom(a, 80)
	}
	slog.Warn("memory is critical: reset connections of the client holding the most",
		"endpoint", FlowInfo{Endpoint: k.endpoint}.EndpointName(), "client", client, "reset", len(conns),
		"client_keeps_at_most", CriticalMemoryClientFlows)
}
