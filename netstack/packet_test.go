package netstack

import (
	"net"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// serialize builds a packet, computing lengths and checksums; transport
// layers take their checksum's pseudo-header from the IP layer before them.
func serialize(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	var nl gopacket.NetworkLayer
	for _, l := range ls {
		switch l := l.(type) {
		case gopacket.NetworkLayer:
			nl = l
		case interface {
			SetNetworkLayerForChecksum(gopacket.NetworkLayer) error
		}:
			if nl != nil {
				l.SetNetworkLayerForChecksum(nl)
			}
		}
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

var (
	v4a = net.ParseIP("198.18.0.5").To4()
	v4b = net.ParseIP("127.0.0.1").To4()
	v6a = net.ParseIP("2001:db8::5")
	v6b = net.ParseIP("::1")
)

func ip4hdr(proto layers.IPProtocol) *layers.IPv4 {
	return &layers.IPv4{Version: 4, TTL: 64, Protocol: proto, SrcIP: v4a, DstIP: v4b}
}

func TestParsePacket(t *testing.T) {
	tcp4 := &layers.TCP{SrcPort: 40000, DstPort: 443, SYN: true, Window: 1000}
	ip := ip4hdr(layers.IPProtocolTCP)
	tcp4.SetNetworkLayerForChecksum(ip)
	udp6 := &layers.UDP{SrcPort: 5353, DstPort: 53}
	ip6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolIPv6HopByHop, SrcIP: v6a, DstIP: v6b}
	hop := &layers.IPv6HopByHop{}
	hop.NextHeader = layers.IPProtocolUDP
	hop.Options = []*layers.IPv6HopByHopOption{{OptionType: 1, OptionData: []byte{0, 0, 0, 0}}}
	udp6.SetNetworkLayerForChecksum(ip6)
	echo := serialize(t, ip4hdr(layers.IPProtocolICMPv4),
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0), Id: 77, Seq: 1}, gopacket.Payload("ping"))
	// An ICMP error about a UDP datagram the destination sent to the client.
	quoted := serialize(t, &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: v4b, DstIP: v4a},
		&layers.UDP{SrcPort: 53, DstPort: 5353}, gopacket.Payload("answer"))
	unreach := serialize(t, ip4hdr(layers.IPProtocolICMPv4),
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(3, 3)}, gopacket.Payload(quoted[:28]))
	frag := serialize(t, &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: v4a, DstIP: v4b, FragOffset: 100, Id: 9}, gopacket.Payload("rest"))

	cases := []struct {
		name      string
		pkt       []byte
		ether     uint16
		want      Packet
		checkOnly func(p Packet) bool
	}{
		{"tcp4", serialize(t, ip, tcp4), EtherTypeIPv4, Packet{Proto: 6, SrcPort: 40000, DstPort: 443, TCPFlags: 0x02}, nil},
		{"udp6 behind hop-by-hop", serialize(t, ip6, hop, udp6, gopacket.Payload("q")), EtherTypeIPv6, Packet{IPv6: true, Proto: 17, SrcPort: 5353, DstPort: 53}, nil},
		{"echo request", echo, EtherTypeIPv4, Packet{Proto: 1, SrcPort: 77, DstPort: 77, Echo: true}, nil},
		{"port unreachable takes the quoted flow", unreach, EtherTypeIPv4, Packet{Proto: 17, SrcPort: 5353, DstPort: 53, ICMPError: true}, nil},
		{"later fragment", frag, EtherTypeIPv4, Packet{Proto: 17, Fragment: true, FragmentID: 9}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, r := ParsePacket(c.pkt, c.ether)
			if r != DropNone {
				t.Fatalf("drop %s", r)
			}
			if p.Proto != c.want.Proto || p.SrcPort != c.want.SrcPort || p.DstPort != c.want.DstPort ||
				p.Echo != c.want.Echo || p.ICMPError != c.want.ICMPError || p.Fragment != c.want.Fragment ||
				p.IPv6 != c.want.IPv6 || (c.want.TCPFlags != 0 && p.TCPFlags != c.want.TCPFlags) {
				t.Fatalf("parsed %+v, want %+v", p, c.want)
			}
		})
	}
	// The error and the datagram it quotes belong to one flow.
	p1, _ := ParsePacket(unreach, EtherTypeIPv4)
	p2, _ := ParsePacket(quoted, EtherTypeIPv4)
	if p1.Key(1) != p2.ReplyKey(1) {
		t.Fatal("ICMP error and the quoted datagram have different flow keys")
	}
	if _, r := ParsePacket(serialize(t, ip, tcp4), EtherTypeIPv6); r != DropInnerMismatch {
		t.Fatalf("IPv4 under an IPv6 protocol type: %s", r)
	}
}

