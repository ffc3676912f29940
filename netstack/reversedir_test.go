package netstack

import (
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/gwlbproxy/gwlbproxy/internal/monoclock"
)

// destinationSide sends the rig's stack a TCP segment from the flow's
// destination to its client (D:dp -> V:vp), the reverse of the rig's
// connection, under another sender's GENEVE header (attachment and flow
// cookie 0xbad, from another GWLB source port): what a host behind the
// endpoint that is itself the destination, or forges its address, sends.
// Its flow key was the client's flow's while the key was the same both
// ways; with a direction, it is a flow of D's own.
func destinationSide(r *groRig, seq, ack uint32, flags header.TCPFlags) {
	seg := clientSegment(r.server, r.client, seq, ack, flags, nil)
	d := append(AppendHeader(nil, r.ether, 0, 7, 0xbad, 0xbad, nil), seg...)
	r.s.handleDatagram(d, netip.MustParseAddrPort("127.0.0.2:47002"), nil)
}

// TestDestinationSideLeavesClientSendWindow: segments from the
// destination's side of a flow neither move nor restart the send window
// the flow keeps for the client's connection (tcpseq.go), so a router's
// Packet Too Big about the segment in flight is still taken. While the
// flow key was the same both ways, the window moved on any segment of it:
// a forged ACK from the destination acknowledging up to SND.NXT made
// SND.UNA SND.NXT, and every real error about data in flight was dropped
// (icmp_mtu_bad_sequence: a path MTU black hole); a forged SYN had gVisor
// answer with a SYN-ACK (V:vp -> D:dp) for a second connection, which
// restarted the window at that connection's ISN, leaving the real segments
// out of it (or, after the client's next data, a window of up to 2^31
// that a blind forged error hits one time in three or so).
func TestDestinationSideLeavesClientSendWindow(t *testing.T) {
	mss8960 := []byte{2, 4, 0x23, 0x00}
	routers := []string{"198.18.200.1", "2001:db8:c8::1"}
	for fi, fam := range groFamilies {
		for _, kind := range []string{"ack", "syn"} {
			t.Run(fam.name+"/"+kind, func(t *testing.T) {
				r := newGRORigOpts(t, fam.client, fam.server, func(*Config) {}, mss8960, nil)
				if _, err := r.conn.Write(make([]byte, 4000)); err != nil {
					t.Fatal(err)
				}
				first, size := nextDataSegment(t, r)
				if size != 4000 {
					t.Fatalf("the first data segment carries %d bytes, want 4000", size)
				}
				if kind == "ack" {
					destinationSide(r, 12345, first+4000, header.TCPFlagAck)
				} else {
					destinationSide(r, 777, 0, header.TCPFlagSyn)
				}

				mtu, hdrs := uint32(minPathMTUv4), 40
				if fi == 1 {
					mtu, hdrs = minPathMTUv6, 60
				}
				quoted := clientSegment(r.server, r.client, first, r.seq, header.TCPFlagAck, nil)
				d := append(AppendHeader(nil, r.ether, 0, 7, 0xbad, 0xbad, nil),
					pathMTUError(netip.MustParseAddr(routers[fi]), quoted, mtu)...)
				r.s.handleDatagram(d, netip.MustParseAddrPort("127.0.0.2:47003"), nil)
				if got := r.s.Stats().Drops["icmp_mtu_bad_sequence"]; got != 0 {
					t.Errorf("a router's error about the segment in flight was dropped (icmp_mtu_bad_sequence %d) after a %s from the destination's side", got, kind)
				}
				if _, err := r.conn.Write(make([]byte, 4000)); err != nil {
					t.Fatal(err)
				}
				if _, next := nextDataSegment(t, r); next > int(mtu)-hdrs {
					t.Errorf("after the router's error the next data segment carries %d bytes, want at most %d", next, int(mtu)-hdrs)
				}
			})
		}
	}
}

// TestDestinationSideLeavesClientFlowState: a FIN or RST from the
// destination's side of a live flow, and the stack's answers to it, leave
// the flow's TCP state live. They made it closed one way or reset, and so
// transitory, to expire after the transitory timeout of quiet though the
// client's connection was open.
func TestDestinationSideLeavesClientFlowState(t *testing.T) {
	for _, c := range []struct {
		name  string
		flags header.TCPFlags
	}{{"FIN", header.TCPFlagAck | header.TCPFlagFin}, {"RST", header.TCPFlagRst}} {
		t.Run(c.name, func(t *testing.T) {
			fam := groFamilies[0]
			r := newGRORig(t, fam.client, fam.server)
			f := r.flow(t)
			if !f.tcpLive() {
				t.Fatalf("the rig's flow is not live: state %b", f.tcp.Load())
			}
			destinationSide(r, 12345, 777, c.flags)
			time.Sleep(50 * time.Millisecond) // the stack's answer, if any
			if !f.tcpLive() {
				t.Errorf("after a %s from the destination's side the flow's state is %b, not live", c.name, f.tcp.Load())
			}
		})
	}
}

