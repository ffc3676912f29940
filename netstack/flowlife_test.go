package netstack

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/gwlbproxy/gwlbproxy/internal/monoclock"
)

// TestTCPFlowStates: which segments make a TCP flow established, and which
// make it transitory again.
func TestTCPFlowStates(t *testing.T) {
	const (
		syn    = flagSyn
		synAck = flagSyn | flagAck
		ack    = flagAck
		fin    = flagFin | flagAck
		rst    = flagRst
	)
	type seg struct {
		fromClient bool
		flags      uint8
	}
	c := func(f uint8) seg { return seg{true, f} }
	s := func(f uint8) seg { return seg{false, f} }
	for _, tc := range []struct {
		name string
		segs []seg
		live bool
	}{
		{"nothing yet", nil, false},
		{"a SYN answered, not completed", []seg{c(syn), s(synAck)}, false},
		{"the handshake", []seg{c(syn), s(synAck), c(ack)}, true},
		{"a stray ACK, refused", []seg{c(ack), s(rst)}, false},
		{"a stray ACK before any SYN-ACK", []seg{c(ack)}, false},
		{"the stack speaks on a flow made again", []seg{c(ack), s(ack)}, true},
		{"reset by the client", []seg{c(syn), s(synAck), c(ack), c(rst)}, false},
		{"reset by the stack", []seg{c(syn), s(synAck), c(ack), s(rst)}, false},
		{"a RST the stack ignored", []seg{c(syn), s(synAck), c(ack), c(rst), s(ack)}, true},
		{"closed by the client only", []seg{c(syn), s(synAck), c(ack), c(fin)}, true},
		{"closed both ways", []seg{c(syn), s(synAck), c(ack), c(fin), s(fin)}, false},
		{"a new connection on closed ports", []seg{c(syn), s(synAck), c(ack), c(fin), s(fin), c(syn)}, false},
		{"and its handshake", []seg{c(syn), s(synAck), c(ack), c(fin), s(fin), c(syn), s(synAck), c(ack)}, true},
		// The stack's challenge ACKs are rate-limited: a duplicate SYN
		// on a live connection may get none, and must not undo it.
		{"duplicate SYNs on a live connection", []seg{c(syn), s(synAck), c(ack), c(syn), c(syn)}, true},
		{"a RST the stack ignored, then the client's ACK", []seg{c(syn), s(synAck), c(ack), c(rst), c(ack)}, true},
		{"the stack's RST to a stray segment during the handshake", []seg{c(syn), s(synAck), s(rst), c(ack)}, true},
	} {
		var f Flow
		for _, sg := range tc.segs {
			if sg.fromClient {
				f.tcpClient(sg.flags)
			} else {
				f.tcpStack(sg.flags)
			}
		}
		if f.tcpLive() != tc.live {
			t.Errorf("%s: live %v, want %v (state %05b)", tc.name, f.tcpLive(), tc.live, f.tcp.Load())
		}
	}
}

// TestStrayTCPFlowsExpireSoon plays a client that sends a bare ACK to a
// new port, over and over: the stack refuses each with a RST, and each
// made a flow that lived for the TCP idle timeout (350 s), so a few
// clients at a few thousand packets a second held the whole table, every
// endpoint's. Such flows now live for the transitory timeout, while an
// established connection's flow keeps the idle timeout.
func TestStrayTCPFlowsExpireSoon(t *testing.T) {
	client, server := netip.MustParseAddrPort("198.18.0.5:40000"), netip.MustParseAddrPort("198.18.9.9:443")
	r := newGRORigWith(t, client, server, func(c *Config) { c.MaxFlows, c.MaxFlowsPerClient = 100, 10 })
	k := (&Packet{Proto: protoTCP, Src: client.Addr().As16(), Dst: server.Addr().As16(), SrcPort: client.Port(), DstPort: server.Port()}).Key(7)
	if f := r.s.flows.Lookup(&k); f == nil || !f.tcpLive() {
		t.Fatalf("the handshake's flow is not established (held %v)", f != nil)
	}

	stray := netip.MustParseAddr("198.18.0.66")
	for i := range 20 {
		r.batch(clientSegment(netip.AddrPortFrom(stray, uint16(20000+i)), server, 1, 1, header.TCPFlagAck, nil))
	}
	st := r.s.Stats()
	if st.Flows != 11 || st.Drops["client_flow_limit"] != 10 {
		t.Fatalf("after 20 stray ACKs: %d flows (want the connection's and 10), drops %v", st.Flows, st.Drops)
	}
	readReplySegment(t, r.gwlb, header.TCPFlagRst) // refused, not ignored

	later := monoclock.Now() + int64(DefaultTransitoryTimeout+time.Second)
	if n := r.s.flows.Expire(later); n != 10 {
		t.Fatalf("%d flows expired after the transitory timeout, want the 10 stray ones", n)
	}
	if r.s.flows.Lookup(&k) == nil {
		t.Fatal("the established connection's flow expired with them")
	}
	r.batch(clientSegment(netip.AddrPortFrom(stray, 30000), server, 1, 1, header.TCPFlagAck, nil))
	if n := r.s.Stats().Flows; n != 2 {
		t.Fatalf("the stray client cannot make a flow again: %d flows", n)
	}

	// The connection reset: transitory too, once the stack has taken the
	// RST (its connection gone; Expire asks the stack about reset flows).
	r.batch(clientSegment(client, server, r.seq, r.ack, header.TCPFlagRst, nil))
	waitUntil(t, 5*time.Second, "the stack to take the RST", func() (bool, string) {
		return !r.s.holdsTCP(&k), "the stack still holds the connection"
	})
	if n := r.s.flows.Expire(later); n != 2 || r.s.flows.Lookup(&k) != nil {
		t.Fatalf("after the client's RST: %d expired, want the reset flow and the stray one", n)
	}
}

