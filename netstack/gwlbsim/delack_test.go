package gwlbsim

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

var (
	delackClient = netip.MustParseAddrPort("198.18.0.5:40000")
	delackServer = netip.MustParseAddrPort("203.0.113.9:443")
)

// segment builds a TCP segment from src to dst, IPv4 or IPv6 as the
// addresses are, with payload bytes of data.
func segment(src, dst netip.AddrPort, flags header.TCPFlags, seq, ack uint32, payload int) []byte {
	tcpLen := header.TCPMinimumSize + payload
	var pkt []byte
	var tcp header.TCP
	if src.Addr().Is4() {
		pkt = make([]byte, header.IPv4MinimumSize+tcpLen)
		header.IPv4(pkt).Encode(&header.IPv4Fields{
			TotalLength: uint16(len(pkt)), TTL: 64, Protocol: uint8(header.TCPProtocolNumber),
			SrcAddr: tcpip.AddrFrom4(src.Addr().As4()), DstAddr: tcpip.AddrFrom4(dst.Addr().As4()),
		})
		tcp = header.TCP(pkt[header.IPv4MinimumSize:])
	} else {
		pkt = make([]byte, header.IPv6MinimumSize+tcpLen)
		header.IPv6(pkt).Encode(&header.IPv6Fields{
			PayloadLength: uint16(tcpLen), TransportProtocol: header.TCPProtocolNumber, HopLimit: 64,
			SrcAddr: tcpip.AddrFrom16(src.Addr().As16()), DstAddr: tcpip.AddrFrom16(dst.Addr().As16()),
		})
		tcp = header.TCP(pkt[header.IPv6MinimumSize:])
	}
	tcp.Encode(&header.TCPFields{
		SrcPort: src.Port(), DstPort: dst.Port(), SeqNum: seq, AckNum: ack,
		DataOffset: header.TCPMinimumSize, Flags: flags, WindowSize: 65535,
	})
	return pkt
}

// sentLog records what the delayer sends, in order.
type sentLog struct {
	mu   sync.Mutex
	acks []uint32 // acknowledgement number of each segment sent
}

func (l *sentLog) send(pkt []byte) error {
	_, _, tcp, _, ok := tcpOf(pkt)
	l.mu.Lock()
	defer l.mu.Unlock()
	if ok {
		l.acks = append(l.acks, tcp.AckNumber())
	}
	return nil
}

func (l *sentLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.acks)
}

// TestAckDelayerLikeLinux: the first data segments of a connection are
// acknowledged at once; later a pure ACK of at most one segment waits, and
// is dropped when the client's next request carries it, or sent after
// ackDelay when nothing does; one of more than a segment goes at once.
func TestAckDelayerLikeLinux(t *testing.T) {
	for _, v := range []struct{ name, client, server string }{
		{"IPv4", "198.18.0.5:40000", "203.0.113.9:443"},
		{"IPv6", "[fd00::5]:40000", "[2001:db8::9]:443"},
	} {
		t.Run(v.name, func(t *testing.T) {
			cli, srv := netip.MustParseAddrPort(v.client), netip.MustParseAddrPort(v.server)
			var log sentLog
			d := newAckDelayer(log.send)
			ack := uint32(1000)
			respond := func(n int) { // the server's segment of n bytes, then the client's pure ACK of it
				d.received(segment(srv, cli, header.TCPFlagAck|header.TCPFlagPsh, ack, 1, n))
				ack += uint32(n)
				if err := d.write(segment(cli, srv, header.TCPFlagAck, 1, ack, 0)); err != nil {
					t.Fatal(err)
				}
			}
			for i := range quickACKs {
				respond(300)
				if got := log.count(); got != i+1 {
					t.Fatalf("quick ACK %d: %d segments sent, want %d", i+1, got, i+1)
				}
			}
			respond(300)
			if got := log.count(); got != quickACKs {
				t.Fatalf("after the quick ACKs a pure ACK of one segment went at once (%d sent)", got)
			}
			// The client's next request carries the ACK: the held one never leaves.
			if err := d.write(segment(cli, srv, header.TCPFlagAck|header.TCPFlagPsh, 1, ack, 100)); err != nil {
				t.Fatal(err)
			}
			time.Sleep(ackDelay + 30*time.Millisecond)
			if got := log.count(); got != quickACKs+1 {
				t.Fatalf("%d segments sent after the request, want %d: the held ACK left too", got, quickACKs+1)
			}
			// Nothing carries the next one: it leaves after ackDelay.
			respond(300)
			if got := log.count(); got != quickACKs+1 {
				t.Fatal("a pure ACK went at once")
			}
			deadline := time.Now().Add(2 * time.Second)
			for log.count() < quickACKs+2 && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			if got := log.count(); got != quickACKs+2 || log.acks[len(log.acks)-1] != ack {
				t.Fatalf("the held ACK was not sent after ackDelay (%d sent, last acks %d, want %d)", got, log.acks[len(log.acks)-1], ack)
			}
			// More than a full segment unacknowledged: at once.
			d.received(segment(srv, cli, header.TCPFlagAck, ack, 1, 300))
			d.received(segment(srv, cli, header.TCPFlagAck, ack+300, 1, 300))
			ack += 600
			if err := d.write(segment(cli, srv, header.TCPFlagAck, 1, ack, 0)); err != nil {
				t.Fatal(err)
			}
			if got := log.count(); got != quickACKs+3 {
				t.Fatalf("an ACK of two segments was held (%d sent)", got)
			}
			// A FIN ends the record: the next connection on the same ports starts quick.
			if err := d.write(segment(cli, srv, header.TCPFlagAck|header.TCPFlagFin, 101, ack, 0)); err != nil {
				t.Fatal(err)
			}
			if _, ok := d.flows[ackFlowKey{src: cli, dst: srv}]; ok {
				t.Error("the connection's record outlived its FIN")
			}
		})
	}
}

