package gwlbsim

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// fuzzReplyNet is the loopback /24 of FuzzReplyHeldToItsFlow (testNet).
// Nothing is sent on it: flows are made without a packet leaving
// (Endpoint.route), and replies are handed to handleReply directly.
const fuzzReplyNet = 119

// replyFlow is one flow of the fuzz simulator: the packet that made it,
// the header and source port its replies must come with.
type replyFlow struct {
	f      *simFlow
	sent   []byte // the client's packet that made the flow
	header []byte
}

// newReplySim starts a simulator with one target and three flows of one
// endpoint (UDP and TCP over IPv4, UDP over IPv6), whose replies it
// takes. Fuzz workers are processes of their own, each with a simulator:
// its listening port is one the kernel had free, not the fixed 6081.
func newReplySim(f *testing.F) (*Sim, *Endpoint, []replyFlow) {
	simAddr, target := testNet(fuzzReplyNet)
	var sim *Sim
	var err error
	for range 3 { // the port may be taken between the probe and New
		var c *net.UDPConn
		if c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(simAddr, 0))); err != nil {
			f.Fatal(err)
		}
		port := c.LocalAddr().(*net.UDPAddr).AddrPort().Port()
		c.Close()
		sim, err = New(Config{Addr: simAddr, ListenPort: port, Senders: 2,
			Targets: []netip.AddrPort{netip.AddrPortFrom(target(0), netstack.GenevePort)}})
		if err == nil {
			break
		}
	}
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(sim.Close)
	ep := sim.Endpoint(testEndpoint, testAttachment)
	v6Client, v6Dest := netip.MustParseAddr("fd00::2"), netip.MustParseAddr("2001:db8::3")
	var flows []replyFlow
	for _, pkt := range [][]byte{
		ipPacket(protoUDP, netip.AddrPortFrom(testClient, 40000), netip.AddrPortFrom(testDest, 53), []byte("query")),
		ipPacket(protoTCP, netip.AddrPortFrom(testClient, 40001), netip.AddrPortFrom(testDest, 443), nil),
		ip6UDPPacket(netip.AddrPortFrom(v6Client, 40002), netip.AddrPortFrom(v6Dest, 53), []byte("query")),
	} {
		fl, r, t, err := ep.route(pkt)
		if err != nil || t == nil {
			f.Fatalf("making a flow: %v, target %v", err, t)
		}
		flows = append(flows, replyFlow{f: fl, sent: pkt, header: r.header})
	}
	return sim, ep, flows
}

// ip6UDPPacket builds an IPv6 UDP packet from src to dst (checksum zero:
// the simulator parses headers only).
func ip6UDPPacket(src, dst netip.AddrPort, payload []byte) []byte {
	b := make([]byte, 40+8+len(payload))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(8+len(payload)))
	b[6], b[7] = protoUDP, 64
	s, d := src.Addr().As16(), dst.Addr().As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	binary.BigEndian.PutUint16(b[40:], src.Port())
	binary.BigEndian.PutUint16(b[42:], dst.Port())
	binary.BigEndian.PutUint16(b[44:], uint16(8+len(payload)))
	copy(b[48:], payload)
	return b
}

// reflect6 is reflectPacket for an IPv6 packet without extension headers.
func reflect6(in []byte) []byte {
	out := append([]byte(nil), in...)
	copy(out[8:24], in[24:40])
	copy(out[24:40], in[8:24])
	copy(out[40:42], in[42:44])
	copy(out[42:44], in[40:42])
	return out
}

// ip6Fragment is pkt, an IPv6 packet without extension headers, with a
// fragment header of datagram id at offset off (8-byte units) inserted.
func ip6Fragment(pkt []byte, id uint32, off uint16, more bool) []byte {
	b := make([]byte, 0, len(pkt)+8)
	b = append(b, pkt[:40]...)
	next := b[6]
	b[6] = 44 // fragment header
	fo := off << 3
	if more {
		fo |= 1
	}
	b = append(b, next, 0, byte(fo>>8), byte(fo), byte(id>>24), byte(id>>16), byte(id>>8), byte(id))
	b = append(b, pkt[40:]...)
	binary.BigEndian.PutUint16(b[4:], uint16(len(b)-40))
	return b
}

// replyCounts sums the counters of which handleReply bumps exactly one
// per reply, and returns Received on its own.
func replyCounts(s Stats) (sum, received uint64) {
	return s.Received + s.TooBig + s.Malformed + s.UnknownEndpoint + s.UnknownFlow + s.WrongTarget +
		s.WrongSourcePort + s.HeaderMismatch + s.WrongDirection, s.Received
}

