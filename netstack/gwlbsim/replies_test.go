package gwlbsim

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// sendDatagram sends b to to from a socket bound to from.
func sendDatagram(t *testing.T, from, to netip.AddrPort, b []byte) {
	t.Helper()
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(from))
	if err != nil {
		t.Fatalf("binding %s: %v", from, err)
	}
	defer c.Close()
	if _, err := c.WriteToUDPAddrPort(b, to); err != nil {
		t.Fatalf("sending from %s: %v", from, err)
	}
}

// TestRepliesFromTheSimulatorsOwnAddress: a target on the simulator's own
// address cannot bind the ports the simulator sends from (its sockets hold
// them), so the appliance's bound return path falls back to its GENEVE
// port: from such a target that port is accepted too, and any other still
// counts as a wrong source port.
func TestRepliesFromTheSimulatorsOwnAddress(t *testing.T) {
	simAddr, _ := testNet(116)
	simAP := netip.AddrPortFrom(simAddr, netstack.GenevePort)
	ft := newFakeTarget(t, simAddr, simAP)
	sim, err := New(Config{Addr: simAddr, Targets: []netip.AddrPort{ft.addr()}, Senders: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	g := &group{sim: sim, ep: sim.Endpoint(testEndpoint, testAttachment), targets: []*fakeTarget{ft}}
	g.ep.SetReceiver(func([]byte) {})
	if g.send(t, protoUDP, 40000, 53) != ft {
		t.Fatal("the packet did not reach the target")
	}
	r := ft.last(t)
	if c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(simAddr, r.from.Port()))); err == nil {
		c.Close()
		t.Fatalf("port %d, the flow's, could be bound on the simulator's address", r.from.Port())
	}
	ft.send(0, r.header, reflectPacket(r.inner)) // from the target's GENEVE port
	g.waitStats(t, "the reply from the target's GENEVE port", func(s Stats) bool { return s.Received == 1 })
	sendDatagram(t, netip.AddrPortFrom(simAddr, 0), simAP, append(append([]byte(nil), r.header...), reflectPacket(r.inner)...))
	g.waitStats(t, "a reply from a third port refused", func(s Stats) bool { return s.WrongSourcePort == 1 })
	if st := sim.Stats(); st.Received != 1 {
		t.Errorf("stats %+v: want the one reply from the GENEVE port delivered", st)
	}
}

// firstFragment makes a copy of pkt, an IPv4 packet, the first fragment of
// datagram id: more fragments follow.
func firstFragment(pkt []byte, id uint16) []byte {
	b := append([]byte(nil), pkt...)
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], 0x2000) // more fragments, offset 0
	b[10], b[11] = 0, 0
	binary.BigEndian.PutUint16(b[10:], ipChecksum(b[:20]))
	return b
}

// laterFragment is the last fragment of IPv4 datagram id, at offset 24:
// eight bytes, no ports.
func laterFragment(src, dst netip.Addr, proto uint8, id uint16) []byte {
	b := make([]byte, 28)
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], 3) // offset 3×8 bytes, last fragment
	b[8], b[9] = 64, proto
	s, d := src.As4(), dst.As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	binary.BigEndian.PutUint16(b[10:], ipChecksum(b[:20]))
	copy(b[20:], "fragment")
	return b
}

func dgram(hdr, inner []byte) []byte { return append(append([]byte(nil), hdr...), inner...) }

