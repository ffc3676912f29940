package netstack

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// TestBadIPv6AddressesDropped: an inner IPv6 packet with an IPv4-mapped
// source or destination, or whose source is multicast, unspecified or
// loopback, is dropped and counted (inner_bad_address) before it makes a
// flow or reaches the handler, as gVisor and Linux drop them. Echo
// bypasses gVisor: an echo request from ::ffff:10.1.2.3 was taken in, and
// the flow table, the shares and the policy read its client as the IPv4
// 10.1.2.3 (a spoofer charging another client, passing its client_cidrs);
// TCP and UDP ones made flows charged to that client before gVisor dropped
// them.
func TestBadIPv6AddressesDropped(t *testing.T) {
	c := gwlbSocket(t, "127.0.0.1:0")
	h := &countingHandler{}
	s := startServer(t, Config{Handler: h, ReplyPort: c.LocalAddr().(*net.UDPAddr).AddrPort().Port()})
	send := func(inner []byte) {
		t.Helper()
		d := append(AppendHeader(nil, EtherTypeIPv6, 0, 7, 0xa77ac4, 0xc00c1e, nil), inner...)
		if _, err := c.WriteToUDPAddrPort(d, s.Addr()); err != nil {
			t.Fatal(err)
		}
	}
	client, dest := netip.MustParseAddr("2001:db8::5"), netip.MustParseAddr("2001:db8:1::7")
	mapped, mappedDest := netip.MustParseAddr("::ffff:10.1.2.3"), netip.MustParseAddr("::ffff:198.51.100.7")
	bad := []struct {
		name      string
		src, dst  netip.Addr
		fromStack bool // also dropped where the stack's replies are parsed
	}{
		{"mapped source", mapped, dest, true},
		{"mapped destination", client, mappedDest, true},
		{"both mapped", mapped, mappedDest, true},
		{"multicast source", netip.MustParseAddr("ff02::1"), dest, false},
		{"unspecified source", netip.IPv6Unspecified(), dest, false},
		{"loopback source", netip.IPv6Loopback(), dest, false},
	}
	n := 0
	for _, b := range bad {
		pkts := map[string][]byte{
			"echo": echo6Packet(b.src, b.dst, 9, "ping"),
			"SYN":  clientSegment(netip.AddrPortFrom(b.src, 40000), netip.AddrPortFrom(b.dst, 443), 1000, 0, header.TCPFlagSyn, nil),
			"UDP":  innerPacket(netip.AddrPortFrom(b.src, 5000), netip.AddrPortFrom(b.dst, 53), protoUDP, 16),
		}
		for kind, pkt := range pkts {
			p, r := ParsePacket(pkt, EtherTypeIPv6)
			if b.fromStack && r != DropInnerBadAddress {
				t.Errorf("%s %s: parsed as %s, want %s", b.name, kind, r, DropInnerBadAddress)
			}
			if !b.fromStack && (r != DropNone || !p.BadClientSource()) {
				t.Errorf("%s %s: parsed as %s, a bad client source: %v", b.name, kind, r, p.BadClientSource())
			}
			send(pkt)
			n++
		}
	}
	// A plain echo request after them: once it is at the handler, the bad
	// ones have been read.
	send(echo6Packet(client, dest, 10, "ping"))
	wantOnlyPlainEcho(t, s, h, n)
}

// wantOnlyPlainEcho waits for the plain echo request sent after n packets
// from bad addresses, and checks that those were dropped as such: counted,
// no flow made, nothing handed to the handler.
func wantOnlyPlainEcho(t *testing.T, s *Server, h *countingHandler, n int) {
	t.Helper()
	waitUntil(t, 5*time.Second, "the plain echo request at the handler", func() (bool, string) {
		return h.echo.Load() >= 1, fmt.Sprintf("%d echo requests", h.echo.Load())
	})
	time.Sleep(200 * time.Millisecond)
	if st := s.Stats(); st.Drops["inner_bad_address"] != uint64(n) {
		t.Errorf("drops %v, want inner_bad_address %d", st.Drops, n)
	}
	if tcp, udp, echo := h.tcp.Load(), h.udp.Load(), h.echo.Load(); tcp != 0 || udp != 0 || echo != 1 {
		t.Errorf("the handler got %d TCP and %d UDP requests and %d echo requests, want none, none and the plain one", tcp, udp, echo)
	}
	if f := s.Stats().Flows; f != 1 {
		t.Errorf("%d flows, want the plain echo request's alone", f)
	}
}

// echo4Packet is an IPv4 ICMP echo request from src to dst.
func echo4Packet(src, dst netip.Addr, id uint16, data string) []byte {
	pkt := echoPacket(id, data)
	s, d := src.As4(), dst.As4()
	copy(pkt[12:], s[:])
	copy(pkt[16:], d[:])
	return ipv4Sum(pkt)
}

// TestBadIPv4SourcesDropped: the IPv4 twins of the sources
// TestBadIPv6AddressesDropped drops (multicast, the limited broadcast,
// 0.0.0.0/8 and loopback 127.0.0.0/8) are dropped and counted
// (inner_bad_address) before they make a flow or reach the handler. An
// echo request from 224.0.0.1, 255.255.255.255, 0.0.0.0 or 127.0.0.1 went
// to the echo relay, and TCP and UDP from them made flows charged to a
// phantom client before gVisor dropped them. Sources at the edges of those
// ranges stay clients.
func TestBadIPv4SourcesDropped(t *testing.T) {
	for _, good := range []string{"10.0.0.1", "1.0.0.0", "126.255.255.255", "128.0.0.0", "223.255.255.255", "240.0.0.1", "255.255.255.254"} {
		p, r := ParsePacket(echo4Packet(netip.MustParseAddr(good), testDest, 1, "ping"), EtherTypeIPv4)
		if r != DropNone || p.BadClientSource() {
			t.Errorf("an echo request from %s: parsed as %s, a bad client source: %v", good, r, p.BadClientSource())
		}
	}
	c := gwlbSocket(t, "127.0.0.1:0")
	h := &countingHandler{}
	s := startServer(t, Config{Handler: h, ReplyPort: c.LocalAddr().(*net.UDPAddr).AddrPort().Port()})
	send := func(inner []byte) {
		t.Helper()
		if _, err := c.WriteToUDPAddrPort(geneve(7, inner), s.Addr()); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	for _, src := range []string{"224.0.0.1", "239.255.255.250", "255.255.255.255", "0.0.0.0", "0.1.2.3", "127.0.0.1", "127.9.8.7"} {
		a := netip.MustParseAddr(src)
		pkts := map[string][]byte{
			"echo": echo4Packet(a, testDest, 9, "ping"),
			"SYN":  clientSegment(netip.AddrPortFrom(a, 40000), netip.AddrPortFrom(testDest, 443), 1000, 0, header.TCPFlagSyn, nil),
			"UDP":  innerPacket(netip.AddrPortFrom(a, 5000), netip.AddrPortFrom(testDest, 53), protoUDP, 16),
		}
		for kind, pkt := range pkts {
			if p, r := ParsePacket(pkt, EtherTypeIPv4); r != DropNone || !p.BadClientSource() {
				t.Errorf("%s from %s: parsed as %s, a bad client source: %v", kind, src, r, p.BadClientSource())
			}
			send(pkt)
			n++
		}
	}
	send(echo4Packet(testClient, testDest, 10, "ping"))
	wantOnlyPlainEcho(t, s, h, n)
}
