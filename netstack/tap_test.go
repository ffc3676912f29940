package netstack

import (
	"net/netip"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/monoclock"
)

// copyTap is a Tap that copies each packet, as package capture does into
// its queue's slots.
type copyTap struct {
	buf    []byte
	in, ou int
}

func (c *copyTap) Packet(_ uint64, _ uint32, out bool, _ int64, _ Packet, pkt []byte) {
	copy(c.buf, pkt)
	if out {
		c.ou++
	} else {
		c.in++
	}
}

// BenchmarkInboundDatagramTapped is BenchmarkInboundDatagram with a Tap,
// over data segments (ACK|PSH, checksums that hold, which a tap has
// checked): the hook must not make the packet path allocate. (A SYN's data
// is cut off in a copy for the tap, which allocates: stackdrops.go.)
func BenchmarkInboundDatagramTapped(b *testing.B) {
	tap := &copyTap{buf: make([]byte, maxDatagram)}
	s := &Server{flows: newFlowTable(1<<20, time.Hour, time.Hour), ret: &discardPath{}, done: make(chan struct{})}
	s.cfg.MTU = DefaultMTU
	s.cfg.Tap = tap
	st := &endpointStack{srv: s, endpoint: 7, link: &link{srv: s, endpoint: 7, mtu: DefaultMTU}}
	s.stacks.Store(uint64(7), st)
	dgrams := benchSegments(b, 1400, flagAck|0x08)
	gwlb := netip.MustParseAddrPort("127.0.0.2:40000")
	establishFlows(s, gwlb, dgrams[:benchFlows]...)
	b.ReportAllocs()
	b.SetBytes(int64(len(dgrams[0])))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s.handleDatagram(dgrams[i%benchFlows], gwlb, nil)
	}
	b.StopTimer()
	if tap.in != b.N {
		b.Fatalf("tap saw %d of %d packets", tap.in, b.N)
	}
}

// establishFlows puts the flows of the GENEVE datagrams dgrams in s's
// table as established connections: the data segment of a flow whose stack
// holds no connection is not shown to the tap (tapWithholds), and a stack
// without gVisor's holds none.
func establishFlows(s *Server, gwlb netip.AddrPort, dgrams ...[]byte) {
	for _, d := range dgrams {
		h, _ := ParseHeader(d)
		p, _ := ParsePacket(d[h.Len:], h.Protocol)
		key := p.Key(h.Endpoint)
		flow, _ := s.flows.TouchSegment(&key, d[:h.Len], h, gwlb, monoclock.Now())
		flow.tcp.Store(tcpSynAcked | tcpEstablished)
	}
}

// TestTapSeesBothDirections: the Tap gets each packet received from the
// GWLB, and each reply sent back, with the flow's endpoint and cookie.
func TestTapSeesBothDirections(t *testing.T) {
	tap := &recordTap{}
	s := &Server{flows: newFlowTable(16, time.Hour, time.Hour), ret: &discardPath{}, done: make(chan struct{})}
	s.cfg.MTU = DefaultMTU
	s.cfg.Tap = tap
	st := &endpointStack{srv: s, endpoint: 7, link: &link{srv: s, endpoint: 7, mtu: DefaultMTU}}
	s.stacks.Store(uint64(7), st)
	d := benchSegments(&testing.B{}, 10, flagAck|0x08)[3] // data: a SYN's would be cut
	gwlb := netip.MustParseAddrPort("127.0.0.2:40000")
	establishFlows(s, gwlb, d)
	s.handleDatagram(d, gwlb, nil)
	h, _ := ParseHeader(d)
	inner := d[h.Len:]
	r := append([]byte(nil), inner...)
	copy(r[12:16], inner[16:20])
	copy(r[16:20], inner[12:16])
	copy(r[20:22], inner[22:24])
	copy(r[22:24], inner[20:22])
	buf := make([]byte, maxDatagram)
	const innerOff = outerHeadroom + MaxGeneveHeader
	copy(buf[innerOff:], r)
	s.sendInner(7, buf, innerOff, len(r), 1, nil)
	if len(tap.seen) != 2 {
		t.Fatalf("tap saw %d packets, want 2", len(tap.seen))
	}
	for i, want := range []struct {
		out bool
		pkt []byte
	}{{false, inner}, {true, r}} {
		got := tap.seen[i]
		if got.endpoint != 7 || got.cookie != 3 || got.out != want.out || string(got.pkt) != string(want.pkt) || got.p.Proto != protoTCP {
			t.Errorf("packet %d: %+v", i, got)
		}
	}
}

type tapped struct {
	endpoint uint64
	cookie   uint32
	out      bool
	p        Packet
	pkt      []byte
}

type recordTap struct{ seen []tapped }

func (r *recordTap) Packet(endpoint uint64, cookie uint32, out bool, _ int64, p Packet, pkt []byte) {
	r.seen = append(r.seen, tapped{endpoint, cookie, out, p, append([]byte(nil), pkt...)})
}