// TestSpoofedRstKeepsIdleFlow plays a host that writes a neighbour's
// address: one RST for the neighbour's idle connection, out of its window
// (any sequence number will do). The stack ignores it (RFC 5961), but the
// flow was marked reset, turned transitory, and expired after 30 s without
// a packet; the stack's later answer on the still-open connection was then
// dropped as reply_without_flow. Now the flow stays while the stack holds
// the connection, and a RST the stack takes still expires it soon.
func TestSpoofedRstKeepsIdleFlow(t *testing.T) {
	for _, fam := range groFamilies {
		t.Run(fam.name, func(t *testing.T) {
			r := newGRORig(t, fam.client, fam.server)
			k := (&Packet{Proto: protoTCP, IPv6: fam.client.Addr().Is6(), Src: fam.client.Addr().As16(), Dst: fam.server.Addr().As16(), SrcPort: fam.client.Port(), DstPort: fam.server.Port()}).Key(7)
			r.batch(clientSegment(fam.client, fam.server, r.seq+0x40000000, 0, header.TCPFlagRst, nil))
			r.noReply(t, 200*time.Millisecond) // out of the window: ignored, no challenge ACK
			later := monoclock.Now() + int64(DefaultTransitoryTimeout+time.Second)
			if n := r.s.flows.Expire(later); n != 0 || r.s.flows.Lookup(&k) == nil {
				t.Fatalf("the spoofed RST expired the connection's flow (%d expired)", n)
			}
			if f := r.s.flows.Lookup(&k); !f.tcpLive() {
				t.Fatalf("the flow is not established again after the check (state %05b)", f.tcp.Load())
			}
			r.answer(t, "late answer")
			if d := r.s.Stats().Drops["reply_without_flow"]; d != 0 {
				t.Fatalf("%d replies dropped without a flow", d)
			}

			// A RST in the window, at the next sequence number, ends the
			// connection: its flow goes after the transitory timeout.
			r.batch(clientSegment(fam.client, fam.server, r.seq, 0, header.TCPFlagRst, nil))
			waitUntil(t, 5*time.Second, "the stack to take the RST", func() (bool, string) {
				return !r.s.holdsTCP(&k), "the stack still holds the connection"
			})
			later = monoclock.Now() + int64(DefaultTransitoryTimeout+time.Second)
			if n := r.s.flows.Expire(later); n != 1 || r.s.flows.Lookup(&k) != nil {
				t.Fatalf("after the client's real RST: %d expired, want its flow", n)
			}
		})
	}
}

// TestSynAfterTimeWait: when the destination closes first, the stack is
// the active closer and its end goes to TIME_WAIT, where gVisor hands a
// SYN reopening the 5-tuple only to a listening endpoint, which the
// forwarder is not: the SYN was dropped silently for gVisor's 60 s, and a
// client reusing its port towards the same destination waited out its SYN
// retries. TIME_WAIT is now a second: the SYN retried after it gets its
// SYN-ACK, and the flow table, still holding the closed flow, lets the new
// connection through and makes its flow established again.
func TestSynAfterTimeWait(t *testing.T) {
	for _, fam := range groFamilies {
		t.Run(fam.name, func(t *testing.T) {
			var h *AcceptHandler
			r := newGRORigWith(t, fam.client, fam.server, func(c *Config) { h = c.Handler.(*AcceptHandler) })
			k := (&Packet{Proto: protoTCP, IPv6: fam.client.Addr().Is6(), Src: fam.client.Addr().As16(), Dst: fam.server.Addr().As16(), SrcPort: fam.client.Port(), DstPort: fam.server.Port()}).Key(7)
			r.conn.Close() // the destination closed first: the stack sends its FIN
			fin := readReplySegment(t, r.gwlb, header.TCPFlagFin|header.TCPFlagAck)
			r.ack = fin.SequenceNumber() + 1
			r.batch(clientSegment(fam.client, fam.server, r.seq, r.ack, header.TCPFlagFin|header.TCPFlagAck, nil))
			r.seq++
			readReplySegment(t, r.gwlb, header.TCPFlagAck)
			if !r.s.holdsTCP(&k) {
				t.Fatal("the stack's end is not in TIME_WAIT")
			}
			if f := r.s.flows.Lookup(&k); f == nil || f.tcpLive() {
				t.Fatalf("the closed connection's flow: held %v, want it held and transitory", f != nil)
			}

			// The client's SYN retried a second and a half later, with a
			// higher ISN, as a kernel reusing the port sends it.
			time.Sleep(1500 * time.Millisecond)
			isn := r.seq + 100000
			r.batch(clientSegment(fam.client, fam.server, isn, 0, header.TCPFlagSyn, nil))
			synAck := readReplySegment(t, r.gwlb, header.TCPFlagSyn|header.TCPFlagAck)
			if synAck.AckNumber() != isn+1 {
				t.Fatalf("SYN-ACK acknowledges %d, want %d", synAck.AckNumber(), isn+1)
			}
			r.batch(clientSegment(fam.client, fam.server, isn+1, synAck.SequenceNumber()+1, header.TCPFlagAck, nil))
			select {
			case c := <-h.Conns:
				t.Cleanup(c.Abort)
			case <-time.After(5 * time.Second):
				t.Fatal("the reopened connection was not accepted")
			}
			if f := r.s.flows.Lookup(&k); f == nil || !f.tcpLive() {
				t.Fatal("the reopened connection's flow is not established")
			}
		})
	}
}

