package netstack

import (
	"net/netip"
	"testing"
	"time"
)

func keyFor(ep uint64, proto uint8, port uint16) FlowKey {
	return clientKeyFor(ep, netip.MustParseAddr("::ffff:198.18.0.5").As16(), proto, port)
}

// clientKeyFor is the key of a flow of client's from port to port 80.
func clientKeyFor(ep uint64, client [16]byte, proto uint8, port uint16) FlowKey {
	p := Packet{Proto: proto, Src: client, Dst: netip.MustParseAddr("::ffff:127.0.0.1").As16(), SrcPort: port, DstPort: 80}
	return p.Key(ep)
}

func TestFlowTableTouch(t *testing.T) {
	ft := newFlowTable(2, time.Minute, time.Second)
	gwlb := netip.MustParseAddrPort("127.0.0.2:40000")
	hdr := AppendHeader(nil, EtherTypeIPv4, 0, 1, 2, 3, nil)
	h, _ := ParseHeader(append(hdr, 0x45))
	k1, k2, k3 := keyFor(1, 6, 1), keyFor(1, 6, 2), keyFor(1, 6, 3)
	f1, r := ft.Touch(&k1, hdr, h, gwlb, 1)
	if r != DropNone || ft.Lookup(&k1) != f1 || ft.Len() != 1 {
		t.Fatal("a new flow is not in the table")
	}
	if n := testing.AllocsPerRun(100, func() { ft.Touch(&k1, hdr, h, gwlb, 2) }); n != 0 {
		t.Fatalf("touching a known flow allocates %v times", n)
	}
	// The GWLB moves the flow to a new source port and cookie: replies follow.
	hdr2 := AppendHeader(nil, EtherTypeIPv4, 0, 1, 2, 4, nil)
	h2, _ := ParseHeader(append(hdr2, 0x45))
	gwlb2 := netip.MustParseAddrPort("127.0.0.2:40001")
	ft.Touch(&k1, hdr2, h2, gwlb2, 3)
	if tn := f1.tunnel.Load(); tn.gwlb != gwlb2 || tn.parsed.FlowCookie != 4 || string(tn.header) != string(hdr2) {
		t.Fatalf("flow kept its old tunnel: %+v", tn)
	}
	f2, _ := ft.Touch(&k2, hdr, h, gwlb, 4)
	for _, f := range []*Flow{f1, f2} { // established: never evicted
		f.tcpClient(flagSyn)
		f.tcpStack(flagSyn | flagAck)
		f.tcpClient(flagAck)
	}
	if _, r := ft.Touch(&k3, hdr, h, gwlb, 5); r != DropFlowTableFull || ft.Len() != 2 {
		t.Fatalf("a full table took a third flow (len %d)", ft.Len())
	}
}

func TestFlowTableExpire(t *testing.T) {
	ft := newFlowTable(10, time.Minute, time.Second)
	gwlb := netip.MustParseAddrPort("127.0.0.2:40000")
	hdr := AppendHeader(nil, EtherTypeIPv4, 0, 1, 2, 3, nil)
	h, _ := ParseHeader(append(hdr, 0x45))
	tcpKey, udpKey := keyFor(1, 6, 1), keyFor(1, 17, 1)
	ft.Touch(&tcpKey, hdr, h, gwlb, 0)
	ft.Touch(&udpKey, hdr, h, gwlb, 0)
	if n := ft.Expire(int64(2 * time.Second)); n != 1 || ft.Lookup(&udpKey) != nil || ft.Lookup(&tcpKey) == nil {
		t.Fatalf("after 2s: expired %d; want only the UDP flow gone", n)
	}
	if n := ft.Expire(int64(61 * time.Second)); n != 1 || ft.Len() != 0 {
		t.Fatalf("after 61s: expired %d, %d left", n, ft.Len())
	}
	if got := ft.PerEndpoint()[1]; got != 0 {
		t.Fatalf("endpoint still counts %d flows", got)
	}
}

