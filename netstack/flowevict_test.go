package netstack

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// TestTransitoryFloodEvicted: one instance with ten addresses, each
// holding its share (a tenth of the table) of bare ACKs or SYNs to new
// ports, filled the whole table with transitory flows, and every other
// client of every endpoint got flow_table_full. Now a new flow takes the
// place of the oldest fresh one, and established or answered flows are
// never evicted.
func TestTransitoryFloodEvicted(t *testing.T) {
	tb := newFlowTable(100, 350*time.Second, 120*time.Second)
	tb.LimitPerClient(10) // the default: a tenth of --max-flows
	now := time.Now().UnixNano()
	dst := netip.MustParseAddr("198.18.9.9").As16()
	touch := func(ep uint64, src [16]byte, proto uint8, port uint16) (*Flow, FlowKey, DropReason) {
		p := Packet{Proto: proto, Src: src, Dst: dst, SrcPort: port, DstPort: 443}
		k := p.Key(ep)
		f, r := tb.Touch(&k, []byte("hdr"), Header{}, netip.AddrPort{}, now)
		return f, k, r
	}

	// A client's established connections and an answered UDP flow.
	legit := netip.MustParseAddr("10.0.2.1").As16()
	var kept []FlowKey
	for port := range uint16(5) {
		f, k, _ := touch(7, legit, protoTCP, 30000+port)
		f.tcpClient(flagSyn)
		f.tcpStack(flagSyn | flagAck)
		f.tcpClient(flagAck)
		kept = append(kept, k)
	}
	f, k, _ := touch(7, legit, protoUDP, 53)
	f.replied.Store(true)
	kept = append(kept, k)

	var flood []FlowKey // in the order made
	for c := range 10 {
		src := netip.AddrFrom4([4]byte{10, 0, 0, byte(10 + c)}).As16()
		for port := range uint16(10) {
			_, k, r := touch(7, src, protoTCP, 20000+port)
			if r != DropNone {
				t.Fatalf("flood flow %d.%d refused: %v", c, port, r)
			}
			flood = append(flood, k)
		}
	}
	if n := tb.Len(); n != 100 {
		t.Fatalf("%d flows, want a full table", n)
	}
	victim := netip.MustParseAddr("10.0.1.99").As16()
	if _, _, r := touch(99, victim, protoTCP, 5555); r != DropNone {
		t.Fatalf("a client of another endpoint, holding no flow, got %v", r)
	}
	if n := tb.evicted.Load(); n != 7 { // 6 for the flood's last, 1 for the victim
		t.Fatalf("%d flows evicted, want 7", n)
	}
	for _, k := range kept {
		if tb.Lookup(&k) == nil {
			t.Fatalf("an established or answered flow was evicted (%+v)", k)
		}
	}
	// Oldest first: of each client, no flow evicted is newer than one held.
	held := map[[16]byte]bool{}
	for i, k := range flood {
		switch src := k.ClientAddr; {
		case tb.Lookup(&k) != nil:
			held[src] = true
		case held[src]:
			t.Fatalf("flood flow %d was evicted before an older one of its client", i)
		}
	}

	// A table full of established flows refuses a new one.
	full := newFlowTable(3, 350*time.Second, 120*time.Second)
	for port := range uint16(3) {
		p := Packet{Proto: protoTCP, Src: legit, Dst: dst, SrcPort: port, DstPort: 443}
		k := p.Key(7)
		f, _ := full.Touch(&k, []byte("hdr"), Header{}, netip.AddrPort{}, now)
		f.tcpStack(flagAck)
	}
	p := Packet{Proto: protoTCP, Src: victim, Dst: dst, SrcPort: 1, DstPort: 443}
	k = p.Key(7)
	if _, r := full.Touch(&k, []byte("hdr"), Header{}, netip.AddrPort{}, now); r != DropFlowTableFull || full.evicted.Load() != 0 {
		t.Fatalf("a table of established flows: %v, %d evicted", r, full.evicted.Load())
	}

	// Expire prunes the queues to the fresh flows still held.
	tb.Expire(now)
	if queued, want := tb.clients.queued(), tb.Len()-len(kept); queued != want {
		t.Fatalf("%d queued, want the %d fresh flows", queued, want)
	}
}

