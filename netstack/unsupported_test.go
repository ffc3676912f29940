package netstack

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// countingHandler counts what reaches it: TCP connection requests
// (rejected), UDP flows (closed) and echo requests (left unanswered).
type countingHandler struct{ tcp, udp, echo atomic.Int64 }

func (h *countingHandler) HandleTCP(req *TCPRequest) { h.tcp.Add(1); req.Reject() }

func (h *countingHandler) HandleUDP(_ FlowInfo, conn net.Conn) { h.udp.Add(1); conn.Close() }

func (h *countingHandler) HandleEcho(EchoRequest) { h.echo.Add(1) }

// echo6Packet is an ICMPv6 echo request from src to dst, checksum filled in.
func echo6Packet(src, dst netip.Addr, id uint16, data string) []byte {
	pkt := make([]byte, header.IPv6MinimumSize+8+len(data))
	srcA, dstA := tcpip.AddrFromSlice(src.AsSlice()), tcpip.AddrFromSlice(dst.AsSlice())
	header.IPv6(pkt).Encode(&header.IPv6Fields{PayloadLength: uint16(8 + len(data)),
		TransportProtocol: header.ICMPv6ProtocolNumber, HopLimit: 64, SrcAddr: srcA, DstAddr: dstA})
	icmp := pkt[header.IPv6MinimumSize:]
	icmp[0] = 128
	binary.BigEndian.PutUint16(icmp[4:], id)
	binary.BigEndian.PutUint16(icmp[6:], 1)
	copy(icmp[8:], data)
	sum := header.PseudoHeaderChecksum(header.ICMPv6ProtocolNumber, srcA, dstA, uint16(len(icmp)))
	binary.BigEndian.PutUint16(icmp[2:], ^checksum.Checksum(icmp, sum))
	return pkt
}

// icmp6Packet is an ICMPv6 message of type typ from src to dst with body
// after the type, code and checksum, checksum filled in.
func icmp6Packet(src, dst netip.Addr, typ, hopLimit uint8, body []byte) []byte {
	pkt := make([]byte, header.IPv6MinimumSize+4+len(body))
	srcA, dstA := tcpip.AddrFromSlice(src.AsSlice()), tcpip.AddrFromSlice(dst.AsSlice())
	header.IPv6(pkt).Encode(&header.IPv6Fields{PayloadLength: uint16(4 + len(body)),
		TransportProtocol: header.ICMPv6ProtocolNumber, HopLimit: hopLimit, SrcAddr: srcA, DstAddr: dstA})
	icmp := pkt[header.IPv6MinimumSize:]
	icmp[0] = typ
	copy(icmp[4:], body)
	sum := header.PseudoHeaderChecksum(header.ICMPv6ProtocolNumber, srcA, dstA, uint16(len(icmp)))
	binary.BigEndian.PutUint16(icmp[2:], ^checksum.Checksum(icmp, sum))
	return pkt
}

// behindExtHeader puts an 8-byte extension header with next header nh
// between the IPv6 packet pkt's fixed header and its transport. The
// transport's checksum does not cover it, so it stays right.
func behindExtHeader(pkt []byte, nh uint8) []byte {
	out := make([]byte, 0, len(pkt)+8)
	out = append(out, pkt[:40]...)
	out = append(out, pkt[6], 0, 0, 0, 0, 0, 0, 0)
	out = append(out, pkt[40:]...)
	out[6] = nh
	binary.BigEndian.PutUint16(out[4:], uint16(len(out)-40))
	return out
}