// TestReplyFragmentsHeldToTheirFlow: a later fragment of a reply carries
// no ports; it is tied to its flow through its datagram's first fragment
// and must come from that flow's target and source port under that flow's
// header. One whose first fragment was not seen (reordered ahead of it)
// must carry the current header of a flow of its endpoint between its
// addresses, and come from that flow's target and port. Every refusal is
// counted, and only the good fragments reach the client.
func TestReplyFragmentsHeldToTheirFlow(t *testing.T) {
	g := newGroup(t, 117, 2, nil)
	a, b := g.targets[0], g.targets[1]
	port := g.portTo(t, a, protoUDP, 40000, 53)
	if g.send(t, protoUDP, port, 53) != a {
		t.Fatal("the flow's packet did not reach its target")
	}
	r := a.last(t)
	simAP := g.sim.Addr()
	rogue := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 86, 117, 99}), r.from.Port()) // no target
	forged := netstack.AppendHeader(nil, netstack.EtherTypeIPv4, 0, testEndpoint, 0xdead, 0x12345678, nil)
	otherAttachment := netstack.AppendHeader(nil, netstack.EtherTypeIPv4, 0, testEndpoint, 0xdead, r.cookie, nil)

	var want Stats
	step := func(what string, send func(), bump func(*Stats)) {
		t.Helper()
		send()
		bump(&want)
		w := want
		g.waitStats(t, what, func(s Stats) bool {
			return s.Received == w.Received && s.UnknownFlow == w.UnknownFlow && s.WrongTarget == w.WrongTarget &&
				s.WrongSourcePort == w.WrongSourcePort && s.HeaderMismatch == w.HeaderMismatch
		})
	}
	first := firstFragment(reflectPacket(r.inner), 0x4242)
	later := laterFragment(testDest, testClient, protoUDP, 0x4242)

	// Before the first fragment: a forged header from no target.
	step("a forged fragment from no target refused", func() { sendDatagram(t, rogue, simAP, dgram(forged, later)) },
		func(s *Stats) { s.UnknownFlow++ })
	step("the first fragment accepted", func() { a.send(r.from.Port(), r.header, first) },
		func(s *Stats) { s.Received++ })
	step("a later fragment from no target refused", func() { sendDatagram(t, rogue, simAP, dgram(r.header, later)) },
		func(s *Stats) { s.WrongTarget++ })
	step("a later fragment from another target refused", func() { b.send(r.from.Port(), r.header, later) },
		func(s *Stats) { s.WrongTarget++ })
	step("a later fragment from another port refused", func() { a.send(0, r.header, later) },
		func(s *Stats) { s.WrongSourcePort++ })
	step("a later fragment under another attachment refused", func() { a.send(r.from.Port(), otherAttachment, later) },
		func(s *Stats) { s.HeaderMismatch++ })
	step("a later fragment under a forged header refused", func() { a.send(r.from.Port(), forged, later) },
		func(s *Stats) { s.HeaderMismatch++ })
	step("the later fragment accepted", func() { a.send(r.from.Port(), r.header, later) },
		func(s *Stats) { s.Received++ })

	// A datagram whose later fragment comes first.
	early := laterFragment(testDest, testClient, protoUDP, 0x4343)
	step("an early fragment under a cookie never issued refused", func() { a.send(r.from.Port(), forged, early) },
		func(s *Stats) { s.UnknownFlow++ })
	step("an early fragment under another attachment refused", func() { a.send(r.from.Port(), otherAttachment, early) },
		func(s *Stats) { s.HeaderMismatch++ })
	step("an early fragment from no target refused", func() { sendDatagram(t, rogue, simAP, dgram(r.header, early)) },
		func(s *Stats) { s.WrongTarget++ })
	step("an early fragment from another port refused", func() { a.send(0, r.header, early) },
		func(s *Stats) { s.WrongSourcePort++ })
	elsewhere := laterFragment(testDest, netip.MustParseAddr("198.18.50.9"), protoUDP, 0x4343)
	step("an early fragment between other addresses refused", func() { a.send(r.from.Port(), r.header, elsewhere) },
		func(s *Stats) { s.UnknownFlow++ })
	step("the early fragment accepted", func() { a.send(r.from.Port(), r.header, early) },
		func(s *Stats) { s.Received++ })

	if len(g.replies) != 3 {
		t.Errorf("%d packets reached the client, want the 3 accepted", len(g.replies))
	}
	if ts := g.target(t, a); ts.Replies != 3 {
		t.Errorf("target %+v: want 3 replies counted", ts)
	}
}

