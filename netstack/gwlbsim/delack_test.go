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

// FuzzTCPOf: the delayer's parser takes whatever the appliance sends the
// client without panicking, and what it accepts lies inside the packet.
func FuzzTCPOf(f *testing.F) {
	f.Add(segment(delackClient, delackServer, header.TCPFlagAck, 1, 2, 10))
	f.Add(segment(netip.MustParseAddrPort("[fd00::5]:1"), netip.MustParseAddrPort("[fd00::6]:2"), header.TCPFlagAck, 1, 2, 0))
	f.Fuzz(func(t *testing.T, pkt []byte) {
		_, _, tcp, n, ok := tcpOf(pkt)
		if ok && (n < 0 || len(tcp) > len(pkt) || int(tcp.DataOffset())+n != len(tcp)) {
			t.Fatalf("tcpOf(%x): header %d bytes, payload %d, segment %d", pkt, tcp.DataOffset(), n, len(tcp))
		}
		d := newAckDelayer(func([]byte) error { return nil })
		d.received(pkt)
		_ = d.write(pkt)
	})
}