// TestUnsupportedProtocolsDropped: a packet whose header chain ends in
// anything but TCP, UDP or ICMP is dropped and counted before it makes a
// flow or reaches a stack. ParsePacket stopped at IPv6 next header 253
// (experiment, RFC 3692), which gVisor skips as an 8-byte extension
// header: TCP SYNs and UDP datagrams behind it reached the handler without
// a flow of their own (past --max-flows, their records without the GWLB's
// IDs), and the stack answered an ICMPv6 echo behind it from any
// destination, one the echo relay denies included.
func TestUnsupportedProtocolsDropped(t *testing.T) {
	c := gwlbSocket(t, "127.0.0.1:0")
	h := &countingHandler{}
	s := startServer(t, Config{Handler: h, ReplyPort: c.LocalAddr().(*net.UDPAddr).AddrPort().Port()})
	client, dest := netip.MustParseAddr("2001:db8::5"), netip.MustParseAddr("fd00:ec2::254")
	send := func(ether uint16, inner []byte) {
		t.Helper()
		d := append(AppendHeader(nil, ether, 0, 7, 0xa77ac4, 0xc00c1e, nil), inner...)
		if _, err := c.WriteToUDPAddrPort(d, s.Addr()); err != nil {
			t.Fatal(err)
		}
	}
	// A plain echo request makes the (58, id) flow that the stack's own
	// answer to the hidden one would go out under; the handler answers
	// nothing.
	send(EtherTypeIPv6, echo6Packet(client, dest, 9, "ping"))
	waitUntil(t, 5*time.Second, "the plain echo request at the handler", func() (bool, string) {
		return h.echo.Load() == 1, fmt.Sprintf("%d echo requests", h.echo.Load())
	})

	syn := clientSegment(netip.AddrPortFrom(client, 40000), netip.AddrPortFrom(dest, 443), 1000, 0, header.TCPFlagSyn, nil)
	udp := innerPacket(netip.AddrPortFrom(client, 5000), netip.AddrPortFrom(dest, 53), protoUDP, 16)
	udp4 := udpPacket(3000, 16)
	udp4[9] = 253
	hidden := []struct {
		name  string
		ether uint16
		pkt   []byte
	}{
		{"TCP SYN behind 253", EtherTypeIPv6, behindExtHeader(syn, 253)},
		{"UDP behind 253", EtherTypeIPv6, behindExtHeader(udp, 253)},
		{"UDP behind 254", EtherTypeIPv6, behindExtHeader(udp, 254)},
		{"echo behind 253", EtherTypeIPv6, behindExtHeader(echo6Packet(client, dest, 9, "ping"), 253)},
		{"TCP SYN behind 99", EtherTypeIPv6, behindExtHeader(syn, 99)},
		{"no next header", EtherTypeIPv6, behindExtHeader(udp, 59)},
		{"IPv4 protocol 253", EtherTypeIPv4, ipv4Sum(udp4)},
	}
	for _, p := range hidden {
		if _, r := ParsePacket(p.pkt, p.ether); r != DropInnerUnsupported {
			t.Errorf("%s: parsed as %s, want %s", p.name, r, DropInnerUnsupported)
		}
		send(p.ether, p.pkt)
	}
	// ICMP that is neither an echo request nor an error: parsed (the
	// same types leave the appliance, the echo relay's replies), but not
	// taken in from a client. A neighbour solicitation for the metadata
	// service's address was answered by the stack, which owns every
	// address, in that address's name.
	nsBody := append(dest.AsSlice(), 1, 1, 0x02, 0, 0, 0, 0, 5) // target, source link-layer address option
	ns := icmp6Packet(client, dest, 135, 255, append([]byte{0, 0, 0, 0}, nsBody...))
	echoReply4 := echoPacket(9, "pong")
	echoReply4[20] = 0 // an echo reply (its checksum no longer matters: it is dropped before any is read)
	icmpOnly := []struct {
		name  string
		ether uint16
		pkt   []byte
	}{
		{"neighbour solicitation", EtherTypeIPv6, ns},
		{"router solicitation", EtherTypeIPv6, icmp6Packet(client, dest, 133, 255, make([]byte, 4))},
		{"ICMPv6 echo reply", EtherTypeIPv6, icmp6Packet(client, dest, 129, 64, []byte{0, 9, 0, 1})},
		{"ICMP echo reply", EtherTypeIPv4, echoReply4},
	}
	for _, p := range icmpOnly {
		if pp, r := ParsePacket(p.pkt, p.ether); r != DropNone || !pp.UnsupportedFromClient() {
			t.Errorf("%s: parsed as %s, taken from a client: %v", p.name, r, r == DropNone && !pp.UnsupportedFromClient())
		}
		send(p.ether, p.pkt)
	}
	hidden = append(hidden, icmpOnly...)
	// One packet more, plain, after them: once it is at the handler, the
	// hidden ones have been read, and whatever got past would have reached
	// the handler or the stack.
	send(EtherTypeIPv6, echo6Packet(client, dest, 10, "ping"))
	waitUntil(t, 5*time.Second, "the last echo request at the handler", func() (bool, string) {
		return h.echo.Load() >= 2, fmt.Sprintf("%d echo requests", h.echo.Load())
	})
	time.Sleep(300 * time.Millisecond)
	if st := s.Stats(); st.Drops["inner_protocol_unsupported"] != uint64(len(hidden)) {
		t.Errorf("drops %v, want inner_protocol_unsupported %d", st.Drops, len(hidden))
	}
	if tcp, udp, echo := h.tcp.Load(), h.udp.Load(), h.echo.Load(); tcp != 0 || udp != 0 || echo != 2 {
		t.Errorf("the handler got %d TCP and %d UDP requests and %d echo requests, want none, none and the two plain ones", tcp, udp, echo)
	}
	if n := s.Stats().Flows; n != 2 {
		t.Errorf("%d flows, want the plain echo requests' alone", n)
	}
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	buf := make([]byte, 65536)
	if n, err := c.Read(buf); err == nil {
		t.Errorf("a reply of %d bytes left the appliance: % x", n, buf[:n])
	}
}

