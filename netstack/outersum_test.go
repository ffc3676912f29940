package netstack

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// innerPacket is an IPv4 or IPv6 packet from src to dst carrying proto
// (TCP or UDP) with n bytes of payload, its checksums filled in.
func innerPacket(src, dst netip.AddrPort, proto uint8, n int) []byte {
	var seg []byte
	switch proto {
	case protoTCP:
		seg = make([]byte, header.TCPMinimumSize+n)
		header.TCP(seg).Encode(&header.TCPFields{SrcPort: src.Port(), DstPort: dst.Port(), SeqNum: 7, AckNum: 9,
			DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagAck | header.TCPFlagPsh, WindowSize: 512})
	default:
		seg = make([]byte, header.UDPMinimumSize+n)
		header.UDP(seg).Encode(&header.UDPFields{SrcPort: src.Port(), DstPort: dst.Port(), Length: uint16(len(seg))})
	}
	for i := range n {
		seg[len(seg)-n+i] = byte(i*13 + 5)
	}
	srcA, dstA := tcpip.AddrFromSlice(src.Addr().AsSlice()), tcpip.AddrFromSlice(dst.Addr().AsSlice())
	sum := ^checksum.Checksum(seg, header.PseudoHeaderChecksum(tcpip.TransportProtocolNumber(proto), srcA, dstA, uint16(len(seg))))
	if sum == 0 && proto == protoUDP {
		sum = 0xffff
	}
	if proto == protoTCP {
		header.TCP(seg).SetChecksum(sum)
	} else {
		header.UDP(seg).SetChecksum(sum)
	}
	if src.Addr().Is6() {
		ip := make([]byte, header.IPv6MinimumSize)
		header.IPv6(ip).Encode(&header.IPv6Fields{PayloadLength: uint16(len(seg)), TransportProtocol: tcpip.TransportProtocolNumber(proto),
			HopLimit: 64, SrcAddr: srcA, DstAddr: dstA})
		return append(ip, seg...)
	}
	ip := make([]byte, header.IPv4MinimumSize)
	header.IPv4(ip).Encode(&header.IPv4Fields{TotalLength: uint16(len(ip) + len(seg)), ID: 3, Flags: header.IPv4FlagDontFragment, TTL: 64,
		Protocol: proto, SrcAddr: srcA, DstAddr: dstA})
	header.IPv4(ip).SetChecksum(^header.IPv4(ip).CalculateChecksum())
	return append(ip, seg...)
}

// icmpErrorQuoting is an IPv4 ICMP port unreachable quoting the IP header
// and the first 8 transport bytes of pkt, checksums filled in.
func icmpErrorQuoting(pkt []byte) []byte {
	quoted := pkt[:header.IPv4MinimumSize+8]
	out := make([]byte, header.IPv4MinimumSize+8+len(quoted))
	ip := header.IPv4(out)
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(out)), TTL: 64, Protocol: protoICMP,
		SrcAddr: header.IPv4(pkt).DestinationAddress(), DstAddr: header.IPv4(pkt).SourceAddress()})
	ip.SetChecksum(^ip.CalculateChecksum())
	icmp := out[header.IPv4MinimumSize:]
	icmp[0], icmp[1] = 3, 3
	copy(icmp[8:], quoted)
	binary.BigEndian.PutUint16(icmp[2:], ^checksum.Checksum(icmp, 0))
	return out
}

// udpWithTrailer is the IPv4 UDP packet pkt with two bytes after its UDP
// length that the IP length counts.
func udpWithTrailer(pkt []byte) []byte {
	pkt = append(pkt, 0xab, 0xcd)
	ip := header.IPv4(pkt)
	ip.SetTotalLength(uint16(len(pkt)))
	ip.SetChecksum(0)
	ip.SetChecksum(^ip.CalculateChecksum())
	return pkt
}

// outerDatagram is a UDP datagram (checksum field zero) carrying a GENEVE
// header with optWords words of options, then inner.
func outerDatagram(optWords int, inner []byte) []byte {
	d := make([]byte, 8+genevePrefix+4*optWords, 8+genevePrefix+4*optWords+len(inner))
	binary.BigEndian.PutUint16(d[0:], 40001)
	binary.BigEndian.PutUint16(d[2:], 6081)
	d[8] = byte(optWords)
	binary.BigEndian.PutUint16(d[10:], EtherTypeIPv4)
	for i := 8 + genevePrefix; i < len(d); i++ {
		d[i] = byte(i * 31)
	}
	d = append(d, inner...)
	binary.BigEndian.PutUint16(d[4:], uint16(len(d)))
	return d
}

