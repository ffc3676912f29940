package netstack_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"net/netip"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/netstack/gwlbsim"
)

// seenTap records what the server shows its Tap, as package capture would
// queue it for an IDS.
type seenTap struct {
	mu   sync.Mutex
	pkts []seenPacket
}

type seenPacket struct {
	out bool
	p   netstack.Packet
	pkt []byte
}

func (s *seenTap) Packet(_ uint64, _ uint32, out bool, _ int64, p netstack.Packet, pkt []byte) {
	s.mu.Lock()
	s.pkts = append(s.pkts, seenPacket{out, p, append([]byte(nil), pkt...)})
	s.mu.Unlock()
}

func (s *seenTap) inbound() []seenPacket {
	s.mu.Lock()
	defer s.mu.Unlock()
	var in []seenPacket
	for _, p := range s.pkts {
		if !p.out {
			in = append(in, p)
		}
	}
	return in
}

// tapRig is connRig with a Tap on the server; lastReply is the
// appliance's last TCP segment to the client.
type tapRig struct {
	connRig
	dest      netip.AddrPort // where established dials
	srv       *netstack.Server
	mu        sync.Mutex
	lastReply []byte
}

func newTapRig(t *testing.T, tap netstack.Tap) *tapRig {
	t.Helper()
	return newTapRigAt(t, tap, connClient, connDest)
}

// newTapRigAt is newTapRig with the client at client, dialling dest (of
// either IP version).
func newTapRigAt(t *testing.T, tap netstack.Tap, client netip.Addr, dest netip.AddrPort) *tapRig {
	t.Helper()
	r := &tapRig{connRig: connRig{t: t, h: &netstack.AcceptHandler{Conns: make(chan *netstack.Conn, 1)}}, dest: dest}
	var sim *gwlbsim.Sim
	for attempt := 0; sim == nil; attempt++ {
		port := freeUDPPort(t)
		s, err := netstack.Listen(netstack.Config{ListenAddr: "127.0.0.1:0", Readers: 1, ReplyPort: port,
			ReturnPath: netstack.ReturnPathBound, Handler: r.h, Tap: tap})
		if err != nil {
			t.Fatal(err)
		}
		sim, err = gwlbsim.New(gwlbsim.Config{Addr: netip.MustParseAddr("127.0.0.1"), ListenPort: port, Appliance: s.Addr(), Senders: 1})
		if err != nil {
			s.Close()
			if attempt == 4 {
				t.Fatalf("starting the simulator: %v", err)
			}
			continue
		}
		r.srv = s
	}
	served := make(chan struct{})
	go func() { r.srv.Serve(); close(served) }()
	t.Cleanup(func() { sim.Close(); r.srv.Close(); <-served })
	var err error
	if r.client, err = sim.Endpoint(0x0123456789abcdef, 0x1111222233334444).NewClientStack(client); err != nil {
		t.Fatal(err)
	}
	r.client.SetTap(func(inner []byte) bool {
		if (inner[0]>>4 == 4 && inner[9] == 6) || (inner[0]>>4 == 6 && inner[6] == 6) {
			r.mu.Lock()
			r.lastReply = append(r.lastReply[:0], inner...)
			r.mu.Unlock()
		}
		return false
	})
	return r
}

