package netstack

import (
	"bytes"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// flowShards spreads the table over independent locks so that the GENEVE
// readers (one per core) and the stacks' writers rarely contend.
const flowShards = 64

// Flow is the state the appliance keeps per flow: the GENEVE header the GWLB
// sent it under, which every reply repeats byte for byte, and where the GWLB
// is.
type Flow struct {
	key      FlowKey
	lastSeen atomic.Int64 // unix nanoseconds
	tunnel   atomic.Pointer[tunnel]
}

// tunnel is immutable once published, so readers need no lock.
type tunnel struct {
	header []byte         // the received GENEVE header, options included
	gwlb   netip.AddrPort // the GWLB's outer address and source port
	parsed Header
}

// Header returns the flow's current GENEVE header fields.
func (f *Flow) Header() Header { return f.tunnel.Load().parsed }

type flowShard struct {
	mu    sync.RWMutex
	flows map[FlowKey]*Flow
}

// FlowTable maps flow keys to flows. It is safe for concurrent use.
type FlowTable struct {
	shards      [flowShards]flowShard
	count       atomic.Int64
	max         int64
	tcpIdle     time.Duration
	otherIdle   time.Duration
	created     atomic.Uint64
	expired     atomic.Uint64
	perEndpoint sync.Map // endpoint ID -> *atomic.Int64 active flows
}

// NewFlowTable returns a table holding at most max flows, expiring TCP flows
// after tcpIdle and all others after otherIdle without a packet.
func NewFlowTable(max int, tcpIdle, otherIdle time.Duration) *FlowTable {
	t := &FlowTable{max: int64(max), tcpIdle: tcpIdle, otherIdle: otherIdle}
	for i := range t.shards {
		t.shards[i].flows = make(map[FlowKey]*Flow)
	}
	return t
}

func (t *FlowTable) shard(k *FlowKey) *flowShard {
	h := k.Endpoint ^ uint64(k.Proto)<<56 ^ uint64(k.LoPort)<<16 ^ uint64(k.HiPort)
	for i := 8; i < 16; i++ {
		h = h*31 + uint64(k.LoAddr[i]) + uint64(k.HiAddr[i])<<8
	}
	h ^= h >> 29
	return &t.shards[h%flowShards]
}

// Lookup returns the flow for k, or nil.
func (t *FlowTable) Lookup(k *FlowKey) *Flow {
	s := t.shard(k)
	s.mu.RLock()
	f := s.flows[*k]
	s.mu.RUnlock()
	return f
}

// Touch records a packet from the GWLB for flow k under header hdr from
// gwlb, creating the flow if it is new. It returns false when the table is
// full. In the steady state (known flow, same header) it allocates nothing.
func (t *FlowTable) Touch(k *FlowKey, hdr []byte, parsed Header, gwlb netip.AddrPort, now int64) (*Flow, bool) {
	s := t.shard(k)
	s.mu.RLock()
	f := s.flows[*k]
	s.mu.RUnlock()
	if f == nil {
		if t.count.Add(1) > t.max {
			t.count.Add(-1)
			return nil, false
		}
		s.mu.Lock()
		if f = s.flows[*k]; f == nil {
			f = &Flow{key: *k}
			f.tunnel.Store(newTunnel(hdr, parsed, gwlb))
			s.flows[*k] = f
			t.created.Add(1)
			t.endpointCounter(k.Endpoint).Add(1)
		} else {
			t.count.Add(-1) // another reader created it first
		}
		s.mu.Unlock()
	}
	f.lastSeen.Store(now)
	// The GWLB may move a flow (new source port after a failover, a new
	// cookie): replies must follow whatever it sent last.
	if tn := f.tunnel.Load(); tn.gwlb != gwlb || !bytes.Equal(tn.header, hdr) {
		f.tunnel.Store(newTunnel(hdr, parsed, gwlb))
	}
	return f, true
}

func newTunnel(hdr []byte, parsed Header, gwlb netip.AddrPort) *tunnel {
	return &tunnel{header: bytes.Clone(hdr), gwlb: gwlb, parsed: parsed}
}

func (t *FlowTable) endpointCounter(ep uint64) *atomic.Int64 {
	if c, ok := t.perEndpoint.Load(ep); ok {
		return c.(*atomic.Int64)
	}
	c, _ := t.perEndpoint.LoadOrStore(ep, new(atomic.Int64))
	return c.(*atomic.Int64)
}

// Expire removes flows idle for longer than their protocol's timeout and
// returns how many it removed.
func (t *FlowTable) Expire(now int64) int {
	removed := 0
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for k, f := range s.flows {
			idle := t.otherIdle
			if k.Proto == protoTCP {
				idle = t.tcpIdle
			}
			if now-f.lastSeen.Load() > int64(idle) {
				delete(s.flows, k)
				t.endpointCounter(k.Endpoint).Add(-1)
				removed++
			}
		}
		s.mu.Unlock()
	}
	t.count.Add(int64(-removed))
	t.expired.Add(uint64(removed))
	return removed
}

// Len returns the number of flows in the table.
func (t *FlowTable) Len() int { return int(t.count.Load()) }

// PerEndpoint returns the number of flows per GWLB endpoint.
func (t *FlowTable) PerEndpoint() map[uint64]int64 {
	m := make(map[uint64]int64)
	t.perEndpoint.Range(func(k, v any) bool {
		m[k.(uint64)] = v.(*atomic.Int64).Load()
		return true
	})
	return m
}