// FuzzReplyHeldToItsFlow: handleReply (replies.go) and its fragment table
// (replyfrags.go) take any bytes an appliance sends back. Every reply is
// counted once, accepted or refused for one reason; one accepted came from
// its flow's target and source port, under that flow's header byte for
// byte, and is delivered whole to the flow's client; and once a first
// fragment is accepted, a later fragment of its datagram (which carries
// no ports) from the same target, port and header is accepted too, while
// the same fragment from another port is not. The fuzzer chooses the
// GENEVE header (a flow's, or bytes of its own), the inner packets (two
// in a row, so the second may follow the first's fragment entry) and
// where they come from.
func FuzzReplyHeldToItsFlow(f *testing.F) {
	sim, ep, flows := newReplySim(f)
	tgt := flows[0].f.route.Load().target.addr.Addr()
	var delivered []byte
	ep.SetReceiver(func(inner []byte) { delivered = append(delivered[:0], inner...) })

	udp4, tcp4, udp6 := reflectPacket(flows[0].sent), reflectPacket(flows[1].sent), reflect6(flows[2].sent)
	first4 := firstFragment(udp4, 0x4242)
	later4 := laterFragment(testDest, testClient, protoUDP, 0x4242)
	first6 := ip6Fragment(udp6, 0x01020304, 0, true)
	later6 := ip6Fragment(udp6[:40+8], 0x01020304, 3, false) // eight bytes at offset 24
	for _, s := range []struct {
		flow, from uint8
		hdr        []byte
		a, b       []byte
	}{
		{0, 0, nil, udp4, nil},                      // a reply: accepted
		{0, 0, nil, udp4, udp4},                     // twice
		{1, 0, nil, tcp4, nil},                      // TCP
		{2, 0, nil, udp6, nil},                      // IPv6
		{0, 1, nil, udp4, nil},                      // from another port
		{0, 2, nil, udp4, nil},                      // from another address
		{0, 0, nil, first4, later4},                 // a first fragment, then a later one
		{0, 0, nil, later4, first4},                 // reordered: the later one first
		{2, 0, nil, first6, later6},                 // IPv6 fragments
		{2, 0, nil, later6, first6},                 //
		{1, 0, nil, udp4, nil},                      // under another flow's header
		{0, 0, nil, flows[0].sent, nil},             // to the end that never sent
		{3, 0, []byte{0, 0, 0x65, 0x58}, udp4, nil}, // a forged header
		{3, 0, netstack.AppendHeader(nil, netstack.EtherTypeIPv4, 0, testEndpoint, testAttachment, 0x12345678, nil), later4, nil},
		{0, 0, nil, make([]byte, maxGWLBDatagram), nil}, // too big
		{0, 0, nil, []byte{0x45}, nil},                  // not a packet
	} {
		f.Add(s.flow, s.from, s.hdr, s.a, s.b)
	}
	f.Fuzz(func(t *testing.T, flowSel, fromSel uint8, hdr, a, b []byte) {
		// Each input on its own: no entry of an earlier one.
		sim.replyFrags.buckets = [replyFragBuckets][replyFragWays]replyFragEntry{}
		fl := flows[int(flowSel)%len(flows)]
		if int(flowSel)%(len(flows)+1) != len(flows) {
			hdr = fl.header
		}
		from := netip.AddrPortFrom(tgt, fl.f.port)
		switch fromSel % 3 {
		case 1:
			from = netip.AddrPortFrom(tgt, fl.f.port^0x8000)
		case 2:
			from = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 86, fuzzReplyNet, 99}), fl.f.port)
		}
		reply := func(inner []byte) bool {
			t.Helper()
			buf := make([]byte, 0, ReplyHeadroom+len(hdr)+len(inner))
			buf = append(append(append(buf, make([]byte, ReplyHeadroom)...), hdr...), inner...)
			sum0, got0 := replyCounts(sim.Stats())
			delivered = delivered[:0]
			sim.handleReply(buf, ReplyHeadroom, from)
			sum1, got1 := replyCounts(sim.Stats())
			if sum1 != sum0+1 {
				t.Fatalf("a reply bumped the counters by %d, want 1: %+v", sum1-sum0, sim.Stats())
			}
			if got1 == got0 {
				return false
			}
			h, reason := netstack.ParseHeader(buf[ReplyHeadroom:])
			if reason != netstack.DropNone {
				t.Fatalf("a reply whose header does not parse (%s) was accepted", reason)
			}
			var owner *replyFlow
			for i := range flows {
				if bytes.Equal(flows[i].header, buf[ReplyHeadroom:ReplyHeadroom+h.Len]) {
					owner = &flows[i]
				}
			}
			if owner == nil {
				t.Fatalf("a reply under header %x, no flow's, was accepted", buf[ReplyHeadroom:ReplyHeadroom+h.Len])
			}
			if from != netip.AddrPortFrom(tgt, owner.f.port) {
				t.Fatalf("a reply from %v was accepted for a flow sent from port %d of %v", from, owner.f.port, tgt)
			}
			if !bytes.Equal(delivered, buf[ReplyHeadroom+h.Len:]) {
				t.Fatalf("delivered %x, the reply held %x", delivered, buf[ReplyHeadroom+h.Len:])
			}
			p, reason := netstack.ParsePacket(delivered, h.Protocol)
			if reason != netstack.DropNone || p.DstAddr() != owner.f.src.Addr() {
				t.Fatalf("delivered a packet to %v (%s), not to the flow's client %v", p.DstAddr(), reason, owner.f.src.Addr())
			}
			return true
		}
		for _, inner := range [][]byte{a, b} {
			if inner == nil || !reply(inner) {
				continue
			}
			// An accepted first fragment: a later fragment of its datagram
			// is taken from the same target and port, under the same
			// header, and from no other port.
			etherType := uint16(netstack.EtherTypeIPv4)
			if inner[0]>>4 == 6 {
				etherType = netstack.EtherTypeIPv6
			}
			p, _ := netstack.ParsePacket(inner, etherType)
			if p.Fragment || !p.MoreFragments {
				continue
			}
			var later []byte
			if p.IPv6 {
				later = ip6Fragment(ip6UDPPacket(netip.AddrPortFrom(p.SrcAddr(), 0), netip.AddrPortFrom(p.DstAddr(), 0), nil)[:40+8], p.FragmentID, 3, false)
			} else {
				later = laterFragment(p.SrcAddr(), p.DstAddr(), p.Proto, uint16(p.FragmentID))
			}
			if !reply(later) {
				t.Fatalf("the first fragment %x was accepted, its later fragment %x was not: %+v", inner, later, sim.Stats())
			}
			saved := from
			from = netip.AddrPortFrom(from.Addr(), from.Port()^0x8000)
			if reply(later) {
				t.Fatalf("a later fragment %x was accepted from %v, its flow's port is %d", later, from, saved.Port())
			}
			from = saved
		}
	})
}