// TestUnsupportedFirstFragment: a first fragment must name TCP, UDP or
// ICMP as well, after its fragment header; a later fragment carries no
// transport header and follows its first as before, whatever protocol its
// fragment header names (gVisor takes the first fragment's).
func TestUnsupportedFirstFragment(t *testing.T) {
	for _, fam := range fragFamilies {
		t.Run(fam.name, func(t *testing.T) {
			frags := fragment(udpDatagram(fam.src, fam.dst, 3000), 0x77, 1500)
			ether := uint16(EtherTypeIPv4)
			if fam.src.Addr().Is6() {
				ether = EtherTypeIPv6
			}
			parseFrags(t, frags)
			for i, f := range frags {
				if ether == EtherTypeIPv6 {
					f[40] = 253 // the fragment header's next header
				} else {
					f[9] = 253
					ipv4Sum(f)
				}
				p, r := ParsePacket(f, ether)
				switch {
				case i == 0 && r != DropInnerUnsupported:
					t.Errorf("first fragment naming 253: %s, want %s", r, DropInnerUnsupported)
				case i > 0 && (r != DropNone || !p.Fragment):
					t.Errorf("later fragment %d: %s, fragment %v", i, r, p.Fragment)
				}
			}
		})
	}
}

// FuzzParseIPv6LikeGVisor: whenever ParsePacket takes an IPv6 packet (not a
// later fragment), gVisor's own walk of its extension headers ends at the
// same transport protocol and offset: the stack never reads a packet as
// another protocol than the flow table keyed it under.
func FuzzParseIPv6LikeGVisor(f *testing.F) {
	client, dest := netip.MustParseAddr("2001:db8::5"), netip.MustParseAddr("2001:db8::9")
	syn := clientSegment(netip.AddrPortFrom(client, 40000), netip.AddrPortFrom(dest, 443), 1000, 0, header.TCPFlagSyn, nil)
	f.Add(syn)
	f.Add(behindExtHeader(syn, 253))
	f.Add(behindExtHeader(syn, 60))
	f.Add(behindExtHeader(behindExtHeader(echo6Packet(client, dest, 1, "x"), 43), 0))
	f.Add(fragment(udpDatagram(netip.AddrPortFrom(client, 1), netip.AddrPortFrom(dest, 2), 3000), 5, 1500)[0])
	f.Fuzz(func(t *testing.T, b []byte) {
		p, r := ParsePacket(b, EtherTypeIPv6)
		if r != DropNone || p.Fragment || p.ICMPError {
			return
		}
		it := header.MakeIPv6PayloadIterator(header.IPv6ExtensionHeaderIdentifier(b[6]), buffer.MakeWithData(b[40:p.Len]))
		defer it.Release()
		for {
			h, done, err := it.Next()
			if err != nil || done {
				// gVisor drops what it cannot walk: no differential.
				return
			}
			raw, ok := h.(header.IPv6RawPayloadHeader)
			if !ok {
				h.Release()
				continue
			}
			n := raw.Buf.Size()
			raw.Release()
			if uint8(raw.Identifier) != p.Proto || int(n) != p.Len-p.Payload {
				t.Fatalf("ParsePacket: protocol %d at %d; gVisor: %d at %d", p.Proto, p.Payload, raw.Identifier, p.Len-int(n))
			}
			return
		}
	})
}

// TestStackEchoNotSent: echo a stack answers itself never leaves, while the
// echo relay's answers do. gVisor's IPv6 side answers echo for the
// addresses it spoofs; an echo request that got into a stack (as one
// behind an experiment header did) had its answer sent to the client from
// the destination, whatever the policy said of it.
func TestStackEchoNotSent(t *testing.T) {
	c := gwlbSocket(t, "127.0.0.1:0")
	s := startServer(t, Config{ReplyPort: c.LocalAddr().(*net.UDPAddr).AddrPort().Port()})
	client, dest := netip.MustParseAddr("2001:db8::5"), netip.MustParseAddr("fd00:ec2::254")
	req := echo6Packet(client, dest, 9, "ping")
	d := append(AppendHeader(nil, EtherTypeIPv6, 0, 7, 0xa77ac4, 0xc00c1e, nil), req...)
	if _, err := c.WriteToUDPAddrPort(d, s.Addr()); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 65536)
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Read(buf); err != nil {
		t.Fatalf("no answer from the echo relay: %v", err)
	}

	// The same request straight into the endpoint's stack, past the
	// parser: the stack answers it, under the flow the first one made.
	v, ok := s.stacks.Load(uint64(7))
	if !ok {
		t.Fatal("no stack for the endpoint")
	}
	st := v.(*endpointStack)
	st.link.inject(req, true)
	c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	if n, err := c.Read(buf); err == nil {
		t.Fatalf("the stack's own echo answer left the appliance: % x", buf[:n])
	}
	if st := s.Stats(); st.Drops["stack_echo"] != 1 {
		t.Fatalf("drops %v, want stack_echo 1", st.Drops)
	}
}
