package netstack

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// FuzzHandleDatagram feeds any inner packet, under a GWLB endpoint's
// GENEVE header, through the whole inbound path into real gVisor stacks:
// parsing, the flow table, fragments, ICMP errors, echo, the coalescer
// (when the first byte is odd) and the stacks' own handling and replies.
// In coalescer mode with bit 3 of the first byte set, a TCP packet is
// followed in the same batch by a copy acknowledging one byte more (its
// checksum kept as good or as bad as it was), as a client's next pure ACK
// comes: the thinning of held ACKs (gro.go) drops the first. Nothing may
// panic, and the flow table stays within its bound.
func FuzzHandleDatagram(f *testing.F) {
	const maxFlows = 64
	s := startServer(f, Config{MaxFlows: maxFlows, MaxFlowsPerClient: maxFlows})
	from := netip.MustParseAddrPort("127.0.0.2:40000")
	client, dest := netip.AddrPortFrom(testClient, 40000), netip.AddrPortFrom(testDest, 443)
	reply := udpDatagram(netip.AddrPortFrom(testDest, 53), netip.AddrPortFrom(testClient, 3000), 8)
	for _, seed := range [][]byte{
		udpPacket(3000, 10),
		echoPacket(1, "ping"),
		clientSegment(client, dest, 1000, 0, header.TCPFlagSyn, nil),
		clientSegment(client, dest, 1001, 1, header.TCPFlagAck, []byte("GET / HTTP/1.1\r\n\r\n")),
		clientSegment(netip.MustParseAddrPort("[2001:db8::5]:40000"), netip.MustParseAddrPort("[2001:db8::9]:443"), 1, 0, header.TCPFlagSyn, nil),
		icmpError(netip.MustParseAddr("198.18.200.1"), testDest, reply),
		pathMTUError(netip.MustParseAddr("198.18.200.1"), reply, 0), // below the floor
		icmpErrorQuoting(ipv4Sum(reply)),                            // the client's own port unreachable
		// At the floor, about the TCP connection above: a segment of the
		// stack's the sequence check takes or drops.
		pathMTUError(netip.MustParseAddr("198.18.200.1"), clientSegment(dest, client, 1, 1001, header.TCPFlagAck, nil), minPathMTUv4),
		fragment(udpPacket(3001, 3000), 7, 1500)[0],
		fragment(udpPacket(3001, 3000), 7, 1500)[1],
	} {
		f.Add(byte(0), seed)
		f.Add(byte(1), seed)
	}
	// Pure ACKs of the connections above, which the coalescer holds
	// (heldAck) and, followed by a later ACK, thins.
	client6, dest6 := netip.MustParseAddrPort("[2001:db8::5]:40000"), netip.MustParseAddrPort("[2001:db8::9]:443")
	timestamps := []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2}
	for _, seed := range [][]byte{
		clientSegment(client, dest, 1001, 1, header.TCPFlagAck, nil),
		clientSegmentOpts(client, dest, 1001, 1, header.TCPFlagAck, timestamps, nil),
		clientSegment(client6, dest6, 2, 1, header.TCPFlagAck, nil),
	} {
		f.Add(byte(1), seed)
		f.Add(byte(1|8), seed)
	}
	// IPv6: Packet Too Big (pathMTU's IPv6 branch) about the stack's
	// segment to the client, at and below the floor; and extension headers
	// the stack refuses or takes (ipv6Refuses, ipv6OptionsRefused).
	router6 := netip.MustParseAddr("2001:db8:200::1")
	toClient6 := clientSegment(dest6, client6, 1, 2, header.TCPFlagAck, nil)
	udp6 := udpRefusalPacket(client6.Addr(), dest6.Addr(), []byte("x"), 0)
	routing := []byte{0, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0} // segments left 1
	for _, seed := range [][]byte{
		pathMTUError(router6, toClient6, minPathMTUv6),
		pathMTUError(router6, toClient6, minPathMTUv6-1),
		icmpErrorAbout(router6, toClient6, 1, 4, 0),                                               // port unreachable: no MTU
		withExtHeader(udp6, ipv6HopByHop, []byte{0, 0, 1, 4, 0, 0, 0, 0}),                         // PadN: taken
		withExtHeader(udp6, ipv6HopByHop, []byte{0, 0, 0x7f, 4, 0, 0, 0, 0}),                      // unknown, action 01: discard
		withExtHeader(udp6, ipv6DestOptions, []byte{0, 0, 0xbf, 4, 0, 0, 0, 0}),                   // action 10
		withExtHeader(udp6, ipv6DestOptions, []byte{0, 0, 0x3f, 4, 0, 0, 0, 0}),                   // action 00: skipped
		withExtHeader(udp6, ipv6HopByHop, []byte{0, 0, 1, 8, 0, 0, 0, 0}),                         // PadN past the header
		withExtHeader(udp6, ipv6HopByHop, []byte{0, 0, 5, 2, 0, 0, 0, 0}),                         // Router Alert
		withExtHeader(udp6, ipv6HopByHop, []byte{0, 1, 5, 2, 0, 0, 5, 2, 0, 0, 1, 2, 0, 0, 0, 0}), // twice
		withExtHeader(udp6, ipv6HopByHop, []byte{0, 0, 5, 3, 0, 0, 0, 0}),                         // Router Alert of 3 bytes
		withExtHeader(udp6, ipv6Routing, routing),
		withExtHeader(withExtHeader(udp6, ipv6HopByHop, []byte{0, 0, 1, 4, 0, 0, 0, 0}), ipv6DestOptions, []byte{0, 0, 1, 4, 0, 0, 0, 0}), // hop-by-hop second
		withExtHeader(withExtHeader(udp6, ipv6HopByHop, []byte{0, 0, 1, 4, 0, 0, 0, 0}), ipv6Fragment, []byte{0, 0, 0, 1, 0, 0, 0, 9}),    // after a first fragment's header
		withExtHeader(udp6, ipv6Fragment, []byte{0, 0, 0, 0, 0, 0, 0, 9}),                                                                 // atomic fragment
	} {
		f.Add(byte(0), seed)
	}
	co := newCoalescer()
	f.Fuzz(func(t *testing.T, mode byte, inner []byte) {
		ether := uint16(EtherTypeIPv4)
		if len(inner) > 0 && inner[0]>>4 == 6 {
			ether = EtherTypeIPv6
		}
		d := append(AppendHeader(nil, ether, 0, uint64(mode>>1)%4, 0xa77ac4, 0xc00c1e, nil), inner...)
		if mode&1 == 1 {
			s.handleDatagram(d, from, co)
			if later := laterAck(inner, ether); mode&8 != 0 && later != nil {
				s.handleDatagram(append(AppendHeader(nil, ether, 0, uint64(mode>>1)%4, 0xa77ac4, 0xc00c1e, nil), later...), from, co)
			}
			co.flush()
		} else {
			s.handleDatagram(d, from, nil)
		}
		if n := s.flows.Len(); n > maxFlows {
			t.Fatalf("%d flows in a table of %d", n, maxFlows)
		}
	})
}

