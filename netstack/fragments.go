package netstack

import (
	"encoding/binary"
	"sync"
	"time"
)

// A reply larger than the MTU leaves the stack in IP fragments, and gVisor
// hands each fragment to the link in a call of its own. Only the first
// fragment carries ports, so only it can find its flow; the fragment table
// remembers, per endpoint and for a few seconds, which flow each datagram
// whose first fragment went out belongs to, and its later fragments follow.
//
// The table is fixed in size: fragBuckets buckets of fragWays entries.
// gVisor writes a datagram's fragments in order and back to back, so an
// entry is needed only while one datagram is being written: the last
// fragment frees it, and the expiry clears what a failed write left behind.
//
// The inbound tables are shared by all the clients behind an endpoint, so a
// new datagram does not simply take the oldest entry of its bucket: a
// client sending first fragments under ever new IDs would evict everyone
// else's, and their later fragments would find no flow. It takes a free or
// expired entry, else its own client's oldest (the flow's client: an IPv4
// address or an IPv6 prefix, as for the flow table's shares), else the oldest
// of another client's entries remembered over fragGrace ago (by then a
// datagram's fragments have all come), else the oldest of a client holding
// more than one entry in the bucket, and only when every entry is another
// client's one and only, the oldest. So taking a client's entry needs as
// many other clients (addresses, or /80s) as a bucket has entries, where
// one was enough.
const (
	fragBucketBits = 6
	fragBuckets    = 1 << fragBucketBits
	fragWays       = 4
	fragTTL        = int64(5 * time.Second)
	fragGrace      = int64(time.Second)
)

// fragKey identifies a datagram among the fragments of one endpoint: RFC 791
// names source, destination, protocol and identification for IPv4; RFC 8200
// source, destination and identification for IPv6, whose later fragments
// may name a different next header than the first.
type fragKey struct {
	src, dst [16]byte
	id       uint32
	proto    uint8 // IPv4 only
	ipv6     bool
}

func fragKeyOf(p *Packet) fragKey {
	k := fragKey{src: p.Src, dst: p.Dst, id: p.FragmentID, ipv6: p.IPv6}
	if !p.IPv6 {
		k.proto = p.Proto
	}
	return k
}

func (k *fragKey) bucket() int {
	h := uint64(k.id) | uint64(k.proto)<<32
	h ^= binary.LittleEndian.Uint64(k.src[8:]) ^ binary.LittleEndian.Uint64(k.dst[8:])*31
	h ^= binary.LittleEndian.Uint64(k.src[:8]) ^ binary.LittleEndian.Uint64(k.dst[:8])*37
	h *= 0x9e3779b97f4a7c15
	return int(h >> (64 - fragBucketBits))
}

type fragEntry struct {
	key     fragKey
	flow    *Flow    // nil: free
	owner   [16]byte // the flow's client, as clientKeyOf names it
	expires int64    // monoclock.Now
}

type fragBucket struct {
	mu   sync.Mutex
	ways [fragWays]fragEntry
}

// fragTable maps datagrams being written in fragments to their flows. Its
// zero value is ready; it is safe for concurrent use and never allocates.
type fragTable struct {
	buckets [fragBuckets]fragBucket
}

// remember records that the datagram whose first fragment is p belongs to
// flow.
func (t *fragTable) remember(p *Packet, flow *Flow, now int64) {
	k := fragKeyOf(p)
	owner := clientKeyOf(0, flow.key.ClientAddr).addr
	b := &t.buckets[k.bucket()]
	b.mu.Lock()
	b.ways[b.victim(&k, owner, now)] = fragEntry{key: k, flow: flow, owner: owner, expires: now + fragTTL}
	b.mu.Unlock()
}

// victim returns the entry a new datagram k of owner's takes (see the
// table's comment): the lowest rank, the oldest among equals.
func (b *fragBucket) victim(k *fragKey, owner [16]byte, now int64) int {
	best, bestRank := 0, 5
	for i := range b.ways {
		e := &b.ways[i]
		var rank int
		switch {
		case e.flow != nil && e.key == *k:
			return i // the ID came round again
		case e.flow == nil || now > e.expires:
			rank = 0 // free entries have expired at 0
		case e.owner == owner:
			rank = 1
		case now-(e.expires-fragTTL) > fragGrace:
			rank = 2
		case b.held(e.owner, now) > 1:
			rank = 3
		default:
			rank = 4
		}
		if rank < bestRank || (rank == bestRank && e.expires < b.ways[best].expires) {
			best, bestRank = i, rank
		}
	}
	return best
}

// held returns how many live entries of the bucket owner holds.
func (b *fragBucket) held(owner [16]byte, now int64) int {
	n := 0
	for i := range b.ways {
		if e := &b.ways[i]; e.flow != nil && now <= e.expires && e.owner == owner {
			n++
		}
	}
	return n
}

// follow returns the flow of the datagram whose later fragment p is, or nil
// when its first fragment was not seen or is too old. The last fragment
// (no more fragments) frees the entry: for the stack's replies, whose
// fragments gVisor writes in order.
func (t *fragTable) follow(p *Packet, now int64) *Flow { return t.lookup(p, now, true) }

// followIn is follow for a client's fragments, which the network may
// reorder: the last may come before a middle one, so it frees nothing, and
// the entry lasts until it expires or a new datagram takes its place.
func (t *fragTable) followIn(p *Packet, now int64) *Flow { return t.lookup(p, now, false) }

func (t *fragTable) lookup(p *Packet, now int64, freeLast bool) *Flow {
	k := fragKeyOf(p)
	b := &t.buckets[k.bucket()]
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := range b.ways {
		e := &b.ways[i]
		if e.flow == nil || e.key != k {
			continue
		}
		f := e.flow
		if now > e.expires {
			f = nil
		}
		if f == nil || (freeLast && !p.MoreFragments) {
			*e = fragEntry{}
		}
		return f
	}
	return nil
}
