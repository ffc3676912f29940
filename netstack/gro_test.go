package netstack

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// clientSegment is a TCP packet from src to dst as a client sends it,
// checksums filled in.
func clientSegment(src, dst netip.AddrPort, seq, ack uint32, flags header.TCPFlags, payload []byte) []byte {
	return clientSegmentOpts(src, dst, seq, ack, flags, nil, payload)
}

// clientSegmentOpts is clientSegment with TCP options opts (a multiple of
// 4 bytes long).
func clientSegmentOpts(src, dst netip.AddrPort, seq, ack uint32, flags header.TCPFlags, opts, payload []byte) []byte {
	ipLen := header.IPv4MinimumSize
	if src.Addr().Is6() {
		ipLen = header.IPv6MinimumSize
	}
	tcpLen := header.TCPMinimumSize + len(opts)
	pkt := make([]byte, ipLen+tcpLen+len(payload))
	srcA, dstA := tcpip.AddrFromSlice(src.Addr().AsSlice()), tcpip.AddrFromSlice(dst.Addr().AsSlice())
	if ipLen == header.IPv4MinimumSize {
		ip := header.IPv4(pkt)
		ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(pkt)), Flags: header.IPv4FlagDontFragment, TTL: 64,
			Protocol: uint8(header.TCPProtocolNumber), SrcAddr: srcA, DstAddr: dstA})
		ip.SetChecksum(^ip.CalculateChecksum())
	} else {
		header.IPv6(pkt).Encode(&header.IPv6Fields{PayloadLength: uint16(len(pkt) - ipLen), TransportProtocol: header.TCPProtocolNumber,
			HopLimit: 64, SrcAddr: srcA, DstAddr: dstA})
	}
	tcp := header.TCP(pkt[ipLen:])
	tcp.Encode(&header.TCPFields{SrcPort: src.Port(), DstPort: dst.Port(), SeqNum: seq, AckNum: ack,
		DataOffset: uint8(tcpLen), Flags: flags, WindowSize: 65535})
	copy(tcp[header.TCPMinimumSize:], opts)
	copy(tcp.Payload(), payload)
	sum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, srcA, dstA, uint16(len(tcp)))
	tcp.SetChecksum(^checksum.Checksum(tcp, sum))
	return pkt
}

// groRig is a connection accepted by a server's stack from a client that
// the test plays by hand: its segments go in through handleDatagram and a
// coalescer of the test's own, one batch at a time.
type groRig struct {
	s              *Server
	st             *endpointStack
	conn           *Conn
	client, server netip.AddrPort
	from           netip.AddrPort // the GWLB's source port of the flow
	co             *coalescer
	dgram          []byte
	ether          uint16
	seq, ack       uint32       // the client's next sequence number, and its ACK
	gwlb           *net.UDPConn // where the stack's replies arrive
	opts           []byte       // TCP options of the client's segments after its SYN
	conns          chan *Conn   // connections the stack accepted after the rig's
}

func newGRORig(tb testing.TB, client, server netip.AddrPort) *groRig {
	return newGRORigWith(tb, client, server, func(*Config) {})
}

// newGRORigWith is newGRORig with the server's configuration changed by
// configure first.
func newGRORigWith(tb testing.TB, client, server netip.AddrPort, configure func(*Config)) *groRig {
	return newGRORigOpts(tb, client, server, configure, nil, nil)
}