// TestAckDelayerPassesTheRest: what is not a TCP segment, and TCP
// segments with any flag but ACK, are sent at once and unchanged.
func TestAckDelayerPassesTheRest(t *testing.T) {
	var n int
	d := newAckDelayer(func([]byte) error { n++; return nil })
	for range quickACKs + 1 {
		d.received(segment(delackServer, delackClient, header.TCPFlagAck, 1, 1, 100))
	}
	for _, pkt := range [][]byte{
		{0x45, 0, 0},    // too short for IPv4
		make([]byte, 3), // not IP
		segment(delackClient, delackServer, header.TCPFlagAck|header.TCPFlagRst, 1, 1, 0),
		segment(delackClient, delackServer, header.TCPFlagSyn, 1, 0, 0),
	} {
		before := n
		if err := d.write(pkt); err != nil {
			t.Fatal(err)
		}
		if n != before+1 {
			t.Errorf("%x was not sent at once", pkt[:min(len(pkt), 8)])
		}
	}
}

// FuzzTCPOf: the delayer's parser reads back what a segment was built
// with, and takes any bytes the appliance might send the client without
// panicking, as does the delayer.
func FuzzTCPOf(f *testing.F) {
	f.Add(segment(delackClient, delackServer, header.TCPFlagAck, 1, 2, 10), uint16(1), uint16(2), uint32(3), uint32(4), uint16(5), false)
	f.Add(segment(netip.MustParseAddrPort("[fd00::5]:1"), netip.MustParseAddrPort("[fd00::6]:2"), header.TCPFlagAck, 1, 2, 0), uint16(443), uint16(80), uint32(0), uint32(1<<31), uint16(0), true)
	f.Fuzz(func(t *testing.T, raw []byte, sport, dport uint16, seq, ack uint32, n uint16, v6 bool) {
		src, dst := netip.AddrPortFrom(delackClient.Addr(), sport), netip.AddrPortFrom(delackServer.Addr(), dport)
		if v6 {
			src, dst = netip.AddrPortFrom(netip.MustParseAddr("fd00::5"), sport), netip.AddrPortFrom(netip.MustParseAddr("2001:db8::9"), dport)
		}
		n %= 9000
		gotSrc, gotDst, tcp, gotN, ok := tcpOf(segment(src, dst, header.TCPFlagAck, seq, ack, int(n)))
		if !ok || gotSrc != src || gotDst != dst || gotN != int(n) || tcp.SequenceNumber() != seq || tcp.AckNumber() != ack {
			t.Fatalf("a segment %v -> %v seq %d ack %d, %d bytes read back as %v -> %v seq %d ack %d, %d bytes (ok %v)",
				src, dst, seq, ack, n, gotSrc, gotDst, tcp.SequenceNumber(), tcp.AckNumber(), gotN, ok)
		}
		d := newAckDelayer(func([]byte) error { return nil })
		d.received(raw)
		_ = d.write(raw)
	})
}