// flow returns the table's flow of the rig's connection.
func (r *groRig) flow(t *testing.T) *Flow {
	t.Helper()
	p, _ := ParsePacket(clientSegment(r.client, r.server, 0, 0, header.TCPFlagAck, nil), r.ether)
	k := p.Key(7)
	f := r.s.flows.Lookup(&k)
	if f == nil {
		t.Fatal("the rig's connection has no flow")
	}
	return f
}

// TestDestinationSideKeepsClientHeader: a packet from the destination's
// side of a flow, under another GENEVE header from another GWLB source
// port, does not move the flow to that header: the stack's next segment
// to the client still leaves under the client's (flow cookie 9). The flow
// follows the newest header so that replies follow a rebalance, and it
// took any packet of its key's.
func TestDestinationSideKeepsClientHeader(t *testing.T) {
	for _, fam := range groFamilies {
		t.Run(fam.name, func(t *testing.T) {
			r := newGRORig(t, fam.client, fam.server)
			destinationSide(r, 12345, 777, header.TCPFlagAck)
			if h := r.flow(t).Header(); h.FlowCookie != 9 || h.Attachment != 8 {
				t.Errorf("the flow's header after a packet from the destination's side: cookie %#x attachment %#x, want 9 and 8", h.FlowCookie, h.Attachment)
			}
			if _, err := r.conn.Write([]byte("reply")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, maxDatagram)
			r.gwlb.SetReadDeadline(time.Now().Add(3 * time.Second))
			for {
				tcp, err := readReplyTCP(r.gwlb, buf)
				if err != nil {
					t.Fatalf("no data segment: %v", err)
				}
				if tcp == nil || len(tcp.Payload()) == 0 {
					continue
				}
				// readReplyTCP read the datagram into buf from its start.
				if h, _ := ParseHeader(buf); h.FlowCookie != 9 {
					t.Errorf("the reply to the client left under flow cookie %#x, want 9 (the client's)", h.FlowCookie)
				}
				return
			}
		})
	}
}

// TestDestinationSideIsItsOwnFlow: a SYN from a flow's destination's side
// (D:dp -> V:vp) is a flow of D's own: the stack answers it to D, under
// D's GENEVE header, never under the client's. Keyed the same both ways,
// it had gVisor open a second connection under the client's flow,
// answered under the client's GENEVE header; then it was dropped
// (not_from_client), and two hosts that were each other's destination on
// one port pair lost one direction. While the client's connection is live
// such a SYN is refused (stray_from_destination, TestSymmetricPortPairTCP):
// the SYN here comes once the client has reset it.
func TestDestinationSideIsItsOwnFlow(t *testing.T) {
	for _, fam := range groFamilies {
		t.Run(fam.name, func(t *testing.T) {
			r := newGRORig(t, fam.client, fam.server)
			r.batch(clientSegment(r.client, r.server, r.seq, r.ack, header.TCPFlagRst|header.TCPFlagAck, nil))
			destinationSide(r, 777, 0, header.TCPFlagSyn)
			buf := make([]byte, maxDatagram)
			r.gwlb.SetReadDeadline(time.Now().Add(3 * time.Second))
			for {
				tcp, err := readReplyTCP(r.gwlb, buf)
				if err != nil {
					t.Fatalf("the SYN from the destination's side was not answered: %v", err)
				}
				if tcp == nil || tcp.Flags()&header.TCPFlagSyn == 0 {
					continue
				}
				h, _ := ParseHeader(buf)
				if h.FlowCookie != 0xbad || tcp.DestinationPort() != r.server.Port() || tcp.AckNumber() != 778 {
					t.Fatalf("the SYN-ACK to the destination's side: cookie %#x, to port %d, ack %d; want 0xbad, %d, 778",
						h.FlowCookie, tcp.DestinationPort(), tcp.AckNumber(), r.server.Port())
				}
				break
			}
			if n := r.s.Stats().Flows; n != 2 {
				t.Errorf("%d flows, want the client's and D's", n)
			}
		})
	}
}

