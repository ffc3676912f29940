package netstack_test

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// Decoys: in-window segments the stack throws away, carrying other bytes
// than the real segment that follows at the same sequence number. An IDS
// told to keep the first data (docs/ids.md) rebuilds the decoy's bytes if
// the tap shows it one; the stack delivers the real ones.

var evilRequest = []byte("GET /evil/payload.sh HTTP/1.1\r\nHost: x\r\n\r\n")

// sendEach sends the inner packets one after another, letting each reach
// the stack before the next.
func (r *tapRig) sendEach(t *testing.T, pkts ...[]byte) {
	t.Helper()
	for _, p := range pkts {
		if err := r.client.Send(p); err != nil {
			t.Fatal(err)
		}
		time.Sleep(30 * time.Millisecond)
	}
}

// wantNoneInFeed fails if the tap was shown, from the client, a packet
// holding any of the markers.
func wantNoneInFeed(t *testing.T, tap *seenTap, markers ...string) {
	t.Helper()
	for _, p := range tap.inbound() {
		for _, m := range markers {
			if bytes.Contains(p.pkt, []byte(m)) {
				t.Errorf("the tap was shown %s, which the stack threw away", m)
			}
		}
	}
}

// wantDelivered fails unless the stack delivers want, whole, to sc.
func wantDelivered(t *testing.T, sc *netstack.Conn, n *notifier, want []byte) {
	t.Helper()
	if got, err := readAll(t, sc, n, len(want)); !bytes.Equal(got, want) {
		t.Fatalf("the stack delivered %q (%v), want %q", got, err, want)
	}
}

// wantInFeed fails unless the tap was shown, from the client, a packet
// holding marker; what names it in the failure.
func wantInFeed(t *testing.T, tap *seenTap, marker []byte, what string) {
	t.Helper()
	for _, p := range tap.inbound() {
		if bytes.Contains(p.pkt, marker) {
			return
		}
	}
	t.Errorf("the tap was not shown %s", what)
}

// wantShownCut fails unless the first segment from the client the tap was
// shown with the TCP flag flag (IPv4, no options) is cut to its 40 bytes
// of headers, with lengths and checksums that hold; what names the flag.
func wantShownCut(t *testing.T, tap *seenTap, flag byte, what string) {
	t.Helper()
	for _, p := range tap.inbound() {
		if p.pkt[33]&flag == 0 {
			continue
		}
		ip, tcp := p.pkt, p.pkt[20:]
		if len(ip) != 40 || binary.BigEndian.Uint16(ip[2:]) != 40 || p.p.Len != 40 {
			t.Errorf("the %s shown is %d bytes, IP length %d, Len %d; want 40", what, len(ip), binary.BigEndian.Uint16(ip[2:]), p.p.Len)
		}
		if checksum.Checksum(ip[:20], 0) != 0xffff || binary.BigEndian.Uint16(tcp[16:]) != tcpSum(connClient, connDest.Addr(), tcp) {
			t.Errorf("the %s shown has a checksum that does not hold", what)
		}
		return
	}
	t.Errorf("the tap was not shown the %s", what)
}

// wantInnerRefused fails unless the server counted want inner_refused
// drops: packets kept from the stack and the tap for what the stack
// would refuse in them.
func wantInnerRefused(t *testing.T, r *tapRig, want uint64) {
	t.Helper()
	if got := r.srv.Stats().Drops["inner_refused"]; got != want {
		t.Errorf("inner_refused %d, want %d", got, want)
	}
}

// acceptedReading is the connection the stack accepted, with a notifier
// of its reads, for readAll.
func (r *tapRig) acceptedReading() (*netstack.Conn, *notifier) {
	sc := r.accepted()
	n := newNotifier()
	sc.OnReadable(n.fn)
	return sc, n
}

// ipv4WithOptions is ipv4Packet (a whole datagram) with the IPv4 options
// opts (a multiple of 4 bytes long) in its header.
func ipv4WithOptions(src, dst netip.Addr, id uint16, seg, opts []byte) []byte {
	return ipv4FragWithOptions(src, dst, id, seg, 0, len(seg), false, opts)
}