// established dials, has "hello " delivered and acknowledged, and returns
// the server's end and the appliance's last segment to the client (whose
// ack is the client's next sequence number).
func (r *tapRig) established() (*netstack.Conn, *notifier, []byte) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	cc, err := r.client.DialTCP(ctx, r.dest)
	if err != nil {
		r.t.Fatalf("dialing through the simulator: %v", err)
	}
	r.t.Cleanup(func() { cc.Close() })
	// The tap saw the SYN-ACK before the dial returned: its ack is the
	// client's sequence number before "hello ".
	r.mu.Lock()
	synAck := append([]byte(nil), r.lastReply...)
	r.mu.Unlock()
	if len(synAck) == 0 {
		r.t.Fatal("the tap saw no SYN-ACK")
	}
	_, synAcked, _ := replySeqs(synAck)
	sc := r.accepted()
	if _, err := cc.Write([]byte("hello ")); err != nil {
		r.t.Fatal(err)
	}
	n := newNotifier()
	sc.OnReadable(n.fn)
	if got, err := readAll(r.t, sc, n, 6); err != nil {
		r.t.Fatalf("reading hello: %q %v", got, err)
	}
	// Wait for the appliance's ACK of "hello ": until then the last segment
	// is the SYN-ACK, whose ack is six bytes short.
	for deadline := time.Now().Add(waitFor); ; time.Sleep(5 * time.Millisecond) {
		r.mu.Lock()
		rep := append([]byte(nil), r.lastReply...)
		r.mu.Unlock()
		_, ack, _ := replySeqs(rep)
		if ack == synAcked+6 {
			return sc, n, rep
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("the appliance did not acknowledge \"hello \" (ack %d, want %d)", ack, synAcked+6)
		}
	}
}

// newSeenTapRig is newTapRig with a seenTap, which it returns too.
func newSeenTapRig(t *testing.T) (*seenTap, *tapRig) {
	t.Helper()
	tap := &seenTap{}
	return tap, newTapRig(t, tap)
}

// establishedSeqs is established with the appliance's last segment read
// (replySeqs): its sequence number, the client's next and the client's
// end.
func (r *tapRig) establishedSeqs() (sc *netstack.Conn, n *notifier, srvSeq, cliSeq uint32, client netip.AddrPort) {
	r.t.Helper()
	sc, n, rep := r.established()
	srvSeq, cliSeq, client = replySeqs(rep)
	return sc, n, srvSeq, cliSeq, client
}

// replySeqs reads the appliance's segment to the client, rep (IPv4, or
// IPv6 without extension headers): its sequence number, the client's next
// (its ack) and the client's end.
func replySeqs(rep []byte) (srvSeq, cliSeq uint32, client netip.AddrPort) {
	ihl, addr := int(rep[0]&0xf)*4, netip.AddrFrom4([4]byte(rep[16:20]))
	if rep[0]>>4 == 6 {
		ihl, addr = 40, netip.AddrFrom16([16]byte(rep[24:40]))
	}
	return binary.BigEndian.Uint32(rep[ihl+4:]), binary.BigEndian.Uint32(rep[ihl+8:]),
		netip.AddrPortFrom(addr, binary.BigEndian.Uint16(rep[ihl+2:]))
}

// wantRequestDelivered sends a request from the client, in its connection's
// window (IP ID id), and fails unless the stack delivers it whole to sc:
// what came before (named by after) did not break the connection.
func (r *tapRig) wantRequestDelivered(t *testing.T, sc *netstack.Conn, n *notifier, id uint16, client netip.AddrPort, cliSeq, srvSeq uint32, after string) {
	t.Helper()
	req := []byte("GET /evil HTTP/1.1\r\nHost: x\r\n\r\n")
	if err := r.client.Send(ipv4Packet(connClient, connDest.Addr(), id,
		tcpSegment(client, connDest, cliSeq, srvSeq, 0x18, req), 0, 20+len(req), false)); err != nil {
		t.Fatal(err)
	}
	if got, err := readAll(t, sc, n, len(req)); string(got) != string(req) {
		t.Fatalf("the stack delivered %q (%v) %s, want %q", got, err, after, req)
	}
}

// tcpSegment builds a TCP segment from src to dst (IPv4 or IPv6) with a
// valid checksum.
func tcpSegment(src, dst netip.AddrPort, seq, ack uint32, flags byte, payload []byte) []byte {
	tcp := make([]byte, 20+len(payload))
	binary.BigEndian.PutUint16(tcp[0:], src.Port())
	binary.BigEndian.PutUint16(tcp[2:], dst.Port())
	binary.BigEndian.PutUint32(tcp[4:], seq)
	binary.BigEndian.PutUint32(tcp[8:], ack)
	tcp[12] = 5 << 4
	tcp[13] = flags
	binary.BigEndian.PutUint16(tcp[14:], 65535)
	copy(tcp[20:], payload)
	binary.BigEndian.PutUint16(tcp[16:], tcpSum(src.Addr(), dst.Addr(), tcp))
	return tcp
}