// TestClientFragmentsReordered: a client's datagram whose last fragment
// overtakes the middle ones on the way is still reassembled. The last
// fragment used to free its first's entry, as it does for the stack's own
// replies (written in order), and the middle ones were then dropped as
// fragment_without_flow.
func TestClientFragmentsReordered(t *testing.T) {
	h := &testHandler{udp: make(chan []byte, 1)}
	s := startServer(t, Config{Handler: h})
	frags := fragment(udpPacket(3000, 5000), 0x4343, 1500)
	if len(frags) < 4 {
		t.Fatalf("%d fragments, want at least 4", len(frags))
	}
	order := append([][]byte{frags[0], frags[len(frags)-1]}, frags[1:len(frags)-1]...)
	from := netip.MustParseAddrPort("127.0.0.2:40000")
	for _, f := range order {
		s.handleDatagram(geneve(9, ipv4Sum(f)), from, nil)
	}
	select {
	case d := <-h.udp:
		if len(d) != 5000 {
			t.Fatalf("the handler got %d bytes, want 5000", len(d))
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("the reordered datagram never reached the handler; drops %v", s.Stats().Drops)
	}
}

// TestClientFragmentsAmidAnotherClients: a client's fragmented datagram
// still reaches the handler whole when another client behind the same
// endpoint sends 1,024 first fragments, each under a new ID, between its
// first fragment and the rest. They took the oldest entries of the shared
// fragment table, the victim's among them, and its later fragments were
// dropped as fragment_without_flow.
func TestClientFragmentsAmidAnotherClients(t *testing.T) {
	h := &testHandler{udp: make(chan []byte, 1)}
	s := startServer(t, Config{Handler: h})
	from := netip.MustParseAddrPort("127.0.0.2:40000")
	frags := fragment(udpPacket(3000, 3000), 0x4343, 1500)
	s.handleDatagram(geneve(9, ipv4Sum(frags[0])), from, nil)
	attacker := netip.AddrPortFrom(netip.MustParseAddr("198.18.0.66"), 4000)
	for id := range uint32(1024) {
		f := fragment(udpDatagram(attacker, netip.AddrPortFrom(testDest, 53), 200), id, 100)[0]
		s.handleDatagram(geneve(9, ipv4Sum(f)), from, nil)
	}
	for _, f := range frags[1:] {
		s.handleDatagram(geneve(9, ipv4Sum(f)), from, nil)
	}
	select {
	case d := <-h.udp:
		if len(d) != 3000 {
			t.Fatalf("the handler got %d bytes, want 3000", len(d))
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("the victim's datagram never reached the handler; drops %v", s.Stats().Drops)
	}
}

// TestFragmentedEchoDropped: an echo request too big for one packet (ping
// -s 3000 over a 1,500-byte path) is dropped and counted. It was relayed
// with its first fragment's data alone, and the client got a well-formed
// reply carrying less than it sent.
func TestFragmentedEchoDropped(t *testing.T) {
	c := gwlbSocket(t, "127.0.0.1:0")
	s := startServer(t, Config{ReplyPort: c.LocalAddr().(*net.UDPAddr).AddrPort().Port()})
	for _, f := range fragment(echoPacket(1, strings.Repeat("p", 3000)), 0x4444, 1500) {
		if _, err := c.WriteToUDPAddrPort(geneve(7, ipv4Sum(f)), s.Addr()); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, 5*time.Second, "an echo_fragmented drop", func() (bool, string) {
		st := s.Stats()
		return st.Drops["echo_fragmented"] == 1, fmt.Sprintf("drops %v", st.Drops)
	})
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := c.Read(make([]byte, 65536)); err == nil {
		t.Fatalf("a reply of %d bytes to a fragmented echo request", n)
	}
	if n := s.Stats().EchoRequests; n != 0 {
		t.Fatalf("%d echo requests relayed", n)
	}
}