// TestTapOmitsIPv4DecoysStackDrops: segments gVisor drops for their IPv4
// header, their TCP header or their checksums never reach the tap (nor the
// stack), and are counted; the real request behind them, with a Router
// Alert option gVisor takes, is delivered and shown.
func TestTapOmitsIPv4DecoysStackDrops(t *testing.T) {
	tap, r := newSeenTapRig(t)
	sc, n, srvSeq, cliSeq, client := r.establishedSeqs()
	src, dst := connClient, connDest.Addr()
	seg := func(flags byte, m string) []byte {
		return tcpSegment(client, connDest, cliSeq, srvSeq, flags, []byte(m))
	}
	pkt := func(id uint16, s []byte) []byte { return ipv4Packet(src, dst, id, s, 0, len(s), false) }

	badIPSum := pkt(201, seg(0x18, "GET /d-ipsum/"))
	badIPSum[10] ^= 0x11
	badOption := ipv4WithOptions(src, dst, 202, seg(0x18, "GET /d-opt/"), []byte{68, 0, 0, 0}) // timestamp, length 0
	twoAlerts := ipv4WithOptions(src, dst, 203, seg(0x18, "GET /d-alerts/"), []byte{148, 4, 0, 0, 148, 4, 0, 0})
	longOff := seg(0x18, "GET /d-longoff/")
	longOff[12] = 15 << 4 // 60 bytes of header in a 35-byte segment
	binary.BigEndian.PutUint16(longOff[16:], tcpSum(src, dst, longOff))
	shortOff := seg(0x18, "GET /d-shortoff/")
	shortOff[12] = 4 << 4
	binary.BigEndian.PutUint16(shortOff[16:], tcpSum(src, dst, shortOff))
	badTCPSum := seg(0x18, "GET /d-tcpsum/")
	badTCPSum[16] ^= 0x55
	r.sendEach(t, badIPSum, badOption, twoAlerts, pkt(204, longOff), pkt(205, shortOff), pkt(206, badTCPSum),
		pkt(207, seg(0x08, "GET /d-noack/")),    // PSH without ACK
		pkt(208, seg(0x09, "GET /d-finnoack/")), // FIN|PSH without ACK
		pkt(210, seg(0x1a, "GET /d-synack/")),   // SYN|PSH|ACK: a challenge ACK, its data thrown away
		ipv4WithOptions(src, dst, 209, seg(0x18, string(evilRequest)), []byte{148, 4, 0, 0}))
	wantDelivered(t, sc, n, evilRequest)
	wantNoneInFeed(t, tap, "/d-ipsum/", "/d-opt/", "/d-alerts/", "/d-longoff/", "/d-shortoff/", "/d-tcpsum/", "/d-noack/",
		"/d-finnoack/", "/d-synack/")
	wantInFeed(t, tap, []byte("/evil/"), "the request the stack delivered")
	drops := r.srv.Stats().Drops
	if drops["inner_refused"] != 6 || drops["inner_bad_checksum"] != 2 {
		t.Errorf("drops inner_refused %d, inner_bad_checksum %d; want 6 and 2", drops["inner_refused"], drops["inner_bad_checksum"])
	}
}

// ipv6With wraps tcp in an IPv6 header from src to dst whose first next
// header is first, with the extension headers ext (the last one's next
// header TCP) before it.
func ipv6With(src, dst netip.Addr, first byte, ext, tcp []byte) []byte {
	pkt := make([]byte, 40+len(ext)+len(tcp))
	pkt[0] = 0x60
	binary.BigEndian.PutUint16(pkt[4:], uint16(len(ext)+len(tcp)))
	pkt[6], pkt[7] = first, 64
	copy(pkt[8:], src.AsSlice())
	copy(pkt[24:], dst.AsSlice())
	copy(pkt[40:], ext)
	copy(pkt[40+len(ext):], tcp)
	return pkt
}

// Addresses of the IPv6 decoy tests.
var (
	client6 = netip.MustParseAddr("2001:db8::5")
	dest6   = netip.AddrPortFrom(netip.MustParseAddr("2001:db8:9::9"), 80)
)

// ipv6DecoyRig is a tap rig with an established IPv6 connection from
// client6 to dest6, and seg, which makes its client's next segment.
func ipv6DecoyRig(t *testing.T) (*seenTap, *tapRig, *netstack.Conn, *notifier, func(string) []byte) {
	t.Helper()
	tap := &seenTap{}
	r := newTapRigAt(t, tap, client6, dest6)
	sc, n, rep := r.established()
	srvSeq, cliSeq, client := replySeqs(rep)
	seg := func(m string) []byte { return tcpSegment(client, dest6, cliSeq, srvSeq, 0x18, []byte(m)) }
	return tap, r, sc, n, seg
}