// newGRORigOpts is newGRORigWith with TCP options: synOpts on the client's
// SYN, opts on every later segment of the rig's (data, and ACKs).
func newGRORigOpts(tb testing.TB, client, server netip.AddrPort, configure func(*Config), synOpts, opts []byte) *groRig {
	tb.Helper()
	h := &AcceptHandler{Conns: make(chan *Conn, 1)}
	gwlb := gwlbSocket(tb, "127.0.0.2:0")
	cfg := Config{Handler: h, ReplyPort: gwlb.LocalAddr().(*net.UDPAddr).AddrPort().Port()}
	configure(&cfg)
	r := &groRig{
		s:      startServer(tb, cfg),
		client: client, server: server,
		from:  netip.MustParseAddrPort("127.0.0.2:47001"),
		co:    newCoalescer(),
		ether: EtherTypeIPv4,
		seq:   1000,
		gwlb:  gwlb,
		opts:  opts,
	}
	if client.Addr().Is6() {
		r.ether = EtherTypeIPv6
	}
	r.batch(clientSegmentOpts(client, server, r.seq, 0, header.TCPFlagSyn, synOpts, nil))
	r.seq++
	r.ack = readReplySegment(tb, gwlb, header.TCPFlagSyn|header.TCPFlagAck).SequenceNumber() + 1
	r.batch(clientSegmentOpts(client, server, r.seq, r.ack, header.TCPFlagAck, opts, nil))
	select {
	case r.conn = <-h.Conns:
	case <-time.After(5 * time.Second):
		tb.Fatal("no connection accepted")
	}
	tb.Cleanup(r.conn.Abort)
	r.conns = h.Conns
	v, _ := r.s.stacks.Load(uint64(7))
	r.st = v.(*endpointStack)
	return r
}

// data is the client's next segment, carrying payload.
func (r *groRig) data(payload []byte) []byte {
	pkt := clientSegmentOpts(r.client, r.server, r.seq, r.ack, header.TCPFlagAck, r.opts, payload)
	r.seq += uint32(len(payload))
	return pkt
}

// batch hands pkts to the server as one reader's batch.
func (r *groRig) batch(pkts ...[]byte) {
	for _, p := range pkts {
		r.dgram = append(AppendHeader(r.dgram[:0], r.ether, 0, 7, 8, 9, nil), p...)
		r.s.handleDatagram(r.dgram, r.from, r.co)
	}
	r.co.flush()
}

var groFamilies = []struct {
	name           string
	client, server netip.AddrPort
}{
	{"IPv4", netip.MustParseAddrPort("198.18.0.5:40000"), netip.MustParseAddrPort("198.18.9.9:443")},
	{"IPv6", netip.MustParseAddrPort("[2001:db8::5]:40000"), netip.MustParseAddrPort("[2001:db8::9]:443")},
}

// TestGROCheckedSegments: segments of one batch that GRO checked and merged
// reach the stack without going through the NIC and without being summed
// again, and arrive whole and in order; a segment with a bad checksum in
// the middle of the batch is still dropped (the stack counts it), and its
// retransmission fills the gap.
func TestGROCheckedSegments(t *testing.T) {
	for _, fam := range groFamilies {
		t.Run(fam.name, func(t *testing.T) {
			r := newGRORig(t, fam.client, fam.server)
			nicRx := func() uint64 { return r.st.stack.NICInfo()[nicID].Stats.Rx.Packets.Value() }
			checksumErrors := func() uint64 { return r.st.stack.Stats().TCP.ChecksumErrors.Value() }
			rxBefore := nicRx()

			const seg = 1000
			var want []byte
			var segs [][]byte
			for i := range 4 {
				payload := bytes.Repeat([]byte{byte('a' + i)}, seg)
				want = append(want, payload...)
				segs = append(segs, r.data(payload))
			}
			bad := bytes.Clone(segs[2])
			bad[len(bad)-1] ^= 0xff // the payload changes, its checksum does not
			r.batch(segs[0], segs[1], bad, segs[3])

			if got := checksumErrors(); got != 1 {
				t.Errorf("stack counted %d checksum errors, want 1 (the bad segment)", got)
			}
			// Only the bad segment went through the NIC: the others were
			// checked by GRO and went straight to the IP endpoint.
			if got := nicRx() - rxBefore; got != 1 {
				t.Errorf("%d packets of the batch went through the NIC, want 1 (the bad segment)", got)
			}
			r.batch(segs[2]) // the client retransmits
			got := make([]byte, len(want))
			r.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(r.conn, got); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("the stack's bytes differ from the valid segments'")
			}
		})
	}
}