// withOptions is pkt (IPv4, as segment builds it, no payload) with the
// TCP options opts, padded to four bytes.
func withOptions(pkt []byte, opts []byte) []byte {
	for len(opts)%4 != 0 {
		opts = append(opts, header.TCPOptionNOP)
	}
	out := append(append([]byte(nil), pkt...), opts...)
	ip := header.IPv4(out)
	ip.SetTotalLength(uint16(len(out)))
	tcp := header.TCP(out[header.IPv4MinimumSize:])
	tcp.SetDataOffset(uint8(header.TCPMinimumSize + len(opts)))
	return out
}

// pastQuick is a delayer whose flow delackClient-delackServer has had
// its quick ACKs, each sent, and then one more segment of 300 bytes, which
// an ACK of ack would acknowledge.
func pastQuick(t *testing.T, send func([]byte) error) (d *ackDelayer, ack uint32) {
	t.Helper()
	d = newAckDelayer(send)
	ack = 1000
	for range quickACKs {
		d.received(segment(delackServer, delackClient, header.TCPFlagAck|header.TCPFlagPsh, ack, 1, 300))
		ack += 300
		if err := d.write(segment(delackClient, delackServer, header.TCPFlagAck, 1, ack, 0)); err != nil {
			t.Fatal(err)
		}
	}
	d.received(segment(delackServer, delackClient, header.TCPFlagAck|header.TCPFlagPsh, ack, 1, 300))
	return d, ack + 300
}

// TestAckDelayerSendsAtOnce: the ACKs Linux sends at once go at once:
// a duplicate, one with SACK blocks, one opening the window, one after
// data out of order; and what comes before a connection's first data.
func TestAckDelayerSendsAtOnce(t *testing.T) {
	var log sentLog
	ackOf := func(ack uint32) []byte { return segment(delackClient, delackServer, header.TCPFlagAck, 1, ack, 0) }
	for _, c := range []struct {
		name string
		pkt  func(ack uint32) []byte
		pre  func(d *ackDelayer, ack uint32)
	}{
		{"duplicate", func(ack uint32) []byte { return ackOf(ack - 300) }, nil},
		{"SACK", func(ack uint32) []byte {
			return withOptions(ackOf(ack), []byte{header.TCPOptionSACK, 10, 0, 0, 0, 1, 0, 0, 0, 2})
		}, nil},
		{"window opened", func(ack uint32) []byte { return ackOf(ack) }, func(d *ackDelayer, _ uint32) {
			d.flows[ackFlowKey{src: delackClient, dst: delackServer}].lastWnd = 1000 // the ACK says 65535
		}},
		{"after data out of order", func(ack uint32) []byte { return ackOf(ack) }, func(d *ackDelayer, ack uint32) {
			d.received(segment(delackServer, delackClient, header.TCPFlagAck, ack+300, 1, 300)) // a gap before it
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			d, ack := pastQuick(t, log.send)
			if c.pre != nil {
				c.pre(d, ack)
			}
			before := log.count()
			if err := d.write(c.pkt(ack)); err != nil {
				t.Fatal(err)
			}
			if log.count() != before+1 {
				t.Errorf("a %s ACK was held", c.name)
			}
		})
	}
	t.Run("before data", func(t *testing.T) {
		d := newAckDelayer(log.send)
		before := log.count()
		for range quickACKs + 2 {
			if err := d.write(ackOf(1)); err != nil {
				t.Fatal(err)
			}
		}
		if log.count() != before+quickACKs+2 || len(d.flows) != 0 {
			t.Errorf("ACKs before any data held, or kept a record (%d records)", len(d.flows))
		}
	})
}