// TestTapOmitsIPv6DecoysStackDrops: segments whose IPv6 extension headers
// make gVisor drop them (RFC 8200's action bits, which IDSs ignore, and a
// routing header with segments left) never reach the tap; the real
// request behind them, with a hop-by-hop header of padding, is delivered.
func TestTapOmitsIPv6DecoysStackDrops(t *testing.T) {
	tap, r, sc, n, seg := ipv6DecoyRig(t)
	routing := make([]byte, 24) // type 0, one segment left
	routing[0], routing[1], routing[3] = 6, 2, 1
	const hbh, routingHdr, destOpts = 0, 43, 60
	r.sendEach(t,
		ipv6With(client6, dest6.Addr(), hbh, []byte{6, 0, 0x7f, 4, 0, 0, 0, 0}, seg("GET /d-hbh/")),      // action 01: discard
		ipv6With(client6, dest6.Addr(), destOpts, []byte{6, 0, 0xbf, 4, 0, 0, 0, 0}, seg("GET /d-dst/")), // action 10: discard, ICMP
		ipv6With(client6, dest6.Addr(), destOpts, []byte{6, 0, 0xff, 4, 0, 0, 0, 0}, seg("GET /d-dst3/")),
		ipv6With(client6, dest6.Addr(), hbh, []byte{6, 0, 1, 8, 0, 0, 0, 0}, seg("GET /d-padpast/")), // PadN past the header
		ipv6With(client6, dest6.Addr(), destOpts, []byte{0, 0, 1, 4, 0, 0, 0, 0, 6, 0, 1, 4, 0, 0, 0, 0}, seg("GET /d-hbh2nd/")),
		ipv6With(client6, dest6.Addr(), routingHdr, routing, seg("GET /d-rt/")),
		ipv6With(client6, dest6.Addr(), hbh, []byte{6, 0, 1, 4, 0, 0, 0, 0}, seg(string(evilRequest))))
	wantDelivered(t, sc, n, evilRequest)
	wantNoneInFeed(t, tap, "/d-hbh/", "/d-dst/", "/d-dst3/", "/d-padpast/", "/d-hbh2nd/", "/d-rt/")
	wantInnerRefused(t, r, 6)
}

// TestTapShowsSynWithoutItsData: gVisor acknowledges a SYN's sequence
// number alone and throws its data away (no TCP Fast Open); the client
// then sends other bytes at ISN+1. The tap is shown the SYN cut to its
// headers, with lengths and checksums that hold, and the stack still
// answers it and delivers the later bytes.
func TestTapShowsSynWithoutItsData(t *testing.T) {
	tap, r := newSeenTapRig(t)
	cli := netip.AddrPortFrom(connClient, 41000)
	sa := r.synAckOf(t, cli, 1000, nil, []byte("GET /d-syn/ HTTP/1.1\r\n\r\n"))
	isn := binary.BigEndian.Uint32(sa[24:])
	if ack := binary.BigEndian.Uint32(sa[28:]); ack != 1001 {
		t.Fatalf("the SYN-ACK acknowledges %d, want 1001 (the SYN alone)", ack)
	}
	ack := tcpSegment(cli, connDest, 1001, isn+1, 0x10, nil)
	data := tcpSegment(cli, connDest, 1001, isn+1, 0x18, evilRequest)
	r.sendEach(t, ipv4Packet(connClient, connDest.Addr(), 2, ack, 0, len(ack), false),
		ipv4Packet(connClient, connDest.Addr(), 3, data, 0, len(data), false))
	sc, n := r.acceptedReading()
	wantDelivered(t, sc, n, evilRequest)
	wantNoneInFeed(t, tap, "/d-syn/")
	wantShownCut(t, tap, 0x02, "SYN")
}

// A SYN or a RST cut into IP fragments, its data in the later ones: the
// stack drops the data, and the tap, which cuts the data of whole
// segments only, would show it. No stack sends such a segment, so its
// first fragment is refused (and counted), and the later ones follow it
// out, never shown.
func TestTapOmitsFragmentedSynAndRstData(t *testing.T) {
	tap := &seenTap{}
	r := newTapRig(t, tap)
	cli := netip.AddrPortFrom(connClient, 42004)
	syn := tcpSegment(cli, connDest, 6000, 0, 0x02, []byte("XXXXXXXXXXXXGET /d-syn/ HTTP/1.1\r\nHost: x\r\n\r\n"))
	r.sendEach(t, ipv4Packet(connClient, connDest.Addr(), 21, syn, 0, 24, true),
		ipv4Packet(connClient, connDest.Addr(), 21, syn, 24, len(syn), false))
	cli = netip.AddrPortFrom(connClient, 42005)
	sa := r.synAckOf(t, cli, 6000, []byte{2, 4, 0x05, 0xb4}, nil)
	isn := binary.BigEndian.Uint32(sa[24:])
	rst := tcpSegment(cli, connDest, 6001, isn+1, 0x14, []byte("XXXXXXXXXXXXGET /d-rst/ HTTP/1.1\r\nHost: x\r\n\r\n"))
	r.sendEach(t, ipv4Packet(connClient, connDest.Addr(), 22, rst, 0, 24, true),
		ipv4Packet(connClient, connDest.Addr(), 22, rst, 24, len(rst), false))
	time.Sleep(200 * time.Millisecond) // nothing more is to come: a show would be in by now
	wantNoneInFeed(t, tap, "/d-syn/", "/d-rst/")
	wantInnerRefused(t, r, 2)
}
