package netstack

import (
	"encoding/binary"
	"sync"
)

// clientShares counts the flows of each client. It is consulted only when
// a flow is created or expires, never for the packets of a known flow.
type clientShares struct {
	max    int32
	shards [flowShards]clientShard
}

type clientShard struct {
	mu sync.Mutex
	n  map[clientKey]int32
}

type clientKey struct {
	endpoint uint64
	addr     [16]byte
}

func (c *clientShares) shard(k *clientKey) *clientShard {
	h := k.endpoint ^ binary.LittleEndian.Uint64(k.addr[8:]) ^ binary.LittleEndian.Uint64(k.addr[:8])*31
	h *= 0x9e3779b97f4a7c15
	return &c.shards[h>>58] // the top 6 bits: flowShards is 64
}

// clientKeyOf names the client of addr: an IPv4 address, or an IPv6 /80.
// A VPC gives an instance IPv6 addresses one by one from its subnet's /64,
// or as /80 prefixes (prefix delegation), and routes no other: a delegated
// /80 is one instance's, and two addresses given one by one rarely share a
// /80, while a /64 is the whole subnet, whose instances would all share
// one client's share.
func clientKeyOf(endpoint uint64, addr [16]byte) clientKey {
	if [12]byte(addr[:12]) != v4InV6 {
		clear(addr[10:])
	}
	return clientKey{endpoint, addr}
}

var v4InV6 = [12]byte{10: 0xff, 11: 0xff}

// take counts one more flow for the client, unless it holds max already
// (DropClientFlowLimit), or memory is short and it holds pressed, what the
// memory pressure leaves a client (DropMemoryPressure).
func (c *clientShares) take(endpoint uint64, addr [16]byte, pressed int32) DropReason {
	k := clientKeyOf(endpoint, addr)
	s := c.shard(&k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n == nil {
		s.n = make(map[clientKey]int32)
	}
	switch n := s.n[k]; {
	case n >= c.max:
		return DropClientFlowLimit
	case n >= pressed:
		return DropMemoryPressure
	}
	s.n[k]++
	return DropNone
}

// give returns a flow of the client's share.
func (c *clientShares) give(endpoint uint64, addr [16]byte) {
	k := clientKeyOf(endpoint, addr)
	s := c.shard(&k)
	s.mu.Lock()
	if s.n[k]--; s.n[k] <= 0 {
		delete(s.n, k)
	}
	s.mu.Unlock()
}