// TestGROTrailingBytes: bytes after the IP length are none of the packet's.
// A segment whose checksum holds only with them counted is dropped, as the
// stack would drop it; one whose checksum holds without them goes in
// without them.
func TestGROTrailingBytes(t *testing.T) {
	for _, fam := range groFamilies {
		t.Run(fam.name, func(t *testing.T) {
			r := newGRORig(t, fam.client, fam.server)
			checksumErrors := func() uint64 { return r.st.stack.Stats().TCP.ChecksumErrors.Value() }
			ipLenOffset, ipHdr := 2, 0 // where the IP length is, and what it counts beyond the payload
			if fam.client.Addr().Is6() {
				ipLenOffset, ipHdr = 4, header.IPv6MinimumSize
			}
			// "helloZZ" summed whole, then its IP length shortened by 2:
			// the TCP checksum holds only over the junk.
			summedWithJunk := r.data([]byte("helloZZ"))
			r.seq -= 2
			binary.BigEndian.PutUint16(summedWithJunk[ipLenOffset:], uint16(len(summedWithJunk)-2-ipHdr))
			if fam.client.Addr().Is4() {
				ip := header.IPv4(summedWithJunk)
				ip.SetChecksum(0)
				ip.SetChecksum(^ip.CalculateChecksum())
			}
			before := checksumErrors()
			r.batch(summedWithJunk, r.data([]byte(" world")))
			if got := checksumErrors() - before; got != 1 {
				t.Errorf("%d checksum errors, want 1: a checksum that holds only over trailing bytes", got)
			}
			r.seq -= uint32(len("hello world"))
			r.batch(append(r.data([]byte("hello")), "ZZ"...), r.data([]byte(" world")))
			got := make([]byte, len("hello world"))
			r.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(r.conn, got); err != nil {
				t.Fatal(err)
			}
			if string(got) != "hello world" {
				t.Fatalf("the stack read %q, want %q", got, "hello world")
			}
		})
	}
}

// pureAck is the client's pure ACK of the server's bytes up to
// r.ack+acked, with TCP options opts.
func (r *groRig) pureAck(acked uint32, opts []byte) []byte {
	return clientSegmentOpts(r.client, r.server, r.seq, r.ack+acked, header.TCPFlagAck, opts, nil)
}

// TestAckThinning: of the pure ACKs of a flow in one batch that each move
// the acknowledgement forward from the one before, only the last reaches
// TCP; duplicates after one, SACK blocks, other flags, bad checksums, an
// ACK going back and a data segment in between all go in as they came.
func TestAckThinning(t *testing.T) {
	for _, fam := range groFamilies {
		t.Run(fam.name, func(t *testing.T) {
			r := newGRORig(t, fam.client, fam.server)
			// The server sends 5,000 bytes (within its first congestion
			// window), which the client then acknowledges in the batches
			// below.
			const sent = 5000
			if _, err := r.conn.Write(bytes.Repeat([]byte("x"), sent)); err != nil {
				t.Fatal(err)
			}
			readReplyBytes(t, r.gwlb, sent)
			ts := func(v uint32) []byte { // NOP NOP timestamps
				return binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32([]byte{1, 1, 8, 10}, v), 0)
			}
			sack := []byte{1, 1, 5, 10, 0, 0, 0, 0, 0, 0, 0, 0}
			bad := r.pureAck(2400, nil)
			bad[len(bad)-1] ^= 1 // the TCP checksum no longer holds
			segments := func() uint64 { return r.st.stack.Stats().TCP.ValidSegmentsReceived.Value() }
			cases := []struct {
				name  string
				batch [][]byte
				want  uint64 // segments TCP takes in
			}{
				{"forward ACKs", [][]byte{r.pureAck(500, nil), r.pureAck(1000, nil), r.pureAck(1500, nil)}, 1},
				{"forward ACKs with timestamps", [][]byte{r.pureAck(1600, ts(5)), r.pureAck(1650, ts(6)), r.pureAck(1700, ts(7))}, 1},
				{"duplicate ACKs", [][]byte{r.pureAck(1800, nil), r.pureAck(1800, nil), r.pureAck(1800, nil)}, 3},
				{"SACK", [][]byte{r.pureAck(1900, nil), r.pureAck(2000, sack), r.pureAck(2100, nil)}, 3},
				{"going back", [][]byte{r.pureAck(2300, nil), r.pureAck(2200, nil)}, 2},
				{"bad TCP checksum", [][]byte{r.pureAck(2350, nil), r.pureAck(2375, nil), bad}, 1},
				{"data between", [][]byte{r.pureAck(2500, nil), r.pureAck(2550, nil), r.data([]byte("hi")),
					r.pureAck(3000, nil), r.pureAck(3200, nil), r.pureAck(3500, nil)}, 3},
				// A duplicate of the last batch's ACK is dropped as if lost:
				// the forward ACK after it ends the duplicates anyway.
				{"duplicate, then forward", [][]byte{r.pureAck(3500, nil), r.pureAck(3600, nil), r.pureAck(3700, nil)}, 1},
				{"forward, then duplicates", [][]byte{r.pureAck(3750, nil), r.pureAck(3760, nil), r.pureAck(3760, nil)}, 2},
			}
			if fam.client.Addr().Is4() {
				badIP := r.pureAck(3900, nil) // after the data above: the same sequence number as the ACKs before it
				badIP[8]--                    // the TTL: the IPv4 header checksum no longer holds, the TCP one does
				cases = append(cases, struct {
					name  string
					batch [][]byte
					want  uint64
				}{"bad IPv4 header checksum", [][]byte{r.pureAck(3800, nil), r.pureAck(3850, nil), badIP}, 1})
			}
			for _, c := range cases {
				before := segments()
				r.batch(c.batch...)
				if got := segments() - before; got != c.want {
					t.Errorf("%s: TCP took in %d segments, want %d", c.name, got, c.want)
				}
			}
		})
	}
}

