package netstack

import (
	"net"
	"net/netip"
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
		f, r := tb.Touch(&k, src, []byte("hdr"), Header{}, netip.AddrPort{}, now)
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
	// Oldest first: in each shard, no flow evicted is newer than one held.
	var held [flowShards]bool
	for i, k := range flood {
		switch sh := shardOf(&k); {
		case tb.Lookup(&k) != nil:
			held[sh] = true
		case held[sh]:
			t.Fatalf("flood flow %d was evicted before an older one of its shard", i)
		}
	}

	// A table full of established flows refuses a new one.
	full := newFlowTable(3, 350*time.Second, 120*time.Second)
	for port := range uint16(3) {
		p := Packet{Proto: protoTCP, Src: legit, Dst: dst, SrcPort: port, DstPort: 443}
		k := p.Key(7)
		f, _ := full.Touch(&k, legit, []byte("hdr"), Header{}, netip.AddrPort{}, now)
		f.tcpStack(flagAck)
	}
	p := Packet{Proto: protoTCP, Src: victim, Dst: dst, SrcPort: 1, DstPort: 443}
	k = p.Key(7)
	if _, r := full.Touch(&k, victim, []byte("hdr"), Header{}, netip.AddrPort{}, now); r != DropFlowTableFull || full.evicted.Load() != 0 {
		t.Fatalf("a table of established flows: %v, %d evicted", r, full.evicted.Load())
	}

	// Expire prunes the queues to the fresh flows still held.
	tb.Expire(now)
	queued := 0
	for i := range tb.shards {
		queued += len(tb.shards[i].fresh) - tb.shards[i].freshHead
	}
	if want := tb.Len() - len(kept); queued != want || tb.freshQueued.Load() != int64(want) {
		t.Fatalf("%d queued (counted %d), want the %d fresh flows", queued, tb.freshQueued.Load(), want)
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
