package netstack

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

type discardPath struct{ n int }

func (d *discardPath) send(pkt []byte, _ netip.AddrPort) error { d.n += len(pkt); return nil }
func (d *discardPath) sendBatch(b *replyBatch) (int, error) {
	for i := range b.n {
		d.n += len(b.pkts[i])
	}
	return 0, nil
}
func (*discardPath) close() error { return nil }
func (*discardPath) name() string { return "discard" }

// benchFlows is how many flows the steady-state benchmarks cycle through, so
// the table is not a single hot entry.
const benchFlows = 1024

func benchDatagrams(b *testing.B, payload int) [][]byte {
	return benchSegments(b, payload, flagSyn)
}

// benchSegments is benchDatagrams with the TCP flags given, and checksums
// that hold, as a capture tap has them checked.
func benchSegments(_ *testing.B, payload int, flags byte) [][]byte {
	dgrams := make([][]byte, benchFlows)
	for i := range dgrams {
		inner := make([]byte, 40+payload)
		copy(inner, innerV4)
		binary.BigEndian.PutUint16(inner[2:], uint16(len(inner)))
		binary.BigEndian.PutUint16(inner[20:], uint16(10000+i)) // source port
		inner[33] = flags
		ip, tcp := header.IPv4(inner), header.TCP(inner[20:])
		ip.SetChecksum(^ip.CalculateChecksum())
		sum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(tcp)))
		tcp.SetChecksum(^checksum.Checksum(tcp, sum))
		dgrams[i] = append(AppendHeader(nil, EtherTypeIPv4, 0, 7, 8, uint32(i), nil), inner...)
	}
	return dgrams
}

// BenchmarkInboundPath is the per-packet work before the gVisor stack: GENEVE
// header, inner 5-tuple, flow-table refresh. It must not allocate.
func BenchmarkInboundPath(b *testing.B) {
	ft := newFlowTable(1<<20, time.Hour, time.Hour)
	dgrams := benchDatagrams(b, 1400)
	gwlb := netip.MustParseAddrPort("127.0.0.2:40000")
	b.ReportAllocs()
	b.SetBytes(int64(len(dgrams[0])))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d := dgrams[i%benchFlows]
		h, r := ParseHeader(d)
		if r != DropNone {
			b.Fatal(r)
		}
		p, r := ParsePacket(d[h.Len:], h.Protocol)
		if r != DropNone {
			b.Fatal(r)
		}
		k := p.Key(h.Endpoint)
		if _, r := ft.Touch(&k, d[:h.Len], h, gwlb, int64(i)); r != DropNone {
			b.Fatal("table full")
		}
	}
}

// BenchmarkReplyPath is the per-packet work after the stack: find the flow
// from the reply's reversed 5-tuple and put its GENEVE header in front.
func BenchmarkReplyPath(b *testing.B) {
	s := &Server{flows: newFlowTable(1<<20, time.Hour, time.Hour), ret: &discardPath{}}
	s.cfg.MTU = DefaultMTU
	gwlb := netip.MustParseAddrPort("127.0.0.2:40000")
	dgrams := benchDatagrams(b, 1400)
	replies := make([][]byte, benchFlows)
	for i, d := range dgrams {
		h, _ := ParseHeader(d)
		p, _ := ParsePacket(d[h.Len:], h.Protocol)
		k := p.Key(h.Endpoint)
		s.flows.Touch(&k, d[:h.Len], h, gwlb, 0)
		// The reply swaps addresses and ports.
		r := append([]byte(nil), d[h.Len:]...)
		copy(r[12:16], d[h.Len+16:h.Len+20])
		copy(r[16:20], d[h.Len+12:h.Len+16])
		copy(r[20:22], d[h.Len+22:h.Len+24])
		copy(r[22:24], d[h.Len+20:h.Len+22])
		replies[i] = r
	}
	buf := make([]byte, maxDatagram)
	var frags fragTable
	const innerOff = outerHeadroom + MaxGeneveHeader
	b.ReportAllocs()
	b.SetBytes(int64(len(replies[0])))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r := replies[i%benchFlows]
		copy(buf[innerOff:], r)
		s.sendInner(7, buf, innerOff, len(r), int64(i), &frags)
	}
	b.StopTimer()
	if s.stats.packetsOut.Load() != uint64(b.N) {
		b.Fatalf("sent %d of %d replies; drops %v", s.stats.packetsOut.Load(), b.N, s.Stats().Drops)
	}
}

// BenchmarkReplyPathDelayedAck is a kept-alive request's replies on the
// reply path, per flow in turn: the stack's pure ACK of the request, then
// the answer. With the delay on, the ACK is held (copied, queued, the
// timer armed) and the answer carries it (the held ACK dropped, the timer
// stopped); off, both leave. One op is both packets. It must not allocate.
func BenchmarkReplyPathDelayedAck(b *testing.B) {
	for _, tc := range []struct {
		name  string
		delay time.Duration
	}{{"off", 0}, {"on", DefaultAckDelay}} {
		b.Run(tc.name, func(b *testing.B) {
			r := newReplyRig(b, tc.delay, benchFlows)
			s := r.s
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				f := &r.flows[i%benchFlows]
				ack := 1 + uint32(i/benchFlows+1)*100 // each request 100 bytes
				now := time.Now().UnixNano()
				r.send(f.ack, ack, now)
				r.send(f.data, ack, now)
			}
			b.StopTimer()
			want := uint64(2 * b.N)
			if tc.delay > 0 {
				// Each carried ACK saves a datagram. One whose answer came
				// after the delay (the machine stalled the loop that
				// long) left alone when its timer fired: counted, not
				// failed, since how often depends on the machine's load.
				s.acks.flushMu.Lock() // a timer's send under way ends first
				s.acks.flushMu.Unlock()
				carried := s.acks.carried.Load()
				want -= carried
				b.ReportMetric(float64(uint64(b.N)-carried)/float64(b.N), "acks-alone/op")
			}
			if got := s.stats.packetsOut.Load(); got != want {
				b.Fatalf("sent %d datagrams, want %d; drops %v", got, want, s.Stats().Drops)
			}
		})
	}
}