// TestNewConnectionPastTransitoryFlood plays it on the wire: two stray
// clients' bare ACKs to new ports (each refused by the stack with a RST)
// fill the table beside an established connection, and a third client's
// SYN still gets its SYN-ACK, by evicting the oldest stray flow; the
// established connection keeps its flow and still carries data.
func TestNewConnectionPastTransitoryFlood(t *testing.T) {
	client, server := netip.MustParseAddrPort("198.18.0.5:40000"), netip.MustParseAddrPort("198.18.9.9:443")
	var h *AcceptHandler
	r := newGRORigWith(t, client, server, func(c *Config) {
		c.MaxFlows, c.MaxFlowsPerClient = 20, 10
		h = c.Handler.(*AcceptHandler)
	})
	for i, stray := range []string{"198.18.0.66", "198.18.0.67"} {
		for port := range 10 - i {
			r.batch(clientSegment(netip.AddrPortFrom(netip.MustParseAddr(stray), uint16(20000+port)), server, 1, 1, header.TCPFlagAck, nil))
		}
	}
	if st := r.s.Stats(); st.Flows != 20 || st.FlowsEvicted != 0 {
		t.Fatalf("after the strays: %d flows, %d evicted; want a full table", st.Flows, st.FlowsEvicted)
	}

	victim := netip.MustParseAddrPort("198.18.0.99:5555")
	r.batch(clientSegment(victim, server, 7000, 0, header.TCPFlagSyn, nil))
	buf := make([]byte, maxDatagram)
	r.gwlb.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		tcp, err := readReplyTCP(r.gwlb, buf)
		if err != nil {
			t.Fatalf("no SYN-ACK for a new client past the flood: %v; drops %v", err, r.s.Stats().Drops)
		}
		if tcp != nil && tcp.Flags() == header.TCPFlagSyn|header.TCPFlagAck && tcp.DestinationPort() == victim.Port() {
			r.batch(clientSegment(victim, server, 7001, tcp.SequenceNumber()+1, header.TCPFlagAck, nil))
			break
		}
	}
	select {
	case c := <-h.Conns:
		t.Cleanup(c.Abort)
	case <-time.After(5 * time.Second):
		t.Fatal("the new client's connection was not accepted")
	}
	st := r.s.Stats()
	if st.Flows != 20 || st.FlowsEvicted != 1 || st.Drops["flow_table_full"] != 0 {
		t.Fatalf("after the new client: %d flows, %d evicted, drops %v", st.Flows, st.FlowsEvicted, st.Drops)
	}
	r.drainReplies(t)
	r.answer(t, "still here")
}

// drainReplies drains the replies queued so far (the strays' RSTs).
func (r *groRig) drainReplies(t *testing.T) {
	t.Helper()
	buf := make([]byte, maxDatagram)
	for {
		r.gwlb.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if _, err := readReplyTCP(r.gwlb, buf); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				return
			}
			t.Fatal(err)
		}
	}
}

