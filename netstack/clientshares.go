package netstack

import (
	"container/heap"
	"encoding/binary"
	"sync"
	"sync/atomic"

	"github.com/gwlbproxy/gwlbproxy/internal/clientkey"
)

// clientShares counts the flows of each client, and queues each client's
// evictable flows (flowevict.go). It is consulted when a flow is created,
// expires, is evicted or stops being live, never for the other packets of
// a known flow.
type clientShares struct {
	max    int32
	shards [flowShards]clientShard
}

// clientShard holds the clients whose keys hash to it. Its clients with
// queued flows are in a max-heap by how many, whose top count is published
// in top, so that eviction finds the client holding the most evictable
// flows with 64 atomic loads and one lock.
type clientShard struct {
	mu      sync.Mutex
	clients map[clientKey]*client
	byFresh clientHeap
	top     atomic.Int32 // queued entries of byFresh's first client; 0: none
}

// client is one client's share and its evictable flows, oldest first from
// head on (flows made, or stopped being live, in that order). Entries of
// flows removed or live since are skipped when they come to the front, and
// pruned by Expire, or by eviction when it picks a client whose queue is
// stale: else a client that made many connections since the last prune
// ranked as the biggest holder by entries of its live flows. A client's flows point to it while they are in the
// table, and it is dropped with its last flow, or if a SYN of its waits
// then, with its last waiting SYN (synwait.go).
type client struct {
	sh    *clientShard
	key   clientKey // as made: the key of a later --ipv6-client-prefix may differ
	flows int32     // in the table; 0: dropped, or kept for its waiting SYNs
	fresh []*Flow
	head  int
	at    int         // index in sh.byFresh; -1: not in it
	stale atomic.Bool // a queued flow may have left the evictable set since the last prune

	// synWaits counts its SYNs waiting for a stack (synwait.go): it stays
	// in its shard's map while any does, so that the client's flows made
	// again count in the same share as the waits of its flows gone.
	synWaits atomic.Int32
}

// queuedN is the number of entries in c's queue; the caller holds c.sh.
func (c *client) queuedN() int { return len(c.fresh) - c.head }

// clientHeap orders clients by queued entries, most first.
type clientHeap []*client

func (h clientHeap) Len() int           { return len(h) }
func (h clientHeap) Less(i, j int) bool { return h[i].queuedN() > h[j].queuedN() }
func (h clientHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].at, h[j].at = i, j
}
func (h *clientHeap) Push(x any) {
	c := x.(*client)
	c.at = len(*h)
	*h = append(*h, c)
}
func (h *clientHeap) Pop() any {
	old := *h
	c := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	c.at = -1
	return c
}

type clientKey struct {
	endpoint uint64
	addr     [16]byte
}

func (c *clientShares) shard(k *clientKey) *clientShard { return &c.shards[clientShardOf(k)] }

// clientShardOf is the index of k's shard, below flowShards.
func clientShardOf(k *clientKey) int {
	h := k.endpoint ^ binary.LittleEndian.Uint64(k.addr[8:]) ^ binary.LittleEndian.Uint64(k.addr[:8])*31
	h *= 0x9e3779b97f4a7c15
	return int(h >> 58) // the top 6 bits: flowShards is 64
}

// clientKeyOf names the client of addr behind endpoint: an IPv4 address,
// or an IPv6 address's prefix (--ipv6-client-prefix, a /80 by default), as
// package clientkey, which every per-client bound asks, says.
func clientKeyOf(endpoint uint64, addr [16]byte) clientKey {
	return clientKey{endpoint, clientkey.Of16(addr)}
}

// take counts one more flow for the client and returns it, unless it
// holds max already (DropClientFlowLimit), or memory is short and it holds
// pressed, what the memory pressure leaves a client (DropMemoryPressure).
func (c *clientShares) take(endpoint uint64, addr [16]byte, pressed int32) (*client, DropReason) {
	k := clientKeyOf(endpoint, addr)
	s := c.shard(&k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.clients == nil {
		s.clients = make(map[clientKey]*client)
	}
	cl := s.clients[k]
	n := int32(0)
	if cl != nil {
		n = cl.flows
	}
	switch {
	case n >= c.max:
		return nil, DropClientFlowLimit
	case n >= pressed:
		return nil, DropMemoryPressure
	}
	if cl == nil {
		cl = &client{sh: s, key: k, at: -1}
		s.clients[k] = cl
	}
	cl.flows++
	return cl, DropNone
}

// give returns a flow of cl's share.
func (c *clientShares) give(cl *client) {
	s := cl.sh
	s.mu.Lock()
	if cl.flows--; cl.flows <= 0 {
		if cl.synWaits.Load() == 0 { // else the last wait's end drops it
			delete(s.clients, cl.key)
		}
		// Its queue holds entries of removed flows only.
		clear(cl.fresh)
		cl.fresh, cl.head = nil, 0
		s.fix(cl)
	}
	s.mu.Unlock()
}

// fix moves cl in s's heap by its queued entries, and publishes the top;
// the caller holds s locked.
func (s *clientShard) fix(cl *client) {
	switch n := cl.queuedN(); {
	case n == 0 && cl.at >= 0:
		heap.Remove(&s.byFresh, cl.at)
	case n == 0:
	case cl.at < 0:
		heap.Push(&s.byFresh, cl)
	default:
		heap.Fix(&s.byFresh, cl.at)
	}
	var top int32
	if len(s.byFresh) > 0 {
		top = int32(s.byFresh[0].queuedN())
	}
	s.top.Store(top)
}