// TestReplyFragmentsIPv6: an IPv6 reply's later fragment is tied to its
// flow by the fragment header's identification.
func TestReplyFragmentsIPv6(t *testing.T) {
	g := newGroup(t, 118, 1, nil)
	a := g.targets[0]
	client, dest := netip.MustParseAddr("2001:db8::5"), netip.MustParseAddr("2001:db8:2::3")
	if err := g.ep.Send(ip6Packet(client, dest, 40000, 53, nil, []byte("q"))); err != nil {
		t.Fatal(err)
	}
	g.waitStats(t, "the query sent", func(s Stats) bool { return s.Sent == 1 })
	var r received
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(time.Millisecond) {
		if rs := a.received(); len(rs) > 0 {
			r = rs[0]
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the target got nothing")
		}
	}
	other := netstack.AppendHeader(nil, netstack.EtherTypeIPv6, 0, testEndpoint, 0xdead, r.cookie, nil)
	first := ip6Packet(dest, client, 53, 40000, &ip6Frag{id: 0x77777777, more: true}, []byte("answer.."))
	later := ip6Packet(dest, client, 0, 0, &ip6Frag{id: 0x77777777, offset: 2}, []byte("fragment"))
	a.send(r.from.Port(), r.header, first)
	g.waitStats(t, "the first fragment accepted", func(s Stats) bool { return s.Received == 1 })
	a.send(r.from.Port(), other, later)
	g.waitStats(t, "a later fragment under another attachment refused", func(s Stats) bool { return s.HeaderMismatch == 1 })
	a.send(0, r.header, later)
	g.waitStats(t, "a later fragment from another port refused", func(s Stats) bool { return s.WrongSourcePort == 1 })
	a.send(r.from.Port(), r.header, later)
	g.waitStats(t, "the later fragment accepted", func(s Stats) bool { return s.Received == 2 })
}

// ip6Frag describes a fragment header: identification, offset in 8-byte
// units, more fragments.
type ip6Frag struct {
	id     uint32
	offset uint16
	more   bool
}

// ip6Packet builds an IPv6 UDP packet, or with frag a fragment of one: the
// first (offset 0) carries the UDP header, a later one only payload.
func ip6Packet(src, dst netip.Addr, sport, dport uint16, frag *ip6Frag, payload []byte) []byte {
	b := make([]byte, 40, 40+8+8+len(payload))
	b[0] = 0x60
	b[6], b[7] = protoUDP, 64
	s, d := src.As16(), dst.As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	if frag != nil {
		b[6] = 44
		fh := make([]byte, 8)
		fh[0] = protoUDP
		v := frag.offset << 3
		if frag.more {
			v |= 1
		}
		binary.BigEndian.PutUint16(fh[2:], v)
		binary.BigEndian.PutUint32(fh[4:], frag.id)
		b = append(b, fh...)
	}
	if frag == nil || frag.offset == 0 {
		udp := make([]byte, 8)
		binary.BigEndian.PutUint16(udp[0:], sport)
		binary.BigEndian.PutUint16(udp[2:], dport)
		binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
		b = append(b, udp...)
	}
	b = append(b, payload...)
	binary.BigEndian.PutUint16(b[4:], uint16(len(b)-40))
	return b
}