// BenchmarkReplyPathFragmented is the reply path for a datagram larger than
// the MTU: three fragments, each sent as the stack writes them, one call at
// a time, the later two following the first through the fragment table.
func BenchmarkReplyPathFragmented(b *testing.B) {
	s := &Server{flows: newFlowTable(16, time.Hour, time.Hour), ret: &discardPath{}}
	s.cfg.MTU = DefaultMTU
	fam := fragFamilies[0]
	client := Packet{IPv6: fam.src.Addr().Is6(), Proto: protoUDP, Src: fam.dst.Addr().As16(), Dst: fam.src.Addr().As16(), SrcPort: fam.dst.Port(), DstPort: fam.src.Port()}
	k := client.Key(7)
	hdr := AppendHeader(nil, EtherTypeIPv4, 0, 7, 8, 9, nil)
	h, _ := ParseHeader(append(bytes.Clone(hdr), 0x45))
	s.flows.Touch(&k, hdr, h, netip.MustParseAddrPort("127.0.0.2:40000"), 0)
	frags := fragment(udpDatagram(fam.src, fam.dst, 20000), 42, DefaultMTU)
	var ft fragTable
	buf := make([]byte, maxDatagram)
	const innerOff = outerHeadroom + MaxGeneveHeader
	b.ReportAllocs()
	b.SetBytes(20000)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, f := range frags {
			copy(buf[innerOff:], f)
			s.sendInner(7, buf, innerOff, len(f), int64(i), &ft)
		}
	}
	b.StopTimer()
	if want := uint64(b.N * len(frags)); s.stats.packetsOut.Load() != want {
		b.Fatalf("sent %d of %d fragments; drops %v", s.stats.packetsOut.Load(), want, s.Stats().Drops)
	}
}

// BenchmarkInboundDatagram is all the per-packet work of a GENEVE reader up
// to the gVisor stack: the sender check, GENEVE header, inner 5-tuple, the
// endpoint's stack held open, the flow-table refresh. The stack's link is
// detached, so the packet stops where gVisor would take it. It must not
// allocate.
func BenchmarkInboundDatagram(b *testing.B) {
	s := &Server{flows: newFlowTable(1<<20, time.Hour, time.Hour), ret: &discardPath{}, done: make(chan struct{})}
	s.cfg.MTU = DefaultMTU
	s.cfg.Senders = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16"), netip.MustParsePrefix("127.0.0.0/8")}
	st := &endpointStack{srv: s, endpoint: 7, link: &link{srv: s, endpoint: 7, mtu: DefaultMTU}}
	s.stacks.Store(uint64(7), st)
	dgrams := benchDatagrams(b, 1400)
	gwlb := netip.MustParseAddrPort("127.0.0.2:40000")
	b.ReportAllocs()
	b.SetBytes(int64(len(dgrams[0])))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s.handleDatagram(dgrams[i%benchFlows], gwlb, nil)
	}
	b.StopTimer()
	if got, want := s.flows.Len(), min(b.N, benchFlows); got != want {
		b.Fatalf("%d flows, want %d; drops %v", got, want, s.Stats().Drops)
	}
}

// BenchmarkReplySegments is the reply path of a 64 KiB TCP segment handed
// over for host GSO: cut at the MSS, checksummed, wrapped in the flow's
// GENEVE header, sent as one batch. It must not allocate.
func BenchmarkReplySegments(b *testing.B) {
	s := &Server{flows: newFlowTable(16, time.Hour, time.Hour), ret: &discardPath{}}
	s.cfg.MTU = DefaultMTU
	fam := fragFamilies[0]
	client := Packet{IPv6: fam.src.Addr().Is6(), Proto: protoTCP, Src: fam.dst.Addr().As16(), Dst: fam.src.Addr().As16(), SrcPort: fam.dst.Port(), DstPort: fam.src.Port()}
	k := client.Key(7)
	hdr := AppendHeader(nil, EtherTypeIPv4, 0, 7, 8, 9, nil)
	h, _ := ParseHeader(append(bytes.Clone(hdr), 0x45))
	s.flows.Touch(&k, hdr, h, netip.MustParseAddrPort("127.0.0.2:40000"), 0)
	t := &testing.T{}
	pb := gsoSegment(t, fam.src, fam.dst, 1, 0x10, make([]byte, 65000), DefaultMTU-52)
	defer pb.DecRef()
	rb := getReplyBatch()
	s.batchSegments(rb, 7, pb, 0, nil) // the batch's buffers, made once
	s.sendReplies(rb)
	b.ReportAllocs()
	b.SetBytes(65000)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s.batchSegments(rb, 7, pb, int64(i), nil)
		s.sendReplies(rb)
	}
	b.StopTimer()
	if want := uint64(8 * (b.N + 1)); s.stats.packetsOut.Load() != want {
		b.Fatalf("sent %d packets, want %d; drops %v", s.stats.packetsOut.Load(), want, s.Stats().Drops)
	}
}