// TestResetFloodEvicted plays two addresses completing handshakes and
// resetting them (a SYN that only a name could allow gets its SYN-ACK
// with nothing dialled): their flows were established once, and that was
// enough to make them never evictable, though reset and held by no stack,
// so they held the table with one packet every 25 s each and a new
// client's SYN was dropped (flow_table_full). A reset flow the stack no
// longer holds is evictable now; one the stack still holds (a spoofed,
// out-of-window RST on a neighbour's connection) is not.
func TestResetFloodEvicted(t *testing.T) {
	client, server := netip.MustParseAddrPort("198.18.0.5:40000"), netip.MustParseAddrPort("198.18.9.9:443")
	r := newGRORigWith(t, client, server, func(c *Config) {
		c.MaxFlows, c.MaxFlowsPerClient = 20, 10
		c.Handler.(*AcceptHandler).Conns = make(chan *Conn, 64) // held, as the name path holds them
	})
	// A spoofed RST on the rig's connection, out of its window: the
	// stack ignores it, and the flow is marked reset all the same.
	r.batch(clientSegment(client, server, r.seq+0x40000000, 0, header.TCPFlagRst, nil))
	own := (&Packet{Proto: protoTCP, Src: client.Addr().As16(), Dst: server.Addr().As16(), SrcPort: client.Port(), DstPort: server.Port()}).Key(7)
	if f := r.s.flows.Lookup(&own); f == nil || !f.tcpResetOnly() {
		t.Fatal("the spoofed RST did not mark the connection's flow reset")
	}

	var keys []FlowKey
	buf := make([]byte, maxDatagram)
	for i, a := range []string{"198.18.0.66", "198.18.0.67"} {
		for port := range 10 - i {
			src := netip.AddrPortFrom(netip.MustParseAddr(a), uint16(20000+port))
			r.batch(clientSegment(src, server, 5000, 0, header.TCPFlagSyn, nil))
			r.gwlb.SetReadDeadline(time.Now().Add(5 * time.Second))
			for {
				tcp, err := readReplyTCP(r.gwlb, buf)
				if err != nil {
					t.Fatalf("no SYN-ACK for %v: %v", src, err)
				}
				if tcp != nil && tcp.Flags() == header.TCPFlagSyn|header.TCPFlagAck && tcp.DestinationPort() == src.Port() {
					r.batch(clientSegment(src, server, 5001, tcp.SequenceNumber()+1, header.TCPFlagAck, nil),
						clientSegment(src, server, 5001, 0, header.TCPFlagRst, nil))
					break
				}
			}
			keys = append(keys, (&Packet{Proto: protoTCP, Src: src.Addr().As16(), Dst: server.Addr().As16(), SrcPort: src.Port(), DstPort: server.Port()}).Key(7))
		}
	}
	waitUntil(t, 5*time.Second, "the stack to take the RSTs", func() (bool, string) {
		for _, k := range keys {
			if r.s.holdsTCP(&k) {
				return false, "the stack still holds an attacker's connection"
			}
		}
		return true, ""
	})
	if st := r.s.Stats(); st.Flows != 20 || st.FlowsEvicted != 0 {
		t.Fatalf("after the flood: %d flows, %d evicted; want a full table", st.Flows, st.FlowsEvicted)
	}

	victim := netip.MustParseAddrPort("198.18.0.99:5555")
	r.batch(clientSegment(victim, server, 7000, 0, header.TCPFlagSyn, nil))
	r.gwlb.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		tcp, err := readReplyTCP(r.gwlb, buf)
		if err != nil {
			t.Fatalf("no SYN-ACK for a new client past the reset flood: %v; drops %v", err, r.s.Stats().Drops)
		}
		if tcp != nil && tcp.Flags() == header.TCPFlagSyn|header.TCPFlagAck && tcp.DestinationPort() == victim.Port() {
			break
		}
	}
	if st := r.s.Stats(); st.FlowsEvicted != 1 || st.Drops["flow_table_full"] != 0 {
		t.Fatalf("after the new client: %d evicted, drops %v", st.FlowsEvicted, st.Drops)
	}
	// Evicting all that may go asks the stack about the neighbour's
	// connection, and leaves it, live again.
	for r.s.flows.evict(nil) {
	}
	if f := r.s.flows.Lookup(&own); f == nil || !f.tcpLive() {
		t.Fatalf("the connection with a spoofed RST lost its flow (held %v)", f != nil)
	}
	r.drainReplies(t)
	r.answer(t, "still here")
}

