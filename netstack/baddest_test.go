package netstack

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// destTap records the destinations of the client packets the server shows
// its Tap.
type destTap struct {
	mu    sync.Mutex
	dests []netip.Addr
}

func (d *destTap) Packet(_ uint64, _ uint32, out bool, _ int64, p Packet, _ []byte) {
	if !out {
		d.mu.Lock()
		d.dests = append(d.dests, p.DstAddr())
		d.mu.Unlock()
	}
}

func (d *destTap) seen() []netip.Addr {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]netip.Addr(nil), d.dests...)
}

// badDestPackets are a client's SYN and UDP datagram to each destination
// the stack never delivers to (only the SYN to an unspecified one: UDP to
// it reaches the handler), keyed by what they are.
func badDestPackets() map[string][]byte {
	v4, v6 := netip.AddrPortFrom(testClient, 40000), netip.MustParseAddrPort("[2001:db8::5]:40000")
	pkts := map[string][]byte{}
	for i, d := range []string{"224.0.0.1", "224.0.0.251", "239.255.255.250", "255.255.255.255", "127.0.0.1", "127.0.0.53", "127.255.255.255", "0.0.0.0",
		"ff02::1", "ff0e::1234", "ff05::1:3", "::1", "::"} {
		dst := netip.MustParseAddr(d)
		src := clientFor(dst, v4, v6, i)
		pkts["SYN to "+d] = clientSegment(src, netip.AddrPortFrom(dst, 443), 1000, 0, header.TCPFlagSyn, nil)
		if !dst.IsUnspecified() {
			pkts["UDP to "+d] = innerPacket(src, netip.AddrPortFrom(dst, 53), protoUDP, 16)
		}
	}
	return pkts
}

// clientFor returns v4 or v6, whichever is of dst's family, its port moved
// up by i: each destination's packets come from a client port of their own.
func clientFor(dst netip.Addr, v4, v6 netip.AddrPort, i int) netip.AddrPort {
	src := v4
	if dst.Is6() {
		src = v6
	}
	return netip.AddrPortFrom(src.Addr(), src.Port()+uint16(i))
}

func sendInner(t *testing.T, c *net.UDPConn, s *Server, inner []byte) {
	t.Helper()
	et := uint16(EtherTypeIPv4)
	if inner[0]>>4 == 6 {
		et = EtherTypeIPv6
	}
	if _, err := c.WriteToUDPAddrPort(append(AppendHeader(nil, et, 0, 7, 0xa77ac4, 0xc00c1e, nil), inner...), s.Addr()); err != nil {
		t.Fatal(err)
	}
}

// TestUndeliverableDestinationsDropped: a client's TCP SYN or UDP datagram
// to a multicast, limited broadcast or loopback destination, or a SYN to an
// unspecified one, is dropped and counted (inner_bad_destination) before it
// makes a flow or reaches the tap. gVisor drops every one of them before
// the handler, so the proxy never refused or recorded them; they made a
// flow charged to their client, reached the IDS feed, and were counted
// nowhere (UDP to a broadcast or multicast group the stack joined only in
// an unexported counter).
func TestUndeliverableDestinationsDropped(t *testing.T) {
	c := gwlbSocket(t, "127.0.0.1:0")
	h := &countingHandler{}
	tap := &destTap{}
	s := startServer(t, Config{Handler: h, Tap: tap, ReplyPort: c.LocalAddr().(*net.UDPAddr).AddrPort().Port()})
	bad := badDestPackets()
	for _, pkt := range bad {
		sendInner(t, c, s, pkt)
	}
	// A plain echo request after them: once it is at the handler, the bad
	// ones have been read.
	sendInner(t, c, s, echoPacket(1, "ping"))
	waitUntil(t, 5*time.Second, "the plain echo request at the handler", func() (bool, string) {
		return h.echo.Load() >= 1, fmt.Sprintf("%d echo requests", h.echo.Load())
	})
	time.Sleep(200 * time.Millisecond)
	st := s.Stats()
	if got := st.Drops["inner_bad_destination"]; got != uint64(len(bad)) {
		t.Errorf("inner_bad_destination %d, want %d (drops %v)", got, len(bad), nonzeroDrops(st.Drops))
	}
	if st.FlowsCreated != 1 || st.Flows != 1 {
		t.Errorf("%d flows created, %d held; want the plain echo request's alone", st.FlowsCreated, st.Flows)
	}
	if tcp, udp := h.tcp.Load(), h.udp.Load(); tcp != 0 || udp != 0 {
		t.Errorf("the handler got %d TCP and %d UDP requests, want none", tcp, udp)
	}
	if seen := tap.seen(); len(seen) != 1 || seen[0] != testDest {
		t.Errorf("the tap was shown client packets to %v, want the plain echo request's alone (to %s)", seen, testDest)
	}
}

