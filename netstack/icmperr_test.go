package netstack

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
)

// icmpError is an IPv4 ICMP destination-unreachable (code 4: fragmentation
// needed) from from to to, quoting the first 28 bytes of quoted.
func icmpError(from, to netip.Addr, quoted []byte) []byte {
	pkt := make([]byte, 20+8+28)
	pkt[0], pkt[8], pkt[9] = 0x45, 64, protoICMP
	binary.BigEndian.PutUint16(pkt[2:], uint16(len(pkt)))
	f, d := from.As4(), to.As4()
	copy(pkt[12:], f[:])
	copy(pkt[16:], d[:])
	icmp := pkt[20:]
	icmp[0], icmp[1] = 3, 4
	binary.BigEndian.PutUint16(icmp[6:], 1280) // the next hop's MTU
	copy(icmp[8:], quoted[:28])
	binary.BigEndian.PutUint16(icmp[2:], ^checksum.Checksum(icmp, 0))
	return ipv4Sum(pkt)
}

// TestICMPErrorsFollowTheQuotedFlow: an ICMP error belongs to the flow of
// the packet it quotes, whoever sent it (here a router on the way to the
// client, as a Transit Gateway sends "fragmentation needed"). It makes no
// flow of its own: about a flow the table does not hold it is dropped and
// counted; about one it holds, it neither takes the flow to its own GENEVE
// header nor keeps it alive. Before, it was keyed on the router's address
// and the quoted ports: a flow of its own, charged to the router's share,
// and the real flow never matched.
func TestICMPErrorsFollowTheQuotedFlow(t *testing.T) {
	s := startServer(t, Config{})
	from := netip.MustParseAddrPort("127.0.0.2:40000")
	const ep = 11
	router := netip.MustParseAddr("198.18.200.1")
	reply := udpDatagram(netip.AddrPortFrom(testDest, 53), netip.AddrPortFrom(testClient, 3000), 8)
	errPkt := icmpError(router, testDest, reply)
	underOwnHeader := append(AppendHeader(nil, EtherTypeIPv4, 0, ep, 0xa77ac4, 0xbad, nil), errPkt...)

	p, r := ParsePacket(errPkt, EtherTypeIPv4)
	q, _ := ParsePacket(reply, EtherTypeIPv4)
	if r != DropNone || !p.ICMPError || p.Key(ep) != q.ReplyKey(ep) {
		t.Fatalf("a router's error about %v: %s, key %+v, want the quoted packet's %+v", q, r, p.Key(ep), q.ReplyKey(ep))
	}

	s.handleDatagram(underOwnHeader, from, nil)
	if st := s.Stats(); st.Flows != 0 || st.Stacks != 0 || st.Drops["icmp_error_without_flow"] != 1 {
		t.Fatalf("an error about no flow: %d flows, %d stacks, drops %v", st.Flows, st.Stacks, st.Drops)
	}

	s.handleDatagram(geneve(ep, udpPacket(3000, 10)), from, nil)
	key := q.ReplyKey(ep)
	flow := s.flows.Lookup(&key)
	if flow == nil {
		t.Fatalf("no flow for the client's datagram; stats %+v", s.Stats())
	}
	seen := flow.lastSeen.Load()
	s.handleDatagram(underOwnHeader, from, nil)
	if st := s.Stats(); st.Flows != 1 || st.Drops["icmp_error_without_flow"] != 1 {
		t.Fatalf("an error about a flow held: %d flows, drops %v", st.Flows, st.Drops)
	}
	if c := flow.Header().FlowCookie; c != 0xc00c1e {
		t.Fatalf("the flow's header took the error's cookie %#x", c)
	}
	if flow.lastSeen.Load() != seen {
		t.Fatal("the error kept the flow alive")
	}
}