// TestEndedFlowEvictable: a connection that ends (closed both ways, or
// reset), or whose ports a new connection takes (the stack's SYN-ACK), is
// evictable from then on, also after its entry left the fresh queue while
// it was live.
func TestEndedFlowEvictable(t *testing.T) {
	tb := newFlowTable(3, 350*time.Second, 120*time.Second)
	now := time.Now().UnixNano()
	src, dst := netip.MustParseAddr("10.0.2.1").As16(), netip.MustParseAddr("198.18.9.9").As16()
	touch := func(port uint16) (*Flow, DropReason) {
		p := Packet{Proto: protoTCP, Src: src, Dst: dst, SrcPort: port, DstPort: 443}
		k := p.Key(7)
		return tb.Touch(&k, []byte("hdr"), Header{}, netip.AddrPort{}, now)
	}
	var live [3]*Flow
	for i := range live {
		f, _ := touch(uint16(30000 + i))
		tb.tcpSeen(f, f.tcpClient(flagSyn))
		tb.tcpSeen(f, f.tcpStack(flagSyn|flagAck))
		tb.tcpSeen(f, f.tcpClient(flagAck))
		live[i] = f
	}
	tb.Expire(now) // the live flows leave the queues
	if _, r := touch(1); r != DropFlowTableFull {
		t.Fatalf("a table of live connections: %v", r)
	}
	ends := []struct {
		name string
		end  func(f *Flow)
	}{
		{"closed both ways", func(f *Flow) {
			tb.tcpSeen(f, f.tcpClient(flagFin|flagAck))
			tb.tcpSeen(f, f.tcpStack(flagFin|flagAck))
		}},
		{"a new connection's SYN-ACK", func(f *Flow) { tb.tcpSeen(f, f.tcpStack(flagSyn|flagAck)) }},
		{"reset", func(f *Flow) { tb.tcpSeen(f, f.tcpClient(flagRst)) }},
	}
	for i, e := range ends {
		e.end(live[i])
		f, r := touch(uint16(2 + i))
		if r != DropNone || !live[i].removed.Load() {
			t.Fatalf("a new flow after a connection %s: %v, the ended flow evicted %v", e.name, r, live[i].removed.Load())
		}
		tb.tcpSeen(f, f.tcpStack(flagAck)) // live: not evictable in turn
	}
}

// TestEvictSkipsEmptyShards: in a table full of live flows with a single
// evictable one, a new flow's eviction walked the shards taking each one's
// write lock until it found it: under a flood, some 32 write locks a
// packet on the locks every inbound packet and reply read-locks. Now a
// shard with nothing queued is passed over without its lock: with the
// other shards read-locked (readers busy), the new flow still gets in.
func TestEvictSkipsEmptyShards(t *testing.T) {
	tb := newFlowTable(flowShards, 350*time.Second, 120*time.Second)
	now := time.Now().UnixNano()
	src, dst := netip.MustParseAddr("10.0.2.1").As16(), netip.MustParseAddr("198.18.9.9").As16()
	key := func(port uint16) FlowKey {
		p := Packet{Proto: protoTCP, Src: src, Dst: dst, SrcPort: port, DstPort: 443}
		return p.Key(7)
	}
	var fresh, next FlowKey
	port := uint16(1)
	for tb.Len() < flowShards-1 {
		k := key(port)
		port++
		f, _ := tb.Touch(&k, []byte("hdr"), Header{}, netip.AddrPort{}, now)
		tb.tcpSeen(f, f.tcpStack(flagAck))
	}
	tb.Expire(now)                                                   // the live flows leave the queues
	for fresh = key(port); shardOf(&fresh) != flowShards-1; port++ { // the walk's last
		fresh = key(port)
	}
	port++
	for next = key(port); shardOf(&next) != 0; port++ {
		next = key(port)
	}
	tb.Touch(&fresh, []byte("hdr"), Header{}, netip.AddrPort{}, now)
	for i := range tb.shards {
		if i != 0 && i != shardOf(&fresh) {
			tb.shards[i].mu.RLock()
			defer tb.shards[i].mu.RUnlock()
		}
	}
	done := make(chan DropReason, 1)
	go func() {
		_, r := tb.Touch(&next, []byte("hdr"), Header{}, netip.AddrPort{}, now)
		done <- r
	}()
	select {
	case r := <-done:
		if r != DropNone || tb.Lookup(&fresh) != nil {
			t.Fatalf("the new flow: %v, the evictable one held %v", r, tb.Lookup(&fresh) != nil)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("eviction waited for the lock of a shard with nothing queued")
	}
}

// queued counts the entries in the clients' queues, and checks that each
// shard's published top is its heap's first.
func (c *clientShares) queued() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		top := 0
		for _, cl := range s.clients {
			n += cl.queuedN()
			top = max(top, cl.queuedN())
		}
		if int(s.top.Load()) != top {
			n = -1 << 30 // a stale top: no count can match
		}
		s.mu.Unlock()
	}
	return n
}