// TestDeliverableDestinationsPass: what the stack does deliver to the
// handler is not dropped for its destination: unicast ones at the edges of
// the refused ranges, UDP to an unspecified destination (the proxy refuses
// and records it), a SYN to 0.0.0.0/8 but 0.0.0.0, echo to a multicast
// destination (the echo relay's, which the proxy refuses), and loopback
// with AllowLoopback (tests).
func TestDeliverableDestinationsPass(t *testing.T) {
	c := gwlbSocket(t, "127.0.0.1:0")
	h := &countingHandler{}
	s := startServer(t, Config{Handler: h, AllowLoopback: true, ReplyPort: c.LocalAddr().(*net.UDPAddr).AddrPort().Port()})
	v4, v6 := netip.AddrPortFrom(testClient, 41000), netip.MustParseAddrPort("[2001:db8::5]:41000")
	var tcp, udp int
	for i, d := range []string{"223.255.255.255", "240.0.0.1", "255.255.255.254", "126.255.255.255", "128.0.0.0", "0.1.2.3", "127.0.0.1",
		"fe80::1", "feff::1", "2001:db8:9::9", "::1", "::2"} {
		dst := netip.MustParseAddr(d)
		src := clientFor(dst, v4, v6, i)
		sendInner(t, c, s, clientSegment(src, netip.AddrPortFrom(dst, 443), 1000, 0, header.TCPFlagSyn, nil))
		sendInner(t, c, s, innerPacket(src, netip.AddrPortFrom(dst, 53), protoUDP, 16))
		tcp++
		udp++
	}
	for _, d := range []string{"0.0.0.0", "::"} {
		dst := netip.MustParseAddr(d)
		src := clientFor(dst, v4, v6, 0)
		sendInner(t, c, s, innerPacket(netip.AddrPortFrom(src.Addr(), 42000), netip.AddrPortFrom(dst, 53), protoUDP, 16))
		udp++
	}
	sendInner(t, c, s, echo4Packet(testClient, netip.MustParseAddr("224.0.0.1"), 9, "ping"))
	sendInner(t, c, s, echo6Packet(v6.Addr(), netip.MustParseAddr("ff02::1"), 9, "ping"))
	waitUntil(t, 5*time.Second, "every packet at the handler", func() (bool, string) {
		return h.tcp.Load() == int64(tcp) && h.udp.Load() == int64(udp) && h.echo.Load() == 2,
			fmt.Sprintf("%d TCP, %d UDP, %d echo requests of %d, %d, 2; drops %v", h.tcp.Load(), h.udp.Load(), h.echo.Load(), tcp, udp, nonzeroDrops(s.Stats().Drops))
	})
	if n := s.Stats().Drops["inner_bad_destination"]; n != 0 {
		t.Errorf("inner_bad_destination %d, want 0", n)
	}
}

// TestUndeliverableDestinationFragments: the first fragment of a UDP
// datagram to a multicast destination is dropped for its destination, and
// its later fragment follows it out as one whose first was not taken in.
// An ICMP error quoting a packet to such a destination is not judged by
// the quoted destination: it makes no flow anyway.
func TestUndeliverableDestinationFragments(t *testing.T) {
	src, dst := netip.AddrPortFrom(testClient, 5000), netip.MustParseAddrPort("239.1.2.3:53")
	whole := innerPacket(src, dst, protoUDP, 64)
	first, later := fragmentIPv4(whole, 7, 40)
	p, r := ParsePacket(first, EtherTypeIPv4)
	if r != DropNone || !p.MoreFragments || !undeliverableDest(&p, false) {
		t.Errorf("first fragment: parsed as %s, more fragments %v, undeliverable %v; want undeliverable", r, p.MoreFragments, undeliverableDest(&p, false))
	}
	p, r = ParsePacket(later, EtherTypeIPv4)
	if r != DropNone || !p.Fragment || undeliverableDest(&p, false) {
		t.Errorf("later fragment: parsed as %s, fragment %v, undeliverable %v; want it left to follow its first", r, p.Fragment, undeliverableDest(&p, false))
	}
	c := gwlbSocket(t, "127.0.0.1:0")
	h := &countingHandler{}
	s := startServer(t, Config{Handler: h, ReplyPort: c.LocalAddr().(*net.UDPAddr).AddrPort().Port()})
	sendInner(t, c, s, first)
	sendInner(t, c, s, later)
	sendInner(t, c, s, echoPacket(1, "ping"))
	waitUntil(t, 5*time.Second, "the plain echo request at the handler", func() (bool, string) {
		return h.echo.Load() >= 1, fmt.Sprintf("%d echo requests", h.echo.Load())
	})
	if d := s.Stats().Drops; d["inner_bad_destination"] != 1 || d["fragment_without_flow"] != 1 {
		t.Errorf("drops %v, want inner_bad_destination 1 and fragment_without_flow 1", nonzeroDrops(d))
	}
}

