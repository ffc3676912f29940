package netstack

import (
	"bytes"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// FuzzStackDrops: no inner packet ParsePacket takes panics the checks of
// what the stack is certain to drop (stackRefuses, sumsFail) nor the cut
// of a SYN's or a RST's data for the tap (synDataCut). A whole TCP
// segment is cut exactly when it has SYN or RST set and carries data; a
// cut copy is its headers alone, and is itself a packet the checks take,
// with checksums that hold when the original's did.
func FuzzStackDrops(f *testing.F) {
	client, dest := netip.AddrPortFrom(testClient, 40000), netip.AddrPortFrom(testDest, 443)
	v6c, v6d := netip.MustParseAddrPort("[2001:db8::5]:40000"), netip.MustParseAddrPort("[2001:db8::9]:443")
	for _, seed := range [][]byte{
		clientSegment(client, dest, 1000, 0, header.TCPFlagSyn, []byte("GET /fine/ HTTP/1.1\r\n")),
		clientSegment(client, dest, 1001, 1, header.TCPFlagAck|header.TCPFlagPsh, []byte("GET / HTTP/1.1\r\n\r\n")),
		clientSegment(client, dest, 1001, 1, header.TCPFlagPsh, []byte("no ack")),
		clientSegment(v6c, v6d, 1, 0, header.TCPFlagSyn, []byte("data on a SYN")),
		clientSegment(client, dest, 1001, 1, header.TCPFlagRst|header.TCPFlagAck, []byte("data on a RST")),
		udpPacket(3000, 10),
		udpRefusalPacket(v6c.Addr(), v6d.Addr(), []byte("x"), 0),
		udpRefusalPacket(client.Addr(), dest.Addr(), []byte("short"), 3),
		innerV4,
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ether := uint16(EtherTypeIPv4)
		if len(b) > 0 && b[0]>>4 == 6 {
			ether = EtherTypeIPv6
		}
		p, r := ParsePacket(b, ether)
		if r != DropNone || stackRefuses(&p, b[:p.Len]) != DropNone {
			return
		}
		pkt := b[:p.Len]
		badSums := sumsFail(&p, pkt)
		orig := append([]byte(nil), pkt...)
		q := p
		cut := synDataCut(&q, pkt)
		if !bytes.Equal(pkt, orig) {
			t.Fatal("synDataCut changed the packet the stack gets")
		}
		whole := p.Proto == protoTCP && !p.Fragment && !p.MoreFragments && !p.ICMPError
		data := whole && p.Payload+int(pkt[p.Payload+12]>>4)*4 < p.Len
		if want := data && p.TCPFlags&(flagSyn|flagRst) != 0; want != (len(cut) != len(pkt)) {
			t.Fatalf("flags %#x, data %v: cut %d bytes to %d", p.TCPFlags, data, len(pkt), len(cut))
		}
		if len(cut) == len(pkt) {
			return // not cut
		}
		if len(cut) >= len(pkt) || q.Len != len(cut) || !bytes.Equal(cut, pkt[:len(cut)]) && len(cut) < p.Payload {
			t.Fatalf("cut %d bytes of %d, p.Len %d: not the headers alone", len(cut), len(pkt), q.Len)
		}
		c, r := ParsePacket(cut, ether)
		if r != DropNone || stackRefuses(&c, cut[:c.Len]) != DropNone || c.Len != len(cut) {
			t.Fatalf("the cut copy reads as %v (len %d of %d)", r, c.Len, len(cut))
		}
		if !badSums && sumsFail(&c, cut) {
			t.Fatal("the cut copy's checksums do not hold, the original's did")
		}
	})
}
