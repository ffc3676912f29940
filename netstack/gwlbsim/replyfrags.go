package gwlbsim

import (
	"encoding/binary"
	"sync"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// A reply larger than the appliance's MTU comes back in IP fragments, and
// only the first carries ports, so only it can name its flow. The reply
// fragment table remembers, for a few seconds, the flow of each datagram
// whose first fragment the simulator accepted; that datagram's later
// fragments are then held to the same rules as the first: from the flow's
// target, from the flow's source port, under the flow's header.
//
// The table is fixed in size: replyFragBuckets buckets of replyFragWays
// entries; a new datagram takes a free or expired entry of its bucket, else
// the oldest. An entry is not freed by the last fragment (the network may
// reorder a datagram's fragments): it expires, or a newer datagram takes
// its place.
const (
	replyFragBucketBits = 6
	replyFragBuckets    = 1 << replyFragBucketBits
	replyFragWays       = 4
	replyFragTTL        = int64(5 * time.Second)
)

// replyFragKey identifies a datagram among an endpoint's replies: RFC 791
// names source, destination, protocol and identification for IPv4; RFC
// 8200 source, destination and identification for IPv6, whose later
// fragments may name a different next header than the first.
type replyFragKey struct {
	endpoint uint64
	src, dst [16]byte
	id       uint32
	proto    uint8 // IPv4 only
	ipv6     bool
}

func replyFragKeyOf(endpoint uint64, p *netstack.Packet) replyFragKey {
	k := replyFragKey{endpoint: endpoint, src: p.Src, dst: p.Dst, id: p.FragmentID, ipv6: p.IPv6}
	if !p.IPv6 {
		k.proto = p.Proto
	}
	return k
}

func (k *replyFragKey) bucket() int {
	h := k.endpoint ^ uint64(k.id) ^ uint64(k.proto)<<32
	h ^= binary.LittleEndian.Uint64(k.src[8:]) ^ binary.LittleEndian.Uint64(k.dst[8:])*31
	h ^= binary.LittleEndian.Uint64(k.src[:8]) ^ binary.LittleEndian.Uint64(k.dst[:8])*37
	h *= 0x9e3779b97f4a7c15
	return int(h >> (64 - replyFragBucketBits))
}

type replyFragEntry struct {
	key     replyFragKey
	flow    *simFlow // nil: free
	expires int64    // unix nanoseconds
}

// replyFrags maps the datagrams whose first fragment was accepted to their
// flows. Its zero value is ready; it is safe for concurrent use and never
// allocates.
type replyFrags struct {
	mu      sync.Mutex
	buckets [replyFragBuckets][replyFragWays]replyFragEntry
}

// remember records that the datagram whose first fragment is p, a reply
// on endpoint, belongs to f.
func (t *replyFrags) remember(endpoint uint64, p *netstack.Packet, f *simFlow, now int64) {
	k := replyFragKeyOf(endpoint, p)
	t.mu.Lock()
	defer t.mu.Unlock()
	ways := &t.buckets[k.bucket()]
	victim := 0
	for i := range ways {
		e := &ways[i]
		if e.flow != nil && e.key == k { // the ID came round again
			victim = i
			break
		}
		if e.expires < ways[victim].expires {
			victim = i // free entries have expired at 0
		}
	}
	ways[victim] = replyFragEntry{key: k, flow: f, expires: now + replyFragTTL}
}

// follow returns the flow of the datagram whose later fragment p is, or
// nil when its first fragment was not accepted or is too old.
func (t *replyFrags) follow(endpoint uint64, p *netstack.Packet, now int64) *simFlow {
	k := replyFragKeyOf(endpoint, p)
	t.mu.Lock()
	defer t.mu.Unlock()
	ways := &t.buckets[k.bucket()]
	for i := range ways {
		e := &ways[i]
		if e.flow == nil || e.key != k {
			continue
		}
		if now > e.expires {
			*e = replyFragEntry{}
			return nil
		}
		return e.flow
	}
	return nil
}

// fragmentFlowLocked finds the flow a later fragment whose first fragment
// was not seen (reordered ahead of it, or its entry gone) claims: a flow
// of endpoint e between the fragment's addresses, with its protocol, whose
// current flow cookie is the one the fragment's header names. It scans the
// flow table, which only such fragments cost. Under s.mu, read-locked.
func (s *Sim) fragmentFlowLocked(e *Endpoint, p *netstack.Packet, cookie uint32) *simFlow {
	for _, f := range s.flows {
		if f.ep != e || f.route.Load().cookie != cookie || (!p.IPv6 && f.proto != p.Proto) {
			continue
		}
		k := &f.key
		if (k.LoAddr == p.Src && k.HiAddr == p.Dst) || (k.LoAddr == p.Dst && k.HiAddr == p.Src) {
			return f
		}
	}
	return nil
}