// TestFlowKeyDirection: a client's packet and the stack's reply to it
// have one flow key (Key, ReplyKey), whose client is the client; a packet
// from the other end (D:dp -> V:vp) is another flow, D's. The GWLB's
// TupleKey is the same both ways.
func TestFlowKeyDirection(t *testing.T) {
	a := Packet{Proto: 6, Src: netip.MustParseAddr("::ffff:198.18.0.5").As16(), Dst: netip.MustParseAddr("::ffff:127.0.0.1").As16(), SrcPort: 40000, DstPort: 80}
	b := Packet{Proto: 6, Src: a.Dst, Dst: a.Src, SrcPort: 80, DstPort: 40000}
	if a.Key(5) != b.ReplyKey(5) {
		t.Fatal("a packet and its reply have different keys")
	}
	if k := a.Key(5); k.ClientAddr != a.Src || k.ClientPort != 40000 || k.ServerAddr != a.Dst || k.ServerPort != 80 {
		t.Fatalf("a client's packet keyed %+v", k)
	}
	if a.Key(5) == b.Key(5) {
		t.Fatal("a packet from the other end has the client's flow key")
	}
	if a.Key(5) == a.Key(6) {
		t.Fatal("the same 5-tuple behind two endpoints shares a key")
	}
	if a.Tuple(5) != b.Tuple(5) {
		t.Fatal("a packet and its reply have different tuple keys")
	}
}

// FuzzParsePacket: no input panics, and whenever gopacket decodes an IPv4 or
// IPv6 packet with a TCP or UDP header, the addresses and ports agree.
func FuzzParsePacket(f *testing.F) {
	tcp := &layers.TCP{SrcPort: 1, DstPort: 2, SYN: true}
	ip := ip4hdr(layers.IPProtocolTCP)
	tcp.SetNetworkLayerForChecksum(ip)
	f.Add(serialize(f, ip, tcp))
	f.Add(serialize(f, &layers.IPv6{Version: 6, NextHeader: layers.IPProtocolUDP, SrcIP: v6a, DstIP: v6b}, &layers.UDP{SrcPort: 3, DstPort: 4}))
	f.Add(innerV4)
	f.Fuzz(func(t *testing.T, b []byte) {
		ether := uint16(EtherTypeIPv4)
		first := layers.LayerTypeIPv4
		if len(b) > 0 && b[0]>>4 == 6 {
			ether, first = EtherTypeIPv6, layers.LayerTypeIPv6
		}
		p, r := ParsePacket(b, ether)
		if r != DropNone || p.Fragment || p.ICMPError {
			return
		}
		pkt := gopacket.NewPacket(b, first, gopacket.DecodeOptions{NoCopy: true})
		if pkt.ErrorLayer() != nil {
			return
		}
		var src, dst net.IP
		if l, ok := pkt.NetworkLayer().(*layers.IPv4); ok {
			// gopacket follows IPv6 extension headers (protocol 43 and
			// the like) even after an IPv4 header; ParsePacket does not.
			if l.Flags&layers.IPv4MoreFragments != 0 || (l.Protocol != layers.IPProtocolTCP && l.Protocol != layers.IPProtocolUDP) {
				return
			}
			src, dst = l.SrcIP, l.DstIP
		} else if l, ok := pkt.NetworkLayer().(*layers.IPv6); ok {
			src, dst = l.SrcIP, l.DstIP
		} else {
			return
		}
		var sp, dp uint16
		switch l := pkt.TransportLayer().(type) {
		case *layers.TCP:
			sp, dp = uint16(l.SrcPort), uint16(l.DstPort)
		case *layers.UDP:
			sp, dp = uint16(l.SrcPort), uint16(l.DstPort)
		default:
			return
		}
		if !net.IP(p.SrcAddr().AsSlice()).Equal(src) || !net.IP(p.DstAddr().AsSlice()).Equal(dst) || p.SrcPort != sp || p.DstPort != dp {
			t.Fatalf("ParsePacket %s:%d > %s:%d, gopacket %s:%d > %s:%d", p.SrcAddr(), p.SrcPort, p.DstAddr(), p.DstPort, src, sp, dst, dp)
		}
	})
}
