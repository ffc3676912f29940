package netstack

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// fromOtherSender hands the rig's server pkt under another sender's GENEVE
// header (attachment and flow cookie 0xbad, from another GWLB source port),
// as the GWLB brings in a packet of another client's flow.
func fromOtherSender(r *groRig, pkt []byte) {
	d := append(AppendHeader(nil, r.ether, 0, 7, 0xbad, 0xbad, nil), pkt...)
	r.s.handleDatagram(d, netip.MustParseAddrPort("127.0.0.2:47002"), nil)
}

// readSegmentWhere reads the stack's replies from the rig's GWLB socket
// until one under flow cookie cookie, to port dport, has flags flags, and
// returns it; it fails the test after 3 s without one.
func readSegmentWhere(t *testing.T, r *groRig, cookie uint32, dport uint16, flags header.TCPFlags) header.TCP {
	t.Helper()
	buf := make([]byte, maxDatagram)
	r.gwlb.SetReadDeadline(time.Now().Add(3 * time.Second))
	defer r.gwlb.SetReadDeadline(time.Time{})
	for {
		tcp, err := readReplyTCP(r.gwlb, buf)
		if err != nil {
			t.Fatalf("no segment %s to port %d under flow cookie %#x: %v (drops %v)", flags, dport, cookie, err, r.s.Stats().Drops)
		}
		if h, _ := ParseHeader(buf); tcp != nil && h.FlowCookie == cookie && tcp.DestinationPort() == dport && tcp.Flags() == flags {
			return tcp
		}
	}
}

// TestHandshakeSurvivesPacketFromDestination: a packet from the
// destination's side (D:dp -> V:vp) sent while V's handshake to D:dp from
// V:vp is in progress leaves V's flow alone: its GENEVE header stays V's,
// the stack's retransmitted SYN-ACK reaches V under it, and V's ACK
// completes the connection. The flow key was the same both ways, and a
// flow not yet live was taken over by a packet from its other end: anyone
// behind the endpoint who guessed V's port within the handshake's round
// trip took V's flow, and the stack's SYN-ACKs to V were dropped
// (reply_not_to_client). Now D's packet is keyed as a flow of D's own.
func TestHandshakeSurvivesPacketFromDestination(t *testing.T) {
	for _, fam := range groFamilies {
		t.Run(fam.name, func(t *testing.T) {
			r := newGRORig(t, fam.client, fam.server)
			v := netip.AddrPortFrom(fam.client.Addr(), fam.client.Port()+1)
			r.batch(clientSegment(v, r.server, 5000, 0, header.TCPFlagSyn, nil))
			iss := readSegmentWhere(t, r, 9, v.Port(), header.TCPFlagSyn|header.TCPFlagAck).SequenceNumber()

			fromOtherSender(r, clientSegment(r.server, v, 12345, 777, header.TCPFlagAck, nil))
			// A SYN-ACK from that side too: a segment with the SYN bit that
			// is not a bare SYN starts no connection, and would show an IDS
			// a server's answer to V's handshake.
			fromOtherSender(r, clientSegment(r.server, v, 12345, 5001, header.TCPFlagSyn|header.TCPFlagAck, nil))
			if st := r.s.Stats(); st.Drops["stray_from_destination"] != 2 || st.Flows != 2 {
				t.Fatalf("an ACK and a SYN-ACK from the destination's side of V's handshake: stray_from_destination %d, %d flows; want 2, and the rig's and V's flows alone",
					st.Drops["stray_from_destination"], st.Flows)
			}
			p, _ := ParsePacket(clientSegment(v, r.server, 0, 0, header.TCPFlagAck, nil), r.ether)
			k := p.Key(7)
			f := r.s.flows.Lookup(&k)
			if f == nil {
				t.Fatal("V's handshake has no flow after a packet from the destination's side")
			}
			if h := f.Header(); h.FlowCookie != 9 || f.tcp.Load()&tcpSynAcked == 0 {
				t.Fatalf("V's flow after a packet from the destination's side: cookie %#x, state %b; want 9, SYN-ACKed", h.FlowCookie, f.tcp.Load())
			}
			// V's ACK was lost: the stack sends its SYN-ACK again (after
			// gVisor's initial RTO of 1 s), under V's header.
			if seq := readSegmentWhere(t, r, 9, v.Port(), header.TCPFlagSyn|header.TCPFlagAck).SequenceNumber(); seq != iss {
				t.Fatalf("retransmitted SYN-ACK with sequence %d, want %d", seq, iss)
			}
			r.batch(clientSegment(v, r.server, 5001, iss+1, header.TCPFlagAck, nil))
			select {
			case c := <-r.conns:
				defer c.Abort()
				if got := c.RemoteAddr().(*net.TCPAddr).AddrPort(); got != v {
					t.Fatalf("accepted a connection from %v, want V's %v", got, v)
				}
			case <-time.After(3 * time.Second):
				t.Fatal("V's handshake did not complete")
			}
			if !f.tcpLive() || r.s.flows.Lookup(&k) != f {
				t.Fatalf("V's flow after its handshake: live %v, still in the table %v", f.tcpLive(), r.s.flows.Lookup(&k) == f)
			}
		})
	}
}