// recordingDispatcher keeps the packets delivered to it, flattened.
type recordingDispatcher struct{ pkts [][]byte }

func (r *recordingDispatcher) DeliverNetworkPacket(_ tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	r.pkts = append(r.pkts, pkt.Data().AsRange().ToSlice())
}
func (*recordingDispatcher) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

// TestAckThinningOrder: a flow's packets leave the coalescer in the order
// they came, less the ACKs a later one replaced; another flow's ACKs are
// thinned on their own.
func TestAckThinningOrder(t *testing.T) {
	f1 := [2]netip.AddrPort{netip.MustParseAddrPort("198.18.0.5:40000"), netip.MustParseAddrPort("198.18.9.9:443")}
	f2 := [2]netip.AddrPort{netip.MustParseAddrPort("198.18.0.6:40000"), netip.MustParseAddrPort("198.18.9.9:443")}
	ack := func(f [2]netip.AddrPort, seq, n uint32) []byte {
		return clientSegment(f[0], f[1], seq, n, header.TCPFlagAck, nil)
	}
	a1, a2, a3 := ack(f1, 1, 100), ack(f1, 1, 200), ack(f1, 1, 300)
	data := clientSegment(f1[0], f1[1], 1, 300, header.TCPFlagAck|header.TCPFlagPsh, []byte("request"))
	a4, a5, a6 := ack(f1, 8, 400), ack(f1, 8, 500), ack(f1, 8, 600)
	b1, b2, b3 := ack(f2, 1, 100), ack(f2, 1, 200), ack(f2, 1, 300)
	rec := &recordingDispatcher{}
	var d stack.NetworkDispatcher = rec
	st := &endpointStack{link: &link{}}
	st.link.dispatcher.Store(&d)
	c := newCoalescer()
	for _, pkt := range [][]byte{a1, b1, a2, a3, data, b2, b3, a4, a5, a6} {
		p, reason := ParsePacket(pkt, EtherTypeIPv4)
		if reason != DropNone {
			t.Fatal(reason)
		}
		c.hold(st, pkt, &p)
	}
	c.flush()
	want := [][]byte{a3, data, b3, a6}
	if len(rec.pkts) != len(want) {
		t.Fatalf("%d packets delivered, want %d", len(rec.pkts), len(want))
	}
	for i := range want {
		if !bytes.Equal(rec.pkts[i], want[i]) {
			t.Errorf("packet %d: got %x, want %x", i, rec.pkts[i], want[i])
		}
	}
}