// tcpSum returns the checksum the segment tcp from src to dst should have
// (its own checksum field read as zero).
func tcpSum(src, dst netip.Addr, tcp []byte) uint16 {
	sum := checksum.Checksum(src.AsSlice(), 0)
	sum = checksum.Checksum(dst.AsSlice(), sum)
	sum = checksum.Combine(sum, 6)
	sum = checksum.Combine(sum, uint16(len(tcp)))
	sum = checksum.Checksum(tcp[:16], sum)
	return ^checksum.Checksum(tcp[18:], sum)
}

// ipv4Packet wraps data[off:end] of a transport segment in an IPv4 header
// from src to dst: a fragment at off (more: MF set) of datagram id.
func ipv4Packet(src, dst netip.Addr, id uint16, data []byte, off, end int, more bool) []byte {
	return ipv4FragWithOptions(src, dst, id, data, off, end, more, nil)
}

// ipv4FragWithOptions is ipv4Packet (a fragment of data at off) with the
// IPv4 options opts (a multiple of 4 bytes long) in its header.
func ipv4FragWithOptions(src, dst netip.Addr, id uint16, data []byte, off, end int, more bool, opts []byte) []byte {
	ihl := 20 + len(opts)
	ip := make([]byte, ihl+end-off)
	ip[0] = 0x40 | byte(ihl/4)
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
	binary.BigEndian.PutUint16(ip[4:], id)
	fo := uint16(off / 8)
	if more {
		fo |= 0x2000
	}
	binary.BigEndian.PutUint16(ip[6:], fo)
	ip[8], ip[9] = 64, 6
	s, d := src.As4(), dst.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	copy(ip[20:], opts)
	binary.BigEndian.PutUint16(ip[10:], ^checksum.Checksum(ip[:ihl], 0))
	copy(ip[ihl:], data[off:end])
	return ip
}

