package netstack

import (
	"net/netip"
	"testing"
	"time"
)

// tcpTable is a table of max flows, share per client, and a touch that
// makes a TCP flow from src:port to one destination (nil if refused).
func tcpTable(max, share int) (*flowTable, func(src string, port uint16) *Flow) {
	tb := newFlowTable(max, 350*time.Second, 120*time.Second)
	tb.LimitPerClient(share)
	now := time.Now().UnixNano()
	dst := netip.MustParseAddr("198.18.9.9").As16()
	return tb, func(src string, port uint16) *Flow {
		a := netip.MustParseAddr(src).As16()
		p := Packet{Proto: protoTCP, Src: a, Dst: dst, SrcPort: port, DstPort: 443}
		k := p.Key(7)
		f, r := tb.Touch(&k, a, []byte("hdr"), Header{}, netip.AddrPort{}, now)
		if r != DropNone {
			return nil
		}
		return f
	}
}

// TestEvictQueueCapacityBounded: a client churning its own flows at its
// share in a full table queued a pointer per new flow between prunes, in
// one array that only grew (200k flows: a capacity of 236544 entries, for
// 16 flows held), and Expire kept that capacity. Now popping compacts the
// queue, and a prune gives back an array much larger than its queue.
func TestEvictQueueCapacityBounded(t *testing.T) {
	tb, touch := tcpTable(20, 16)
	for port := range uint16(5) {
		touch("10.0.0.77", port) // another client's flows in progress
	}
	k := clientKeyOf(7, netip.MustParseAddr("10.0.0.66").As16())
	s := tb.clients.shard(&k)
	capOf := func() int {
		s.mu.Lock()
		defer s.mu.Unlock()
		return cap(s.clients[k].fresh)
	}
	for i := range 200000 {
		if touch("10.0.0.66", uint16(1000+i%60000)) == nil {
			t.Fatalf("flow %d refused", i)
		}
	}
	if c := capOf(); c > 256 {
		t.Errorf("before Expire: the churning client's queue has a capacity of %d for 16 flows", c)
	}
	// A burst of entries that go stale (flows made live) grows the
	// array; the prune gives it back.
	tb2, touch2 := tcpTable(5000, 5000)
	for port := range uint16(4000) {
		f := touch2("10.0.0.66", port)
		tb2.tcpSeen(f, f.tcpStack(flagSyn|flagAck))
		tb2.tcpSeen(f, f.tcpClient(flagAck))
	}
	touch2("10.0.0.66", 9999) // one left evictable
	tb2.Expire(time.Now().UnixNano())
	s2 := tb2.clients.shard(&k)
	s2.mu.Lock()
	n, c := len(s2.clients[k].fresh), cap(s2.clients[k].fresh)
	s2.mu.Unlock()
	if n != 1 || c > 2*n+64 {
		t.Errorf("after Expire: the queue holds %d entries in an array of %d", n, c)
	}
}

// TestEvictRanksByEvictableNotStale plays the reviewer's probe: a client
// that opened 18 connections a moment ago, established since, and has 2
// SYNs whose dials are in progress, counted 20 queue entries (those of its
// live flows too, until the next prune) to a flooder's 10 flows never
// completed, so a third client's new flow took the busy client's dialling
// SYN and left the flooder's. Now eviction prunes a stale queue before it
// takes from it, and looks again when its client then holds fewer.
func TestEvictRanksByEvictableNotStale(t *testing.T) {
	tb, touch := tcpTable(30, 20)
	for port := range uint16(18) {
		f := touch("10.0.1.99", 30000+port)
		tb.tcpSeen(f, f.tcpClient(flagSyn))
		tb.tcpSeen(f, f.tcpStack(flagSyn|flagAck))
		tb.tcpSeen(f, f.tcpClient(flagAck))
	}
	var inProgress []*Flow
	for port := range uint16(2) {
		f := touch("10.0.1.99", 5000+port)
		tb.tcpSeen(f, f.tcpClient(flagSyn))
		inProgress = append(inProgress, f)
	}
	var flood []*Flow
	for port := range uint16(10) {
		flood = append(flood, touch("10.0.0.66", 20000+port))
	}
	if tb.Len() != 30 {
		t.Fatalf("len %d, want a full table", tb.Len())
	}
	if touch("10.0.2.1", 1) == nil { // a third client's new flow
		t.Fatal("a new flow refused")
	}
	// And the next: the busy client holds 2 evictable flows to the
	// flooder's 9, with its stale mark cleared.
	if touch("10.0.2.2", 1) == nil {
		t.Fatal("a new flow refused")
	}
	for i, f := range inProgress {
		if f.removed.Load() {
			t.Errorf("the busy client's dialling SYN %d was evicted", i)
		}
	}
	if !flood[0].removed.Load() || !flood[1].removed.Load() {
		t.Errorf("the flooder's two oldest flows were not evicted: %v %v", flood[0].removed.Load(), flood[1].removed.Load())
	}
	if n := tb.clients.queued(); n != 2+8+1+1 {
		t.Errorf("%d queued, want 12 (the busy client's live flows pruned)", n)
	}
}

// TestEvictRanksAnsweredAsStale: a UDP flow the stack answered after it
// was queued is no longer evictable, and no longer counts for its client.
func TestEvictRanksAnsweredAsStale(t *testing.T) {
	tb := newFlowTable(12, 350*time.Second, 120*time.Second)
	tb.LimitPerClient(12)
	now := time.Now().UnixNano()
	dst := netip.MustParseAddr("198.18.9.9").As16()
	touch := func(src string, proto uint8, port uint16) *Flow {
		a := netip.MustParseAddr(src).As16()
		p := Packet{Proto: proto, Src: a, Dst: dst, SrcPort: port, DstPort: 53}
		k := p.Key(7)
		f, _ := tb.Touch(&k, a, []byte("hdr"), Header{}, netip.AddrPort{}, now)
		return f
	}
	var dns []*Flow
	for port := range uint16(8) {
		f := touch("10.0.1.99", protoUDP, 5000+port)
		dns = append(dns, f)
		if port < 7 { // answered; the last awaits its answer
			f.replied.Store(true)
			tb.answered(f)
		}
	}
	var flood []*Flow
	for port := range uint16(4) {
		flood = append(flood, touch("10.0.0.66", protoTCP, 20000+port))
	}
	if touch("10.0.2.1", protoTCP, 1) == nil {
		t.Fatal("a new flow refused")
	}
	if dns[7].removed.Load() || !flood[0].removed.Load() {
		t.Errorf("the DNS query awaiting its answer evicted %v, the flooder's oldest %v", dns[7].removed.Load(), flood[0].removed.Load())
	}
}