// floodTable is a table of 100 flows, 10 a client, with 90 of them live
// connections of nine clients, for the eviction tests below.
func floodTable(t *testing.T) (tb *flowTable, touch func(src string, proto uint8, port uint16) (*Flow, DropReason)) {
	tb = newFlowTable(100, 350*time.Second, 120*time.Second)
	tb.LimitPerClient(10)
	now := time.Now().UnixNano()
	dst := netip.MustParseAddr("198.18.9.9").As16()
	touch = func(src string, proto uint8, port uint16) (*Flow, DropReason) {
		a := netip.MustParseAddr(src).As16()
		p := Packet{Proto: proto, Src: a, Dst: dst, SrcPort: port, DstPort: 443}
		k := p.Key(7)
		return tb.Touch(&k, []byte("hdr"), Header{}, netip.AddrPort{}, now)
	}
	for c := range 9 {
		for port := range uint16(10) {
			f, r := touch(netip.AddrFrom4([4]byte{10, 0, 3, byte(c)}).String(), protoTCP, 30000+port)
			if r != DropNone {
				t.Fatalf("a live connection refused: %v", r)
			}
			tb.tcpSeen(f, f.tcpClient(flagSyn))
			tb.tcpSeen(f, f.tcpStack(flagSyn|flagAck))
			tb.tcpSeen(f, f.tcpClient(flagAck))
		}
	}
	return tb, touch
}

// TestInProgressFlowsSurviveFlood plays the reviewer's probe: a table of
// 100 with 90 live connections, a client with a DNS query awaiting its
// answer and a SYN whose destination is being dialled (no SYN-ACK yet),
// and one address sending SYNs to new ports within its share of 10.
// Eviction took the oldest evictable flow whoever held it, and the
// victim's two flows were gone after some 24 flood flows. Now the flood
// churns through its own.
func TestInProgressFlowsSurviveFlood(t *testing.T) {
	tb, touch := floodTable(t)
	dns, _ := touch("10.0.1.99", protoUDP, 53)
	syn, _ := touch("10.0.1.99", protoTCP, 5555)
	syn.tcpClient(flagSyn)
	refused := 0
	for port := range uint16(1000) {
		if _, r := touch("10.0.0.66", protoTCP, 20000+port); r != DropNone {
			refused++ // its share is full: it has taken others' places
		}
	}
	if dns.removed.Load() || syn.removed.Load() || refused != 0 {
		t.Fatalf("after 1000 flood flows: the DNS flow evicted %v, the dialling SYN's %v; %d flood flows refused", dns.removed.Load(), syn.removed.Load(), refused)
	}
	if n := tb.evicted.Load(); n != 1000-8 {
		t.Fatalf("%d evicted, want the flood's own 992", n)
	}
}