// TestAckThinningBeforeInjected: a flow's TCP packet that goes around the
// coalescer (here a first fragment) goes in after the flow's ACKs held.
func TestAckThinningBeforeInjected(t *testing.T) {
	f := [2]netip.AddrPort{netip.MustParseAddrPort("198.18.0.5:40000"), netip.MustParseAddrPort("198.18.9.9:443")}
	s := &Server{flows: newFlowTable(16, time.Hour, time.Hour), ret: &discardPath{}, done: make(chan struct{})}
	s.cfg.MTU = DefaultMTU
	st := &endpointStack{srv: s, endpoint: 7, link: &link{srv: s, endpoint: 7, mtu: DefaultMTU}}
	rec := &recordingDispatcher{}
	var d stack.NetworkDispatcher = rec
	st.link.dispatcher.Store(&d)
	s.stacks.Store(uint64(7), st)
	a1 := clientSegment(f[0], f[1], 1, 100, header.TCPFlagAck, nil)
	a2 := clientSegment(f[0], f[1], 1, 200, header.TCPFlagAck, nil)
	first := clientSegment(f[0], f[1], 1, 200, header.TCPFlagAck, bytes.Repeat([]byte("x"), 64))
	binary.BigEndian.PutUint16(first[6:], 0x2000) // more fragments follow
	ip := header.IPv4(first)
	ip.SetChecksum(0)
	ip.SetChecksum(^ip.CalculateChecksum())
	gwlb := netip.MustParseAddrPort("127.0.0.2:40000")
	co := newCoalescer()
	for _, p := range [][]byte{a1, a2, first} {
		s.handleDatagram(geneve(7, p), gwlb, co)
	}
	co.flush()
	want := [][]byte{a2, first} // a2 replaced a1, and goes in before the fragment
	if len(rec.pkts) != len(want) {
		t.Fatalf("%d packets delivered, want %d", len(rec.pkts), len(want))
	}
	for i := range want {
		if !bytes.Equal(rec.pkts[i], want[i]) {
			t.Errorf("packet %d: got %x…, want %x…", i, rec.pkts[i][:28], want[i][:28])
		}
	}
}

// readReplyBytes reads the stack's replies from gwlb until they have
// carried n bytes of TCP payload.
func readReplyBytes(t *testing.T, gwlb *net.UDPConn, n int) {
	t.Helper()
	buf := make([]byte, maxDatagram)
	gwlb.SetReadDeadline(time.Now().Add(5 * time.Second))
	for got := 0; got < n; {
		tcp, err := readReplyTCP(gwlb, buf)
		if err != nil {
			t.Fatalf("after %d of %d bytes: %v", got, n, err)
		}
		if tcp != nil {
			got += len(tcp.Payload())
		}
	}
}