// One client cannot hold more than its share; others still get flows, and
// an expired flow gives its place back.
func TestFlowTablePerClient(t *testing.T) {
	ft := newFlowTable(100, time.Minute, time.Second)
	ft.LimitPerClient(2)
	gwlb := netip.MustParseAddrPort("127.0.0.2:40000")
	hdr := AppendHeader(nil, EtherTypeIPv4, 0, 1, 2, 3, nil)
	h, _ := ParseHeader(append(hdr, 0x45))
	greedy, other := netip.MustParseAddr("::ffff:198.18.0.5").As16(), netip.MustParseAddr("::ffff:198.18.0.6").As16()
	touch := func(ep uint64, client [16]byte, proto uint8, port uint16, now int64) DropReason {
		k := clientKeyFor(ep, client, proto, port)
		_, r := ft.Touch(&k, hdr, h, gwlb, now)
		return r
	}
	if touch(1, greedy, 17, 1, 0) != DropNone || touch(1, greedy, 6, 2, 0) != DropNone {
		t.Fatal("a client's first two flows refused")
	}
	if r := touch(1, greedy, 6, 3, 0); r != DropClientFlowLimit {
		t.Fatalf("third flow of one client: %v, want %v", r, DropClientFlowLimit)
	}
	if touch(1, greedy, 6, 2, 0) != DropNone {
		t.Fatal("a known flow of a client at its share was refused")
	}
	if touch(1, other, 6, 4, 0) != DropNone || touch(2, greedy, 6, 5, 0) != DropNone {
		t.Fatal("another client, or the same address behind another endpoint, was refused")
	}
	// IPv6: one /80 (a prefix a VPC delegates to one instance) is one
	// client, whichever of its addresses it uses; another /80 of the same
	// /64 (another instance of the subnet) is another client.
	v6a, v6b := netip.MustParseAddr("2001:db8:1:2::a").As16(), netip.MustParseAddr("2001:db8:1:2::b").As16()
	if touch(3, v6a, 6, 1, 0) != DropNone || touch(3, v6b, 6, 2, 0) != DropNone || touch(3, v6b, 6, 3, 0) != DropClientFlowLimit {
		t.Fatal("two addresses of one IPv6 /80 got more than one share")
	}
	if touch(3, netip.MustParseAddr("2001:db8:1:3::a").As16(), 6, 4, 0) != DropNone {
		t.Fatal("another /64 was refused")
	}
	if touch(3, netip.MustParseAddr("2001:db8:1:2:1::a").As16(), 6, 5, 0) != DropNone {
		t.Fatal("another /80 of the same /64 was refused")
	}
	ft.Expire(int64(2 * time.Second)) // the UDP flow idles out
	if r := touch(1, greedy, 6, 3, int64(2*time.Second)); r != DropNone {
		t.Fatalf("after one of its flows expired: %v", r)
	}
	if n := testing.AllocsPerRun(100, func() { touch(1, greedy, 6, 3, 3) }); n != 0 {
		t.Fatalf("touching a known flow with a per-client cap allocates %v times", n)
	}
}