// laterAck returns a copy of inner, a TCP packet, acknowledging one byte
// more, its TCP checksum recomputed if it held (and left as it was if
// not); nil for any other packet.
func laterAck(inner []byte, ether uint16) []byte {
	p, r := ParsePacket(inner, ether)
	if r != DropNone || p.Proto != protoTCP || p.Fragment || p.Len-p.Payload < header.TCPMinimumSize {
		return nil
	}
	pkt := append([]byte(nil), inner[:p.Len]...)
	tcp := header.TCP(pkt[p.Payload:])
	src, dst, ok := ipAddrs(&p, pkt)
	sum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(tcp)))
	held := ok && checksum.Checksum(tcp, sum) == 0xffff
	tcp.SetAckNumber(tcp.AckNumber() + 1)
	if held {
		tcp.SetChecksum(0)
		tcp.SetChecksum(^checksum.Checksum(tcp, sum))
	}
	return pkt
}

// withExtHeader puts the IPv6 extension header ext (its first byte, the
// next header, is filled in) of type nh between pkt's fixed header and
// what followed it.
func withExtHeader(pkt []byte, nh uint8, ext []byte) []byte {
	out := make([]byte, 0, len(pkt)+len(ext))
	out = append(out, pkt[:40]...)
	out = append(out, ext...)
	out[40] = pkt[6]
	out = append(out, pkt[40:]...)
	out[6] = nh
	binary.BigEndian.PutUint16(out[4:], uint16(len(out)-40))
	return out
}