// TestAckDelayerKeepsTheDeadline: a newer pure ACK takes a held one's
// place under the first one's timer, and the newer one is what leaves.
func TestAckDelayerKeepsTheDeadline(t *testing.T) {
	var log sentLog
	d, ack := pastQuick(t, log.send)
	k := ackFlowKey{src: delackClient, dst: delackServer}
	before := log.count()
	for i, a := range []uint32{ack - 200, ack - 100} { // both within a segment of the last ACK sent
		if err := d.write(segment(delackClient, delackServer, header.TCPFlagAck, 1, a, 0)); err != nil {
			t.Fatal(err)
		}
		d.mu.Lock()
		gen, set := d.flows[k].heldGen, d.flows[k].timerSet
		d.mu.Unlock()
		if !set || gen != d.gen || d.gen != 1 {
			t.Fatalf("hold %d: timer set %v, generation %d of %d; want the first hold's timer", i+1, set, gen, d.gen)
		}
	}
	deadline := time.Now().Add(2 * time.Second)
	for log.count() == before && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if log.count() != before+1 || log.acks[len(log.acks)-1] != ack-100 {
		t.Fatalf("sent %d after the holds, last acknowledging %d; want one, acknowledging %d", log.count()-before, log.acks[len(log.acks)-1], ack-100)
	}
}

// TestAckDelayerKeepsOrder: a held ACK its timer is sending leaves before
// a segment of its flow written meanwhile.
func TestAckDelayerKeepsOrder(t *testing.T) {
	var mu sync.Mutex
	var order []string
	started := make(chan struct{})
	send := func(pkt []byte) error {
		_, _, _, n, _ := tcpOf(pkt)
		what := "request"
		if n == 0 {
			what = "ack"
		}
		if what == "ack" && started != nil {
			close(started)
			started = nil
			time.Sleep(50 * time.Millisecond) // the timer's send is slow
		}
		mu.Lock()
		order = append(order, what)
		mu.Unlock()
		return nil
	}
	d, ack := pastQuick(t, func([]byte) error { return nil })
	d.send = send
	ch := started
	if err := d.write(segment(delackClient, delackServer, header.TCPFlagAck, 1, ack, 0)); err != nil {
		t.Fatal(err)
	}
	k := ackFlowKey{src: delackClient, dst: delackServer}
	d.mu.Lock()
	gen := d.flows[k].heldGen
	d.mu.Unlock()
	go d.expire(k, gen)
	<-ch
	if err := d.write(segment(delackClient, delackServer, header.TCPFlagAck|header.TCPFlagPsh, 1, ack, 100)); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(order) != 2 || order[0] != "ack" {
		t.Errorf("the wire saw %v, want the held ACK first", order)
	}
}

// TestAckDelayerRemembers: "a full segment" is the largest one received,
// not the last; and an ACK its timer sent counts as the last ACK sent, so
// the same ACK again is a duplicate and goes at once.
func TestAckDelayerRemembers(t *testing.T) {
	var log sentLog
	d, ack := pastQuick(t, log.send) // segments of 300 bytes so far
	k := ackFlowKey{src: delackClient, dst: delackServer}
	if err := d.write(segment(delackClient, delackServer, header.TCPFlagAck|header.TCPFlagPsh, 1, ack, 100)); err != nil {
		t.Fatal(err) // a request: everything so far acknowledged
	}
	d.received(segment(delackServer, delackClient, header.TCPFlagAck, ack, 1, 100))
	d.received(segment(delackServer, delackClient, header.TCPFlagAck, ack+100, 1, 100))
	before := log.count()
	if err := d.write(segment(delackClient, delackServer, header.TCPFlagAck, 101, ack+200, 0)); err != nil {
		t.Fatal(err)
	}
	if log.count() != before {
		t.Fatal("an ACK of 200 bytes went at once, though segments of 300 came: the full segment is the largest")
	}
	d.mu.Lock()
	gen := d.flows[k].heldGen
	d.mu.Unlock()
	d.expire(k, gen)
	if log.count() != before+1 {
		t.Fatal("the timer did not send the held ACK")
	}
	if err := d.write(segment(delackClient, delackServer, header.TCPFlagAck, 101, ack+200, 0)); err != nil {
		t.Fatal(err)
	}
	if log.count() != before+2 {
		t.Error("the ACK the timer sent, sent again, was held: a duplicate goes at once")
	}
}