// TestFlowKeyIPVersion: an IPv6 packet between the IPv4-mapped forms of an
// IPv4 flow's addresses never touches the IPv4 flow. Sharing the key, it
// took the IPv4 flow's GENEVE header, and that flow's replies left under a
// header whose protocol type said IPv6. It is now dropped on sight
// (inner_bad_address: no real IPv6 packet has a mapped address), and the
// key, which holds the version, would keep the two apart anyway.
func TestFlowKeyIPVersion(t *testing.T) {
	s := startServer(t, Config{})
	from := netip.MustParseAddrPort("127.0.0.2:40000")
	const ep = 12
	v4 := udpPacket(3000, 10)
	mapped := udpDatagram(netip.AddrPortFrom(netip.AddrFrom16(testClient.As16()), 3000),
		netip.AddrPortFrom(netip.AddrFrom16(testDest.As16()), 53), 10)
	p4, _ := ParsePacket(v4, EtherTypeIPv4)
	if _, r := ParsePacket(mapped, EtherTypeIPv6); r != DropInnerBadAddress {
		t.Fatalf("the mapped packet: %s, want %s", r, DropInnerBadAddress)
	}
	p6 := p4
	p6.IPv6 = true // the same addresses in the mapped form, as IPv6
	if p4.Key(ep) == p6.Key(ep) {
		t.Fatal("an IPv4 flow and its IPv4-mapped IPv6 twin share a key")
	}

	s.handleDatagram(geneve(ep, v4), from, nil)
	s.handleDatagram(append(AppendHeader(nil, EtherTypeIPv6, 0, ep, 0xa77ac4, 0xbad, nil), mapped...), from, nil)
	k4 := p4.Key(ep)
	f := s.flows.Lookup(&k4)
	if f == nil {
		t.Fatalf("no IPv4 flow; stats %+v", s.Stats())
	}
	if h := f.Header(); h.Protocol != EtherTypeIPv4 || h.FlowCookie != 0xc00c1e {
		t.Fatalf("the IPv4 flow's header: protocol %#x, cookie %#x", h.Protocol, h.FlowCookie)
	}
	if st := s.Stats(); st.Flows != 1 || st.Drops["inner_bad_address"] != 1 {
		t.Fatalf("%d flows, drops %v: want the IPv4 flow alone, the mapped packet dropped", st.Flows, st.Drops)
	}
}

// TestRepliesMarkFlows: a reply the stack (or the echo relay) sends marks
// its flow replied to, which keeps it for its idle timeout; a flow nothing
// answered stays unmarked.
func TestRepliesMarkFlows(t *testing.T) {
	c := gwlbSocket(t, "127.0.0.1:0")
	s := startServer(t, Config{ReplyPort: c.LocalAddr().(*net.UDPAddr).AddrPort().Port()})
	if _, err := c.WriteToUDPAddrPort(geneve(7, echoPacket(9, "ping")), s.Addr()); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Read(make([]byte, 65536)); err != nil {
		t.Fatalf("no echo reply: %v", err)
	}
	echo, _ := ParsePacket(echoPacket(9, "ping"), EtherTypeIPv4)
	k := echo.Key(7)
	if f := s.flows.Lookup(&k); f == nil || !f.replied.Load() {
		t.Fatalf("the echo flow after its reply: held %v, want it marked replied", f != nil)
	}
	udp, _ := ParsePacket(udpPacket(3000, 10), EtherTypeIPv4)
	s.handleDatagram(geneve(7, udpPacket(3000, 10)), netip.MustParseAddrPort("127.0.0.2:40000"), nil)
	k = udp.Key(7)
	if f := s.flows.Lookup(&k); f == nil || f.replied.Load() {
		t.Fatalf("a UDP flow nothing answered: held %v, want it held and unmarked", f != nil)
	}
}

// echoUDPHandler answers each UDP flow's first datagram with itself.
type echoUDPHandler struct{ testHandler }

func (*echoUDPHandler) HandleUDP(_ FlowInfo, conn net.Conn) {
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 65536)
	if n, err := conn.Read(buf); err == nil {
		conn.Write(buf[:n])
	}
}

// TestUDPRepliesMarkFlows: a UDP reply through the stack marks its flow
// replied to, a small one and one that leaves in fragments alike; else
// every UDP flow would be forgotten after the transitory timeout.
func TestUDPRepliesMarkFlows(t *testing.T) {
	c := gwlbSocket(t, "127.0.0.1:0")
	s := startServer(t, Config{Handler: &echoUDPHandler{}, ReplyPort: c.LocalAddr().(*net.UDPAddr).AddrPort().Port(), MTU: 1500})
	for i, size := range []int{5, 20000} {
		pkts := [][]byte{udpPacket(uint16(3000+i), size)}
		if size > 1400 {
			pkts = fragment(pkts[0], uint32(0x5000+i), 1500)
		}
		for _, pkt := range pkts {
			if _, err := c.WriteToUDPAddrPort(geneve(7, ipv4Sum(pkt)), s.Addr()); err != nil {
				t.Fatal(err)
			}
		}
		p, _ := ParsePacket(udpPacket(uint16(3000+i), size), EtherTypeIPv4)
		k := p.Key(7)
		waitUntil(t, 5*time.Second, fmt.Sprintf("the %d-byte flow marked replied", size), func() (bool, string) {
			// Not the flow itself: printing it would read its atomics.
			f := s.flows.Lookup(&k)
			return f != nil && f.replied.Load(), fmt.Sprintf("flow held %v; drops %v", f != nil, s.Stats().Drops)
		})
	}
}
