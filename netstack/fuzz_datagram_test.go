package netstack

import (
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// FuzzHandleDatagram feeds any inner packet, under a GWLB endpoint's
// GENEVE header, through the whole inbound path into real gVisor stacks:
// parsing, the flow table, fragments, ICMP errors, echo, the coalescer
// (when the first byte is odd) and the stacks' own handling and replies.
// Nothing may panic, and the flow table stays within its bound.
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
	co := newCoalescer()
	f.Fuzz(func(t *testing.T, mode byte, inner []byte) {
		ether := uint16(EtherTypeIPv4)
		if len(inner) > 0 && inner[0]>>4 == 6 {
			ether = EtherTypeIPv6
		}
		d := append(AppendHeader(nil, ether, 0, uint64(mode>>1)%4, 0xa77ac4, 0xc00c1e, nil), inner...)
		if mode&1 == 1 {
			s.handleDatagram(d, from, co)
			co.flush()
		} else {
			s.handleDatagram(d, from, nil)
		}
		if n := s.flows.Len(); n > maxFlows {
			t.Fatalf("%d flows in a table of %d", n, maxFlows)
		}
	})
}