// TestReplyAfterExpiryNotUnderOtherHeader: when the client's flow has
// expired and a packet from the destination's side came in, the stack's
// next segment to the client finds no flow and is dropped
// (reply_without_flow): D's packet made a flow of D's, and the client's
// data never leaves under its header. Keyed the same both ways, D's
// packet made the client's flow again under D's header, and the client's
// data left under it, towards whoever sent it (then: reply_not_to_client).
func TestReplyAfterExpiryNotUnderOtherHeader(t *testing.T) {
	for _, fam := range groFamilies {
		t.Run(fam.name, func(t *testing.T) {
			r := newGRORig(t, fam.client, fam.server)
			r.s.flows.Expire(monoclock.Now() + int64(24*time.Hour))
			destinationSide(r, 12345, 777, header.TCPFlagAck)
			p, _ := ParsePacket(clientSegment(r.client, r.server, 0, 0, header.TCPFlagAck, nil), r.ether)
			if k := p.Key(7); r.s.flows.Lookup(&k) != nil {
				t.Fatal("a packet from the destination's side made the client's flow again")
			}
			if k := p.ReplyKey(7); r.s.flows.Lookup(&k) == nil {
				t.Fatal("a packet from the destination's side made no flow of its own")
			}
			if _, err := r.conn.Write([]byte("for the client only")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, maxDatagram)
			r.gwlb.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			for {
				tcp, err := readReplyTCP(r.gwlb, buf)
				if err != nil {
					break
				}
				if tcp != nil && len(tcp.Payload()) > 0 {
					h, _ := ParseHeader(buf)
					t.Fatalf("the client's data left under flow cookie %#x", h.FlowCookie)
				}
			}
			if got := r.s.Stats().Drops["reply_without_flow"]; got == 0 {
				t.Error("reply_without_flow 0, want the client's data counted")
			}
		})
	}
}

// TestClientSynAfterPacketFromDestinationSide: a packet from the
// destination's side, sent before the client's connection (D:dp -> V:vp),
// makes a flow of D's; the client's SYN on that port pair makes its own,
// and the stack answers it under the client's GENEVE header. Keyed the
// same both ways, the flow D's packet made held V's connection: its SYNs
// were dropped (not_from_client), and kept the flow alive; then V took
// the flow over, which a packet from D could do back to V's handshake.
func TestClientSynAfterPacketFromDestinationSide(t *testing.T) {
	for _, fam := range groFamilies {
		t.Run(fam.name, func(t *testing.T) {
			r := newGRORig(t, fam.client, fam.server)
			v := netip.AddrPortFrom(fam.client.Addr(), fam.client.Port()+1)
			squat := clientSegment(r.server, v, 12345, 777, header.TCPFlagAck, nil)
			r.s.handleDatagram(append(AppendHeader(nil, r.ether, 0, 7, 0xbad, 0xbad, nil), squat...), netip.MustParseAddrPort("127.0.0.2:47002"), nil)
			time.Sleep(50 * time.Millisecond) // the stack's RST to D
			syn := clientSegment(v, r.server, 5000, 0, header.TCPFlagSyn, nil)
			r.s.handleDatagram(append(AppendHeader(nil, r.ether, 0, 7, 8, 9, nil), syn...), r.from, nil)
			buf := make([]byte, maxDatagram)
			r.gwlb.SetReadDeadline(time.Now().Add(3 * time.Second))
			for {
				tcp, err := readReplyTCP(r.gwlb, buf)
				if err != nil {
					t.Fatalf("the client's SYN was not answered: %v (drops %v)", err, r.s.Stats().Drops)
				}
				if tcp == nil || tcp.Flags() != header.TCPFlagSyn|header.TCPFlagAck {
					continue
				}
				if h, _ := ParseHeader(buf); h.FlowCookie != 9 {
					t.Errorf("the SYN-ACK left under flow cookie %#x, want the client's 9", h.FlowCookie)
				}
				break
			}
			if k := (&Packet{Proto: protoTCP, IPv6: fam.client.Addr().Is6(), Src: r.server.Addr().As16(), Dst: v.Addr().As16(),
				SrcPort: r.server.Port(), DstPort: v.Port()}).Key(7); r.s.flows.Lookup(&k) == nil {
				t.Error("the flow D's packet made is gone")
			}
		})
	}
}

// TestDestinationSideKeepsNoFlowAlive: a packet from the destination's
// side of a live flow does not refresh the flow: a forger would otherwise
// hold a client's flows, and its share, after it is done.
func TestDestinationSideKeepsNoFlowAlive(t *testing.T) {
	r := newGRORig(t, groFamilies[0].client, groFamilies[0].server)
	f := r.flow(t)
	before := f.lastSeen.Load()
	time.Sleep(10 * time.Millisecond)
	destinationSide(r, 12345, 777, header.TCPFlagAck)
	if after := f.lastSeen.Load(); after != before {
		t.Errorf("a packet from the destination's side moved the flow's last packet time by %v", time.Duration(after-before))
	}
}