// TestTapOmitsFragmentDroppedBeforeStack: a later IP fragment sent before
// its first has no flow and is dropped before the stack; the first and a
// different later fragment at the same offset then make the datagram the
// stack takes. An IDS fed the dropped fragment (Suricata's default "bsd"
// defrag policy and tshark keep the first of two at one offset) would
// rebuild the request the destination never got: the Tap must not see it.
func TestTapOmitsFragmentDroppedBeforeStack(t *testing.T) {
	tap, r := newSeenTapRig(t)
	sc, n, srvSeq, cliSeq, client := r.establishedSeqs()
	evil := []byte("GET /evil/payload.sh HTTP/1.1\r\nHost: x\r\n\r\n")
	benign := []byte("GET /fine/readme.txt HTTP/1.1\r\nHost: x\r\n\r\n")
	evilSeg := tcpSegment(client, connDest, cliSeq, srvSeq, 0x18, evil)
	benignSeg := tcpSegment(client, connDest, cliSeq, srvSeq, 0x18, benign)
	const cut = 24 // the first fragment: the TCP header and "GET "
	for _, p := range [][]byte{
		ipv4Packet(connClient, connDest.Addr(), 0x4242, benignSeg, cut, len(benignSeg), false),
		ipv4Packet(connClient, connDest.Addr(), 0x4242, evilSeg, 0, cut, true),
		ipv4Packet(connClient, connDest.Addr(), 0x4242, evilSeg, cut, len(evilSeg), false),
	} {
		if err := r.client.Send(p); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	got, err := readAll(t, sc, n, len(evil))
	if string(got) != string(evil) {
		t.Fatalf("the stack delivered %q (%v), want %q", got, err, evil)
	}
	if d := r.srv.Stats().Drops["fragment_without_flow"]; d != 1 {
		t.Fatalf("fragment_without_flow = %d, want 1", d)
	}
	var frags int
	for _, p := range tap.inbound() {
		if bytes.Contains(p.pkt, []byte("/fine/")) {
			t.Errorf("the Tap saw the fragment the appliance dropped: %q", p.pkt[20:])
		}
		if p.p.Fragment || p.p.MoreFragments {
			frags++
		}
	}
	if frags != 2 {
		t.Errorf("the Tap saw %d fragments, want the 2 the stack took", frags)
	}
}

// TestTapOmitsPacketNotFromClient: a RST from the destination's side of a
// client's flow, in window, is dropped (stray_from_destination: the flow
// key has a direction, and such a segment would otherwise make a flow of
// its own for the stack to answer) and the connection goes on. An IDS fed it would tear its flow down and miss what follows
// (the TCB-teardown evasion): the Tap must not see it.
func TestTapOmitsPacketNotFromClient(t *testing.T) {
	tap, r := newSeenTapRig(t)
	sc, n, srvSeq, cliSeq, client := r.establishedSeqs()
	rst := tcpSegment(connDest, client, srvSeq, cliSeq, 0x14, nil) // RST|ACK
	if err := r.client.Send(ipv4Packet(connDest.Addr(), connClient, 1, rst, 0, len(rst), false)); err != nil {
		t.Fatal(err)
	}
	r.wantRequestDelivered(t, sc, n, 2, client, cliSeq, srvSeq, "after the forged RST")
	if d := r.srv.Stats().Drops["stray_from_destination"]; d != 1 {
		t.Fatalf("stray_from_destination = %d, want 1", d)
	}
	for _, p := range tap.inbound() {
		if p.p.TCPFlags&0x04 != 0 {
			t.Errorf("the Tap saw, as received, the RST the appliance dropped: %x", p.pkt)
		}
	}
}

// TestTapOmitsPacketNotFromClientAfterSyn is TestTapOmitsPacketNotFromClient
// with a SYN from the destination's side (D:dp -> V:vp) sent first, while
// V's connection is live. The SYN skipped the stray check and made a flow
// of D's own, so the in-window RST after it had a flow: the Tap (the IDS
// feed) saw it as part of V's connection, the TCB-teardown evasion the
// stray check stops, and the stack answered D's SYN with a SYN-ACK from
// V:vp. Both are dropped now (stray_from_destination), and the connection
// goes on.
func TestTapOmitsPacketNotFromClientAfterSyn(t *testing.T) {
	tap, r := newSeenTapRig(t)
	sc, n, srvSeq, cliSeq, client := r.establishedSeqs()
	syn := tcpSegment(connDest, client, srvSeq-1, 0, 0x02, nil)    // SYN
	rst := tcpSegment(connDest, client, srvSeq, cliSeq, 0x14, nil) // RST|ACK in V's window
	for i, seg := range [][]byte{syn, rst} {
		if err := r.client.Send(ipv4Packet(connDest.Addr(), connClient, uint16(1+i), seg, 0, len(seg), false)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.wantRequestDelivered(t, sc, n, 3, client, cliSeq, srvSeq, "after the forged SYN and RST")
	if d := r.srv.Stats().Drops["stray_from_destination"]; d != 2 {
		t.Errorf("stray_from_destination = %d, want 2 (the SYN and the RST)", d)
	}
	tap.mu.Lock()
	defer tap.mu.Unlock()
	for _, p := range tap.pkts {
		switch {
		case !p.out && p.p.Src == connDest.Addr().As16():
			t.Errorf("the Tap saw, as received, a segment from the destination's side of V's connection (flags %#x): %x", p.p.TCPFlags, p.pkt)
		case p.out && p.p.Dst == connDest.Addr().As16():
			t.Errorf("the stack answered the destination's side (flags %#x): %x", p.p.TCPFlags, p.pkt)
		}
	}
}