// TestEvictionPrefersFlooder: a client's new flow in a full table takes
// the place of its own oldest evictable flow, though another client's is
// older; a client holding none takes the oldest of the client holding the
// most, not the oldest of the table.
func TestEvictionPrefersFlooder(t *testing.T) {
	tb, touch := floodTable(t)
	var victim []*Flow // the oldest evictable flows
	for port := range uint16(3) {
		f, _ := touch("10.0.1.99", protoTCP, 5000+port)
		victim = append(victim, f)
	}
	var flood []*Flow
	for port := range uint16(7) {
		f, _ := touch("10.0.0.66", protoTCP, 20000+port)
		flood = append(flood, f)
	}
	for port := range uint16(7) {
		touch("10.0.0.66", protoTCP, 21000+port)
		if !flood[port].removed.Load() {
			t.Fatalf("the flooder's new flow %d did not take its own oldest's place", port)
		}
	}
	// A new client takes the place of the flooder's oldest (7 to the
	// victim's 3), not of the victim's, older.
	touch("10.0.2.1", protoTCP, 1)
	for i, f := range victim {
		if f.removed.Load() {
			t.Fatalf("the victim's flow %d was evicted", i)
		}
	}
	if n, want := tb.evicted.Load(), uint64(8); n != want {
		t.Fatalf("%d evicted, want %d", n, want)
	}
	if n := tb.clients.queued(); n != 3+6+1 {
		t.Fatalf("%d queued, want 10", n)
	}
}

// TestEvictionSparesAClientsOwnFlowsInProgress: a client opening a few
// connections at once in a full table, each still waiting for its dial,
// does not evict its own earlier ones while another client holds more
// evictable flows: its new flow takes the place of the biggest holder's.
func TestEvictionSparesAClientsOwnFlowsInProgress(t *testing.T) {
	tb, touch := floodTable(t)
	for port := range uint16(10) { // its share: the table is full
		touch("10.0.0.66", protoTCP, 20000+port)
	}
	var mine []*Flow
	for port := range uint16(3) { // each one evicts
		f, r := touch("10.0.1.99", protoTCP, 5000+port)
		if r != DropNone {
			t.Fatalf("the client's connection %d refused: %v", port, r)
		}
		mine = append(mine, f)
	}
	for i, f := range mine {
		if f.removed.Load() {
			t.Fatalf("the client's own connection %d in progress was evicted for its next one", i)
		}
	}
	if n, want := tb.evicted.Load(), uint64(3); n != want {
		t.Fatalf("%d evicted, want %d (the other client's)", n, want)
	}
}

// TestEvictConcurrent churns a small full table from several readers at
// once (new flows, connections made live and reset, expiry) and checks
// that the count, the flows and the clients' shares still agree.
func TestEvictConcurrent(t *testing.T) {
	tb := newFlowTable(50, 350*time.Second, 120*time.Second)
	tb.LimitPerClient(20)
	now := time.Now().UnixNano()
	dst := netip.MustParseAddr("198.18.9.9").As16()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 3000 {
				src := netip.AddrFrom4([4]byte{10, 0, byte(g), byte(i % 3)}).As16()
				p := Packet{Proto: protoTCP, Src: src, Dst: dst, SrcPort: uint16(i % 700), DstPort: 443}
				k := p.Key(7)
				f, r := tb.Touch(&k, []byte("hdr"), Header{}, netip.AddrPort{}, now)
				if r != DropNone {
					continue
				}
				switch i % 4 {
				case 1:
					tb.tcpSeen(f, f.tcpStack(flagAck))
				case 2:
					tb.tcpSeen(f, f.tcpClient(flagRst))
				}
				if g == 0 && i%500 == 0 {
					tb.Expire(now)
				}
			}
		}()
	}
	wg.Wait()
	flows, shares := 0, int32(0)
	for i := range tb.shards {
		flows += len(tb.shards[i].flows)
		for _, cl := range tb.clients.shards[i].clients {
			shares += cl.flows
		}
	}
	if flows != tb.Len() || int(shares) != flows || flows > 50 {
		t.Fatalf("%d flows, counted %d, %d in the clients' shares", flows, tb.Len(), shares)
	}
	tb.Expire(now)
	if q := tb.clients.queued(); q < 0 || q > flows {
		t.Fatalf("%d queued for %d flows", q, flows)
	}
}