// TestReplyFragsExpire: an entry of the reply fragment table lasts its
// time to live and no longer, and a table crowded with datagrams still
// finds the newest.
func TestReplyFragsExpire(t *testing.T) {
	var tab replyFrags
	f := &simFlow{}
	p := netstack.Packet{Proto: protoUDP, FragmentID: 7}
	tab.remember(1, &p, f, 1000)
	if got := tab.follow(1, &p, 1000+replyFragTTL); got != f {
		t.Fatalf("within its time to live: %p, want %p", got, f)
	}
	if got := tab.follow(2, &p, 1000); got != nil {
		t.Fatalf("another endpoint's datagram followed the entry")
	}
	if got := tab.follow(1, &p, 1001+replyFragTTL); got != nil {
		t.Fatalf("after its time to live: %p, want none", got)
	}
	for id := range uint32(10000) {
		p.FragmentID = id
		tab.remember(1, &p, f, 2000+int64(id))
	}
	if got := tab.follow(1, &p, 20000); got != f {
		t.Fatalf("the newest of 10000 datagrams not found")
	}
}

// paddedReply is the reflected inner UDP packet of r grown so that its
// GENEVE datagram under r's header is size bytes with the outer IPv4 and
// UDP headers.
func paddedReply(r received, size int) []byte {
	p := reflectPacket(r.inner)
	p = append(p, make([]byte, size-outerIPv4UDP-len(r.header)-len(p))...)
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	binary.BigEndian.PutUint16(p[24:], uint16(len(p)-20))
	p[10], p[11] = 0, 0
	binary.BigEndian.PutUint16(p[10:], ipChecksum(p[:20]))
	return p
}

// A reply datagram the GWLB would not carry (over 8500 bytes, outer IPv4
// and UDP headers included) is refused and counted as too_big, so that a
// test behind the simulator catches an appliance that breaks its bound on
// reply sizes; one of exactly 8500 bytes is delivered.
func TestReplyOverGWLBSizeRefused(t *testing.T) {
	g := newGroup(t, 202, 1, nil)
	a := g.targets[0]
	if g.send(t, protoUDP, 40001, 53) != a {
		t.Fatal("no target got the packet")
	}
	r := a.last(t)
	a.send(r.from.Port(), r.header, paddedReply(r, 8500))
	g.waitStats(t, "the 8500-byte reply delivered", func(s Stats) bool { return s.Received == 1 })

	a.send(r.from.Port(), r.header, paddedReply(r, 8501))
	st := g.waitStats(t, "the 8501-byte reply counted", func(s Stats) bool {
		return s.Received+s.TooBig+s.UnknownFlow+s.HeaderMismatch+s.WrongTarget+s.WrongSourcePort+s.Malformed > 1
	})
	if st.Received != 1 || st.TooBig != 1 {
		t.Errorf("after an 8500-byte and an 8501-byte reply (outer headers included): %+v; want received 1, too_big 1", st)
	}
}

// TestReplyWrongDirectionRefused: a "reply" under the flow's own header,
// from its target and port, whose inner packet runs client to destination
// is refused and counted as wrong_direction: a GWLB carries a packet on
// toward its inner destination, so it would leave as the client's traffic,
// around the appliance's SNAT, and a simulator that delivered it would
// hide an appliance that does so. The reflected reply is delivered.
func TestReplyWrongDirectionRefused(t *testing.T) {
	g := newGroup(t, 201, 1, nil)
	a := g.targets[0]
	if g.send(t, protoUDP, 40000, 53) != a {
		t.Fatal("no target got the packet")
	}
	r := a.last(t)
	a.send(r.from.Port(), r.header, r.inner) // not reflected: client to destination
	st := g.waitStats(t, "the wrong-direction reply counted", func(s Stats) bool {
		return s.Received+s.WrongDirection+s.UnknownFlow+s.HeaderMismatch+s.WrongTarget+s.WrongSourcePort+s.Malformed > 0
	})
	if st.Received != 0 || st.WrongDirection != 1 {
		t.Fatalf("after a client-to-destination packet sent back as a reply: %+v; want received 0, wrong_direction 1", st)
	}
	a.send(r.from.Port(), r.header, reflectPacket(r.inner))
	if st := g.waitStats(t, "the reflected reply delivered", func(s Stats) bool { return s.Received == 1 }); st.WrongDirection != 1 {
		t.Errorf("stats %+v", st)
	}
}