// fragmentIPv4 cuts the IPv4 packet pkt (no options) into a first fragment
// carrying n bytes of its payload (a multiple of 8) and a later one
// carrying the rest, both with identification id.
func fragmentIPv4(pkt []byte, id uint16, n int) (first, later []byte) {
	payload := pkt[header.IPv4MinimumSize:]
	mk := func(off int, data []byte, more bool) []byte {
		f := make([]byte, header.IPv4MinimumSize+len(data))
		copy(f, pkt[:header.IPv4MinimumSize])
		ip := header.IPv4(f)
		flags := uint8(0)
		if more {
			flags = header.IPv4FlagMoreFragments
		}
		ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(f)), ID: id, Flags: flags, FragmentOffset: uint16(off), TTL: 64,
			Protocol: ip.Protocol(), SrcAddr: ip.SourceAddress(), DstAddr: ip.DestinationAddress()})
		ip.SetChecksum(0)
		ip.SetChecksum(^ip.CalculateChecksum())
		copy(f[header.IPv4MinimumSize:], data)
		return f
	}
	return mk(0, payload[:n], true), mk(n, payload[n:], false)
}

// TestUndeliverableDestinationLogged: packets dropped for their destination
// are logged, naming the latest's client and destination, once a minute at
// most: no access record is written for them, so the log says who sends
// them.
func TestUndeliverableDestinationLogged(t *testing.T) {
	var buf syncBuffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&buf, nil)))
	t.Cleanup(func() { slog.SetDefault(old) })
	c := gwlbSocket(t, "127.0.0.1:0")
	h := &countingHandler{}
	s := startServer(t, Config{Handler: h, ReplyPort: c.LocalAddr().(*net.UDPAddr).AddrPort().Port()})
	for i := range 5 {
		sendInner(t, c, s, clientSegment(netip.AddrPortFrom(testClient, uint16(43000+i)), netip.MustParseAddrPort("127.0.0.1:22"), 1, 0, header.TCPFlagSyn, nil))
	}
	sendInner(t, c, s, echoPacket(1, "ping"))
	waitUntil(t, 5*time.Second, "the plain echo request at the handler", func() (bool, string) {
		return h.echo.Load() >= 1, fmt.Sprintf("%d echo requests", h.echo.Load())
	})
	var lines []string
	for _, l := range strings.Split(buf.String(), "\n") {
		if strings.Contains(l, "inner_bad_destination") {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 || !strings.Contains(lines[0], "client=198.18.0.5:43000") || !strings.Contains(lines[0], "dest=127.0.0.1:22") ||
		!strings.Contains(lines[0], "protocol=tcp") || !strings.Contains(lines[0], "dropped=1") {
		t.Errorf("logged %q, want one line naming the first SYN's client and destination", lines)
	}
}

// syncBuffer is a bytes.Buffer that several goroutines may write.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func nonzeroDrops(m map[string]uint64) map[string]uint64 {
	r := map[string]uint64{}
	for k, v := range m {
		if v != 0 {
			r[k] = v
		}
	}
	return r
}

// TestUDPCreateFailureCounted: a datagram of a new UDP flow for which the
// stack can make no endpoint is dropped and counted (udp_create_failed),
// where before it moved only a counter /stats and /metrics never showed.
// Datagrams to a broadcast destination were such, before the server
// dropped them for their destination; one handed to the stack directly
// still is, as a flow's first datagram whose 4-tuple another reader's took
// at the same moment would be.
func TestUDPCreateFailureCounted(t *testing.T) {
	s := startServer(t, Config{Handler: &countingHandler{}})
	st, reason := s.enterStack(7, true, DropNone)
	if st == nil {
		t.Fatalf("no stack: %s", reason)
	}
	st.link.inject(innerPacket(netip.AddrPortFrom(testClient, 5000), netip.MustParseAddrPort("255.255.255.255:67"), protoUDP, 16), false)
	st.mu.RUnlock()
	if got := s.Stats(); got.Drops["udp_create_failed"] != 1 || got.UDPFlows != 0 {
		t.Errorf("udp_create_failed %d, udp_flows %d; want 1 and 0", got.Drops["udp_create_failed"], got.UDPFlows)
	}
}