// TestSymmetricPortPairTCP: two hosts behind one endpoint, each a client
// of the other through the appliance on the same port pair (V1:5000 ->
// V2:5000, then V2:5000 -> V1:5000), each get their own flow and
// connection, answered under their own GENEVE headers, once V1's
// connection is no longer live. The flow key was the same both ways: the
// second host's SYN found the first's live flow and was dropped
// (not_from_client). While V1's connection is live, V2's SYN is refused
// (stray_from_destination): the 4-tuple is V1's, and a flow of V2's taken
// in on it would let every later segment of V2's (a RST in V1's window)
// reach the IDS feed as part of V1's connection.
func TestSymmetricPortPairTCP(t *testing.T) {
	for _, fam := range groFamilies {
		t.Run(fam.name, func(t *testing.T) {
			v1 := netip.AddrPortFrom(fam.client.Addr(), 5000)
			v2 := netip.AddrPortFrom(fam.server.Addr(), 5000)
			r := newGRORig(t, v1, v2)
			fromOtherSender(r, clientSegment(v2, v1, 9000, 0, header.TCPFlagSyn, nil))
			if st := r.s.Stats(); st.Flows != 1 || st.Drops["stray_from_destination"] != 1 {
				t.Fatalf("V2's SYN while V1's connection is live: %d flows, stray_from_destination %d; want 1 and 1", st.Flows, st.Drops["stray_from_destination"])
			}
			if _, err := r.conn.Write([]byte("to V1")); err != nil {
				t.Fatal(err)
			}
			readSegmentWhere(t, r, 9, 5000, header.TCPFlagAck|header.TCPFlagPsh)
			r.batch(clientSegment(v1, v2, r.seq, r.ack, header.TCPFlagRst|header.TCPFlagAck, nil)) // V1's connection ends

			fromOtherSender(r, clientSegment(v2, v1, 9000, 0, header.TCPFlagSyn, nil))
			iss := readSegmentWhere(t, r, 0xbad, 5000, header.TCPFlagSyn|header.TCPFlagAck).SequenceNumber()
			fromOtherSender(r, clientSegment(v2, v1, 9001, iss+1, header.TCPFlagAck, nil))
			var c2 *Conn
			select {
			case c2 = <-r.conns:
				defer c2.Abort()
			case <-time.After(3 * time.Second):
				t.Fatal("V2's connection to V1 was not accepted")
			}
			if got := c2.RemoteAddr().(*net.TCPAddr).AddrPort(); got != v2 {
				t.Fatalf("V2's connection comes from %v, want %v", got, v2)
			}
			if _, err := c2.Write([]byte("to V2")); err != nil {
				t.Fatal(err)
			}
			readSegmentWhere(t, r, 0xbad, 5000, header.TCPFlagAck|header.TCPFlagPsh)
			if st := r.s.Stats(); st.Flows != 2 || st.Drops["stray_from_destination"] != 1 {
				t.Fatalf("%d flows, want 2 (drops %v)", st.Flows, st.Drops)
			}
		})
	}
}

// flowsHandler answers each UDP flow's first datagram with itself and
// reports the flow.
type flowsHandler struct {
	testHandler
	flows chan FlowInfo
}

func (h *flowsHandler) HandleUDP(fi FlowInfo, conn net.Conn) {
	defer conn.Close()
	h.flows <- fi
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 65536)
	if n, err := conn.Read(buf); err == nil {
		conn.Write(buf[:n])
	}
}

// TestSymmetricPortPairUDP: NTP between two hosts behind one endpoint
// (V1:123 -> V2:123, answered, then V2:123 -> V1:123) makes two flows,
// each with its own client, each answered under its own GENEVE header.
// The second host's datagram found the first's flow, answered and so
// live, and was dropped (not_from_client).
func TestSymmetricPortPairUDP(t *testing.T) {
	gwlb := gwlbSocket(t, "127.0.0.2:0")
	h := &flowsHandler{flows: make(chan FlowInfo, 2)}
	s := startServer(t, Config{Handler: h, ReplyPort: gwlb.LocalAddr().(*net.UDPAddr).AddrPort().Port()})
	v1, v2 := netip.AddrPortFrom(testClient, 123), netip.AddrPortFrom(testDest, 123)
	buf := make([]byte, maxDatagram)
	for i, c := range []struct {
		src, dst netip.AddrPort
		cookie   uint32
		from     string
	}{{v1, v2, 0x111, "127.0.0.2:47001"}, {v2, v1, 0x222, "127.0.0.2:47002"}} {
		d := append(AppendHeader(nil, EtherTypeIPv4, 0, 7, uint64(c.cookie), c.cookie, nil), ipv4Sum(udpDatagram(c.src, c.dst, 48))...)
		s.handleDatagram(d, netip.MustParseAddrPort(c.from), nil)
		select {
		case fi := <-h.flows:
			if fi.Client != c.src || fi.Dest != c.dst {
				t.Fatalf("flow %d: client %v dest %v, want %v and %v", i, fi.Client, fi.Dest, c.src, c.dst)
			}
		case <-time.After(3 * time.Second):
			t.Fatalf("flow %d (%v -> %v) not handed over; drops %v", i, c.src, c.dst, s.Stats().Drops)
		}
		gwlb.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, err := gwlb.Read(buf)
		if err != nil {
			t.Fatalf("flow %d not answered: %v; drops %v", i, err, s.Stats().Drops)
		}
		rh, _ := ParseHeader(buf[:n])
		p, _ := ParsePacket(buf[rh.Len:n], rh.Protocol)
		if rh.FlowCookie != c.cookie || p.Dst != c.src.Addr().As16() || p.Src != c.dst.Addr().As16() {
			t.Fatalf("flow %d's answer: cookie %#x, %v -> %v; want cookie %#x, %v -> %v", i, rh.FlowCookie, p.SrcAddr(), p.DstAddr(), c.cookie, c.dst, c.src)
		}
	}
	if st := s.Stats(); st.Flows != 2 {
		t.Fatalf("%d flows, want 2 (drops %v)", st.Flows, st.Drops)
	}
}