// TestFlowTableMemoryPressure: while memory is short, a client holding
// ShortMemoryClientFlows flows gets no new one and a client holding fewer
// still does; while it is critical, the same at CriticalMemoryClientFlows;
// known flows carry on
// throughout, and once memory is ample again the table admits by count.
func TestFlowTableMemoryPressure(t *testing.T) {
	ft := newFlowTable(10*ShortMemoryClientFlows, time.Minute, time.Minute)
	gwlb := netip.MustParseAddrPort("127.0.0.2:40000")
	hdr := AppendHeader(nil, EtherTypeIPv4, 0, 1, 2, 3, nil)
	h, _ := ParseHeader(append(hdr, 0x45))
	hoarder, light := netip.MustParseAddr("::ffff:198.18.0.5").As16(), netip.MustParseAddr("::ffff:198.18.0.6").As16()
	touch := func(client [16]byte, port uint16) DropReason {
		k := clientKeyFor(1, client, 6, port)
		_, r := ft.Touch(&k, hdr, h, gwlb, 0)
		return r
	}
	// No per-client cap set: the hoarder takes what it likes while memory
	// is ample.
	for p := range uint16(2 * ShortMemoryClientFlows) {
		if r := touch(hoarder, p+1); r != DropNone {
			t.Fatalf("flow %d of a client while memory is ample: %v", p+1, r)
		}
	}
	ft.setPressure(MemoryShort)
	if r := touch(hoarder, 60000); r != DropMemoryPressure {
		t.Fatalf("a new flow of a client holding %d flows while memory is short: %v, want %v", 2*ShortMemoryClientFlows, r, DropMemoryPressure)
	}
	if r := touch(hoarder, 1); r != DropNone {
		t.Fatalf("a known flow while memory is short: %v", r)
	}
	for p := range uint16(ShortMemoryClientFlows) {
		if r := touch(light, p+1); r != DropNone {
			t.Fatalf("flow %d of a light client while memory is short: %v", p+1, r)
		}
	}
	if r := touch(light, 60000); r != DropMemoryPressure {
		t.Fatalf("flow %d of the light client while memory is short: %v, want %v", ShortMemoryClientFlows+1, r, DropMemoryPressure)
	}
	// Critical: a client holding CriticalMemoryClientFlows gets no more,
	// one holding fewer still does (the hoarder must not lock it out).
	ft.setPressure(MemoryCritical)
	ft.Expire(int64(2 * time.Minute)) // every flow gone: the light client holds none
	for p := range uint16(CriticalMemoryClientFlows) {
		if r := touch(light, p+1); r != DropNone {
			t.Fatalf("flow %d of a light client while memory is critical: %v", p+1, r)
		}
	}
	if r := touch(light, 60000); r != DropMemoryPressure {
		t.Fatalf("flow %d of a client while memory is critical: %v, want %v", CriticalMemoryClientFlows+1, r, DropMemoryPressure)
	}
	ft.Expire(int64(4 * time.Minute))
	ft.setPressure(MemoryAmple)
	if r := touch(hoarder, 60000); r != DropNone {
		t.Fatalf("a new flow once memory is ample again: %v", r)
	}
	if ft.Len() != 1 {
		t.Fatalf("%d flows in the table, want 1: refused flows must not be counted", ft.Len())
	}
}

// TestFlowTableUnrepliedExpireSoon: a flow other than TCP that the stack
// never replied on lives for the transitory timeout, not the idle timeout:
// a datagram to a new port made a flow for 120 s, and a client spraying
// ports held its share of the table at a few hundred datagrams a second.
// One replied to keeps the idle timeout.
func TestFlowTableUnrepliedExpireSoon(t *testing.T) {
	ft := newFlowTable(10, time.Hour, 2*time.Minute)
	ft.SetTransitory(30 * time.Second)
	gwlb := netip.MustParseAddrPort("127.0.0.2:40000")
	hdr := AppendHeader(nil, EtherTypeIPv4, 0, 1, 2, 3, nil)
	h, _ := ParseHeader(append(hdr, 0x45))
	sprayed, answered := keyFor(1, 17, 1), keyFor(1, 17, 2)
	ft.Touch(&sprayed, hdr, h, gwlb, 0)
	f, _ := ft.Touch(&answered, hdr, h, gwlb, 0)
	f.replied.Store(true)
	if n := ft.Expire(int64(31 * time.Second)); n != 1 || ft.Lookup(&sprayed) != nil || ft.Lookup(&answered) == nil {
		t.Fatalf("after 31 s: %d expired; want only the flow never replied to", n)
	}
	if n := ft.Expire(int64(121 * time.Second)); n != 1 || ft.Len() != 0 {
		t.Fatalf("after 121 s: %d expired, %d left", n, ft.Len())
	}
}