// outerChecksum is the UDP checksum field for d from its payload's sum.
func outerChecksum(src, dst [4]byte, d []byte, sum uint16) uint16 {
	c := ^checksum.Combine(pseudoSum(src, dst, len(d)), sum)
	if c == 0 {
		c = 0xffff
	}
	return c
}

// TestDatagramSum: for an inner TCP or UDP packet whose checksum holds, the
// outer sum comes from the headers alone and gives the checksum summing
// every byte gives; anything else is summed whole.
func TestDatagramSum(t *testing.T) {
	v4 := [2]netip.AddrPort{netip.MustParseAddrPort("198.18.9.9:443"), netip.MustParseAddrPort("198.18.0.5:40000")}
	v6 := [2]netip.AddrPort{netip.MustParseAddrPort("[2001:db8::9]:443"), netip.MustParseAddrPort("[2001:db8::5]:40000")}
	src, dst := [4]byte{10, 0, 0, 1}, [4]byte{10, 0, 0, 2}
	fragment := innerPacket(v4[0], v4[1], protoUDP, 100)
	binary.BigEndian.PutUint16(fragment[6:], 0x2000) // more fragments
	noSum := innerPacket(v4[0], v4[1], protoUDP, 100)
	noSum[20+6], noSum[20+7] = 0, 0
	extHdr := innerPacket(v6[0], v6[1], protoTCP, 100)
	extHdr[6] = 60 // destination options: not summed from the headers
	for _, c := range []struct {
		name    string
		inner   []byte
		derived bool // whether the headers alone give the sum
	}{
		{"IPv4 TCP", innerPacket(v4[0], v4[1], protoTCP, 1448), true},
		{"IPv4 TCP odd", innerPacket(v4[0], v4[1], protoTCP, 1447), true},
		{"IPv4 TCP empty", innerPacket(v4[0], v4[1], protoTCP, 0), true},
		{"IPv4 UDP odd", innerPacket(v4[0], v4[1], protoUDP, 333), true},
		{"IPv6 TCP", innerPacket(v6[0], v6[1], protoTCP, 8400), true},
		{"IPv6 UDP odd", innerPacket(v6[0], v6[1], protoUDP, 1), true},
		{"IPv4 fragment", fragment, false},
		{"IPv4 UDP without checksum", noSum, false},
		{"IPv4 ICMP", echoPacket(1, "ping"), false},
		{"IPv4 ICMP error quoting TCP", icmpErrorQuoting(innerPacket(v4[1], v4[0], protoTCP, 100)), false},
		{"IPv6 extension header", extHdr, false},
		{"trailing bytes", append(innerPacket(v4[0], v4[1], protoTCP, 10), 0, 0), false},
		{"UDP shorter than its IP packet", udpWithTrailer(innerPacket(v4[0], v4[1], protoUDP, 10)), false},
		{"truncated", innerPacket(v4[0], v4[1], protoTCP, 10)[:30], false},
		{"empty", nil, false},
	} {
		for _, opts := range []int{0, 5} {
			d := outerDatagram(opts, c.inner)
			hdrLen := 8 + genevePrefix + 4*opts
			if _, ok := innerSum(d[hdrLen:]); ok != c.derived {
				t.Errorf("%s: summed from the headers %v, want %v", c.name, ok, c.derived)
			}
			got, want := outerChecksum(src, dst, d, datagramSum(d)), outerChecksum(src, dst, d, checksum.Checksum(d, 0))
			if got != want {
				t.Errorf("%s, %d option words: outer checksum %#04x, want %#04x", c.name, opts, got, want)
			}
		}
	}
	for n := range 8 + genevePrefix { // shorter than the headers
		d := outerDatagram(0, nil)[:n]
		if got, want := datagramSum(d), checksum.Checksum(d, 0); got != want {
			t.Errorf("%d bytes: sum %#04x, want %#04x", n, got, want)
		}
	}
}