// BenchmarkGROUpload is a client's upload as one reader takes it in:
// batches of 32 full-sized segments through GRO into a stack, and read out
// of the accepted connection. The stack's ACKs leave through the bound
// return path to a socket that is not read (the kernel drops them when its
// buffer is full).
func BenchmarkGROUpload(b *testing.B) {
	const segs, mss = 32, 1448
	for _, fam := range groFamilies {
		b.Run(fam.name, func(b *testing.B) {
			r := newGRORig(b, fam.client, fam.server)
			payload := bytes.Repeat([]byte("gwlbproxy"), mss/9+1)[:mss]
			pkts := make([][]byte, segs)
			for i := range pkts {
				pkts[i] = r.data(payload)
			}
			ipLen := len(pkts[0]) - header.TCPMinimumSize - mss
			buf := make([]byte, segs*mss)
			r.conn.SetReadDeadline(time.Now().Add(time.Minute)) // a dropped segment fails, not hangs
			b.SetBytes(segs * mss)
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := processCPU(b)
			for i := range b.N {
				if i > 0 { // the next batch: the same segments, further on
					for _, p := range pkts {
						advanceSeq(header.TCP(p[ipLen:]), segs*mss)
					}
				}
				r.batch(pkts...)
				if _, err := io.ReadFull(r.conn, buf); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(processCPU(b)-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

// processCPU is the CPU time the process has used so far, user and
// system, in nanoseconds: the stack's own goroutines work in parallel with
// the benchmark's, so wall time alone would hide work moved off the
// critical path.
func processCPU(tb testing.TB) int64 {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// advanceSeq moves tcp's sequence number on by n and mends its checksum
// to match (RFC 1624), without summing the payload again.
func advanceSeq(tcp header.TCP, n uint32) {
	old := tcp.SequenceNumber()
	tcp.SetSequenceNumber(old + n)
	sum := checksum.Combine(^tcp.Checksum(), ^uint16(old>>16))
	sum = checksum.Combine(sum, ^uint16(old))
	sum = checksum.Combine(sum, uint16((old+n)>>16))
	sum = checksum.Combine(sum, uint16(old+n))
	tcp.SetChecksum(^sum)
}

// readReplySegment reads GENEVE datagrams from gwlb until one carries a
// TCP segment with flags, and returns that segment.
func readReplySegment(t testing.TB, gwlb *net.UDPConn, flags header.TCPFlags) header.TCP {
	t.Helper()
	buf := make([]byte, maxDatagram)
	gwlb.SetReadDeadline(time.Now().Add(5 * time.Second))
	for range 20 {
		tcp, err := readReplyTCP(gwlb, buf)
		if err != nil {
			t.Fatalf("waiting for a reply with flags %s: %v", flags, err)
		}
		if tcp != nil && tcp.Flags() == flags {
			return bytes.Clone(tcp)
		}
	}
	t.Fatalf("no reply with flags %s", flags)
	return nil
}

// readReplyTCP reads one GENEVE datagram from gwlb into buf and returns
// the TCP segment it carries, or nil if it carries none.
func readReplyTCP(gwlb *net.UDPConn, buf []byte) (header.TCP, error) {
	n, err := gwlb.Read(buf)
	if err != nil {
		return nil, err
	}
	h, reason := ParseHeader(buf[:n])
	if reason != DropNone {
		return nil, fmt.Errorf("reply: %v", reason)
	}
	inner := buf[h.Len:n]
	ipLen := header.IPv4MinimumSize
	if len(inner) > 0 && inner[0]>>4 == 6 {
		ipLen = header.IPv6MinimumSize
	}
	if len(inner) < ipLen+header.TCPMinimumSize {
		return nil, nil
	}
	return header.TCP(inner[ipLen:]), nil
}

// FuzzPureAck: no inner packet that deliver would hand a coalescer makes
// pureAck panic, and what it lets thinning drop is a whole TCP pure ACK
// small enough to hold.
func FuzzPureAck(f *testing.F) {
	c, s := netip.MustParseAddrPort("198.18.0.5:40000"), netip.MustParseAddrPort("198.18.9.9:443")
	f.Add(clientSegment(c, s, 1, 2, header.TCPFlagAck, nil), false)
	f.Add(clientSegmentOpts(c, s, 1, 2, header.TCPFlagAck, []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2}, nil), false)
	f.Add(clientSegment(netip.MustParseAddrPort("[2001:db8::5]:40000"), netip.MustParseAddrPort("[2001:db8::9]:443"), 1, 2, header.TCPFlagAck, nil), true)
	f.Fuzz(func(t *testing.T, pkt []byte, ipv6 bool) {
		ether := uint16(EtherTypeIPv4)
		if ipv6 {
			ether = EtherTypeIPv6
		}
		p, reason := ParsePacket(pkt, ether)
		if reason != DropNone || !coalescable(&p, pkt) {
			return
		}
		pkt = pkt[:p.Len]
		if _, _, thinnable := pureAck(pkt, &p); !thinnable {
			return
		}
		tcp := header.TCP(pkt[p.Payload:])
		if len(pkt) > maxHeldAck || tcp.Flags() != header.TCPFlagAck || len(tcp.Payload()) != 0 {
			t.Fatalf("thinnable: %x", pkt)
		}
	})
}
