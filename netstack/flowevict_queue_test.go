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
