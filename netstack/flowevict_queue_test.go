package netstack

import (
	"net/netip"
	"sync"
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
		f, r := tb.Touch(&k, []byte("hdr"), Header{}, netip.AddrPort{}, now)
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
		f, _ := tb.Touch(&k, []byte("hdr"), Header{}, netip.AddrPort{}, now)
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

// TestEvictPastHeldResets plays the reviewer's probe: out-of-window RSTs
// (which the stack ignores, and anyone writing the clients' addresses can
// send) on 80 established connections queued 80 reset flows the stack
// still holds; eviction spent its 64 asks on them and refused a new flow
// (flow_table_full) while a flooder's SYN-only flow was evictable. Now it
// sets the reset flows past its asks aside, takes the flooder's, and
// consults those set aside last.
func TestEvictPastHeldResets(t *testing.T) {
	tb, touch := tcpTable(81, 10)
	held := func(k *FlowKey) bool { return k.ClientPort >= 30000 || k.ServerPort >= 30000 }
	tb.held = func(k *FlowKey) bool { return held(k) }
	var conns []*Flow
	for c := range 8 {
		src := netip.AddrFrom4([4]byte{10, 0, 3, byte(c)}).String()
		for port := range uint16(10) {
			f := touch(src, 30000+port)
			tb.tcpSeen(f, f.tcpClient(flagSyn))
			tb.tcpSeen(f, f.tcpStack(flagSyn|flagAck))
			tb.tcpSeen(f, f.tcpClient(flagAck))
			conns = append(conns, f)
		}
	}
	tb.Expire(time.Now().UnixNano()) // the live flows leave the queues
	if n := tb.clients.queued(); n != 0 {
		t.Fatalf("%d queued after Expire, want 0", n)
	}
	for _, f := range conns {
		tb.tcpSeen(f, f.tcpClient(flagRst))
	}
	flood := touch("10.0.0.66", 20000)
	if tb.Len() != 81 {
		t.Fatalf("len %d, want a full table", tb.Len())
	}
	mine := touch("10.0.2.1", 1)
	if mine == nil || !flood.removed.Load() {
		t.Fatalf("new flow admitted %v, the flooder's evictable flow evicted %v", mine != nil, flood.removed.Load())
	}
	// The others queued or set aside, none lost (mine is queued too).
	if a, q := int(tb.aside.sh.top.Load()), tb.clients.queued(); a == 0 || a+q != 80-evictAsks+1 {
		t.Fatalf("%d reset flows set aside and %d queued, want %d in all", a, q, 80-evictAsks+1)
	}
	// With nothing else evictable, the flows set aside are asked: once
	// the stack no longer holds their connections, each is evicted for a
	// new connection, and then the table holds only live ones.
	held = func(*FlowKey) bool { return false }
	var live []*Flow
	for i := range 80 - evictAsks + 2 {
		tb.tcpSeen(mine, mine.tcpStack(flagSyn|flagAck))
		tb.tcpSeen(mine, mine.tcpClient(flagAck))
		live = append(live, mine)
		mine = touch(netip.AddrFrom4([4]byte{10, 0, 4, byte(i)}).String(), 1)
		if mine == nil {
			break
		}
	}
	lost := 0
	for _, f := range conns {
		if f.removed.Load() {
			lost++
		}
	}
	if lost != 80-evictAsks || mine != nil || tb.aside.sh.top.Load() != 0 {
		t.Fatalf("%d reset flows evicted, want %d, then flow_table_full (refused: %v); %d left aside", lost, 80-evictAsks, mine == nil, tb.aside.sh.top.Load())
	}
	for i, f := range live {
		if f.removed.Load() {
			t.Fatalf("live connection %d evicted", i)
		}
	}
}

// TestEvictQueuesCoverEvictable churns a full table from several readers
// at once, with more reset flows the stack still holds than one eviction
// asks about (so that some are set aside), and checks that every
// evictable flow left in the table has an entry in its client's queue or
// in the queue set aside: else eviction could not find it.
func TestEvictQueuesCoverEvictable(t *testing.T) {
	aside := 0
	for round := range 10 {
		tb, touch := tcpTable(200, 100)
		tb.held = func(k *FlowKey) bool { return k.ClientPort >= 30000 || k.ServerPort >= 30000 }
		var conns []*Flow // 120 connections the stack holds
		for c := range 2 {
			src := netip.AddrFrom4([4]byte{10, 0, 9, byte(c)}).String()
			for port := range uint16(60) {
				f := touch(src, 30000+port)
				tb.tcpSeen(f, f.tcpStack(flagSyn|flagAck))
				tb.tcpSeen(f, f.tcpClient(flagAck))
				conns = append(conns, f)
			}
		}
		for i := range 80 { // a new flow from another client each
			touch(netip.AddrFrom4([4]byte{10, 0, 8, byte(i)}).String(), 1)
		}
		for _, c := range conns {
			tb.tcpSeen(c, c.tcpClient(flagRst))
		}
		now := time.Now().UnixNano()
		dst := netip.MustParseAddr("198.18.9.9").As16()
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 3000 {
					// Out-of-window RSTs on the held connections,
					// and their next segments making them live.
					c := conns[(i*7+g*31)%len(conns)]
					if i%5 == 0 {
						tb.tcpSeen(c, c.tcpClient(flagAck))
					} else {
						tb.tcpSeen(c, c.tcpClient(flagRst))
					}
					src := netip.AddrFrom4([4]byte{10, 0, byte(g), byte(i % 3)}).As16()
					p := Packet{Proto: protoTCP, Src: src, Dst: dst, SrcPort: uint16(i % 97), DstPort: 443}
					k := p.Key(7)
					f, r := tb.Touch(&k, []byte("hdr"), Header{}, netip.AddrPort{}, now+int64(i))
					if r != DropNone {
						continue
					}
					switch i % 4 {
					case 0:
						tb.tcpSeen(f, f.tcpStack(flagSyn|flagAck))
						tb.tcpSeen(f, f.tcpClient(flagAck))
					case 1:
						tb.tcpSeen(f, f.tcpClient(flagFin|flagAck))
						tb.tcpSeen(f, f.tcpStack(flagFin|flagAck))
					}
					if g == 0 && i%700 == 0 {
						tb.Expire(now)
					}
				}
			}()
		}
		wg.Wait()
		inQ := map[*Flow]bool{}
		for _, f := range tb.aside.cl.fresh[tb.aside.cl.head:] {
			inQ[f] = true
			aside++
		}
		for i := range tb.clients.shards {
			for _, cl := range tb.clients.shards[i].clients {
				for _, f := range cl.fresh[cl.head:] {
					inQ[f] = true
				}
			}
		}
		n := 0
		for i := range tb.shards {
			for _, f := range tb.shards[i].flows {
				n++
				if f.evictable() && !inQ[f] {
					t.Fatalf("round %d: an evictable flow in no queue (tcp %b, queued %v)", round, f.tcp.Load(), f.queued.Load())
				}
			}
		}
		if int64(n) != tb.count.Load() {
			t.Fatalf("round %d: count %d, flows %d", round, tb.count.Load(), n)
		}
	}
	t.Logf("%d entries set aside at the ends of the rounds", aside)
}