// FuzzDatagramSum: datagramSum never panics, and whenever it sums from the
// headers and the inner checksum does hold, the outer checksum is the one
// summing every byte gives.
func FuzzDatagramSum(f *testing.F) {
	v4 := [2]netip.AddrPort{netip.MustParseAddrPort("198.18.9.9:443"), netip.MustParseAddrPort("198.18.0.5:40000")}
	v6 := [2]netip.AddrPort{netip.MustParseAddrPort("[2001:db8::9]:443"), netip.MustParseAddrPort("[2001:db8::5]:40000")}
	f.Add(outerDatagram(0, innerPacket(v4[0], v4[1], protoTCP, 40)))
	f.Add(outerDatagram(3, innerPacket(v6[0], v6[1], protoUDP, 41)))
	f.Add(outerDatagram(1, echoPacket(1, "ping")))
	src, dst := [4]byte{10, 0, 0, 1}, [4]byte{10, 0, 0, 2}
	f.Fuzz(func(t *testing.T, d []byte) {
		sum := datagramSum(d)
		if len(d) < 8+genevePrefix || len(d) < 8+genevePrefix+int(d[8]&0x3f)*4 {
			return
		}
		inner := d[8+genevePrefix+int(d[8]&0x3f)*4:]
		if _, ok := innerSum(inner); !ok || !transportChecksumHolds(inner) {
			return
		}
		if got, want := outerChecksum(src, dst, d, sum), outerChecksum(src, dst, d, checksum.Checksum(d, 0)); got != want {
			t.Fatalf("outer checksum %#04x, want %#04x", got, want)
		}
	})
}

// transportChecksumHolds sums pkt (an IPv4 or IPv6 packet that innerSum
// took) whole: whether its TCP or UDP checksum holds.
func transportChecksumHolds(pkt []byte) bool {
	var seg []byte
	var src, dst tcpip.Address
	var proto uint8
	if pkt[0]>>4 == 4 {
		ip := header.IPv4(pkt)
		seg, src, dst, proto = pkt[ip.HeaderLength():], ip.SourceAddress(), ip.DestinationAddress(), ip.Protocol()
	} else {
		ip := header.IPv6(pkt)
		seg, src, dst, proto = pkt[40:], ip.SourceAddress(), ip.DestinationAddress(), ip.NextHeader()
	}
	if proto == protoUDP { // the UDP length, not the IP one, bounds what the checksum covers
		if n := int(header.UDP(seg).Length()); n >= header.UDPMinimumSize && n <= len(seg) {
			seg = seg[:n]
		}
	}
	sum := header.PseudoHeaderChecksum(tcpip.TransportProtocolNumber(proto), src, dst, uint16(len(seg)))
	return checksum.Checksum(seg, sum) == 0xffff
}

// TestRawReturnInnerSegments: replies carrying real TCP and UDP packets, whose
// outer checksum the raw return path sums from the headers, are accepted by
// the receiving kernel, which checks every byte.
func TestRawReturnInnerSegments(t *testing.T) {
	r, gwlb, lo := newRawReturnRig(t)
	if r == nil {
		return
	}
	v4 := [2]netip.AddrPort{netip.MustParseAddrPort("198.18.9.9:443"), netip.MustParseAddrPort("198.18.0.5:40000")}
	v6 := [2]netip.AddrPort{netip.MustParseAddrPort("[2001:db8::9]:443"), netip.MustParseAddrPort("[2001:db8::5]:40000")}
	inners := [][]byte{
		innerPacket(v4[0], v4[1], protoTCP, 1448), innerPacket(v4[0], v4[1], protoTCP, 1447),
		innerPacket(v4[0], v4[1], protoUDP, 99), innerPacket(v6[0], v6[1], protoTCP, 8000),
		innerPacket(v6[0], v6[1], protoUDP, 1),
	}
	ports := [2]uint16{40001, 40001}
	b := getReplyBatch()
	var want [][]byte
	for _, inner := range inners {
		g := AppendHeader(nil, EtherTypeIPv4, 0, 7, 8, 9, nil)
		pkt := append(append(b.buf()[:outerHeadroom], g...), inner...)
		if _, ok := innerSum(pkt[outerHeadroom+len(g):]); !ok {
			t.Fatal("the test's packet is not summed from its headers")
		}
		b.add(pkt, netip.AddrPortFrom(lo, ports[0]))
		want = append(want, append([]byte(nil), pkt[outerHeadroom:]...))
	}
	if failed, err := r.sendBatch(b); failed != 0 || err != nil {
		t.Fatalf("%d failed: %v", failed, err)
	}
	b.release()
	readBatch(t, gwlb, want, ports)
}
