package netstack

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Unreachables by family: port unreachable (ICMPv4 3/3, ICMPv6 1/4), and
// one that fails a connection being set up: host unreachable (ICMPv4 3/1),
// no route (ICMPv6 1/0; gVisor passes no other ICMPv6 unreachable on).
var unreachables = []struct {
	name                    string
	client, dest, neighbour netip.Addr
	ether                   uint16
	typ, port, setup        uint8
}{
	{"IPv4", netip.MustParseAddr("198.18.0.5"), netip.MustParseAddr("198.18.9.9"), netip.MustParseAddr("198.18.0.77"), EtherTypeIPv4, 3, 3, 1},
	{"IPv6", netip.MustParseAddr("2001:db8::5"), netip.MustParseAddr("2001:db8::9"), netip.MustParseAddr("2001:db8::77"), EtherTypeIPv6, 1, 4, 0},
}

// udpSum fills in the UDP checksum of the IP packet pkt (no extension
// headers), which IPv6 requires.
func udpSum(pkt []byte) []byte {
	ipLen, addrs := 20, pkt[12:20]
	if pkt[0]>>4 == 6 {
		ipLen, addrs = 40, pkt[8:40]
	}
	udp := pkt[ipLen:]
	udp[6], udp[7] = 0, 0
	sum := checksum.Checksum(addrs, 0)
	sum = checksum.Combine(sum, uint16(protoUDP))
	sum = checksum.Combine(sum, uint16(len(udp)))
	if s := ^checksum.Checksum(udp, sum); s != 0 {
		udp[6], udp[7] = byte(s>>8), byte(s)
	} else {
		udp[6], udp[7] = 0xff, 0xff
	}
	if ipLen == 20 {
		return ipv4Sum(pkt)
	}
	return pkt
}

// readErrHandler reads each UDP flow until its first error, which it
// reports; ready says the flow's connection is open.
type readErrHandler struct {
	testHandler
	ready chan struct{}
	errs  chan error
}

func (h *readErrHandler) HandleUDP(_ FlowInfo, conn net.Conn) {
	defer conn.Close()
	h.ready <- struct{}{}
	buf := make([]byte, 65536)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		if _, err := conn.Read(buf); err != nil {
			h.errs <- err
			return
		}
	}
}

// TestForgedUnreachableEndsNoNeighbourUDP: a port unreachable about a UDP
// flow from anyone but the flow's client is dropped and counted
// (icmp_error_not_from_client). Another client behind the endpoint sent
// one from its own address, quoting dest:port -> victim:port; the flow
// table found the victim's flow by the quoted addresses, gVisor stored
// ECONNREFUSED on its endpoint, and the relay ended the victim's flow as
// if the victim had closed its socket (and recorded it so). The same
// error from the client itself still ends the flow.
func TestForgedUnreachableEndsNoNeighbourUDP(t *testing.T) {
	for _, fam := range unreachables {
		t.Run(fam.name, func(t *testing.T) {
			h := &readErrHandler{ready: make(chan struct{}, 1), errs: make(chan error, 1)}
			s := startServer(t, Config{Handler: h})
			from := netip.MustParseAddrPort("127.0.0.2:40000")
			client, dest := netip.AddrPortFrom(fam.client, 3000), netip.AddrPortFrom(fam.dest, 53)
			s.handleDatagram(append(AppendHeader(nil, fam.ether, 0, 7, 1, 2, nil), udpSum(udpDatagram(client, dest, 10))...), from, nil)
			select {
			case <-h.ready:
			case <-time.After(3 * time.Second):
				t.Fatalf("no UDP flow; drops %v", s.Stats().Drops)
			}
			// The relay's datagram to the client the error claims to be about.
			quoted := udpSum(udpDatagram(dest, client, 8))
			unreachable := func(sender netip.Addr) {
				e := icmpErrorAbout(sender, quoted, fam.typ, fam.port, 0)
				s.handleDatagram(append(AppendHeader(nil, fam.ether, 0, 7, 0xbad, 0xbad, nil), e...), from, nil)
			}

			unreachable(fam.neighbour)
			select {
			case err := <-h.errs:
				t.Fatalf("the flow's read failed with %v after another client's port unreachable", err)
			case <-time.After(500 * time.Millisecond):
			}
			if d := s.Stats().Drops; d["icmp_error_not_from_client"] != 1 || d["icmp_error_without_flow"] != 0 {
				t.Fatalf("drops %v, want icmp_error_not_from_client 1", d)
			}

			unreachable(fam.client)
			select {
			case err := <-h.errs:
				if !errors.Is(err, syscall.ECONNREFUSED) {
					t.Fatalf("after the client's own port unreachable the read failed with %v, want ECONNREFUSED", err)
				}
			case <-time.After(3 * time.Second):
				t.Fatal("the client's own port unreachable did not end the flow")
			}
		})
	}
}

// TestForgedUnreachableFailsNoNeighbourHandshake: an unreachable about a
// connection being set up, from anyone but its client, is dropped
// (icmp_error_not_from_client). gVisor moves an endpoint in SYN-RCVD to
// its error state on a host, network or port unreachable, checking no
// sequence number, so another client could fail any neighbour's
// connections as they open: the client's ACK and data then found no
// connection. The same error from the client itself still fails the
// handshake.
func TestForgedUnreachableFailsNoNeighbourHandshake(t *testing.T) {
	for _, fam := range unreachables {
		for _, sender := range []netip.Addr{fam.neighbour, fam.client} {
			forged := sender != fam.client
			t.Run(fmt.Sprintf("%s/from-%s", fam.name, sender), func(t *testing.T) {
				h := &AcceptHandler{Conns: make(chan *Conn, 1)}
				gwlb := gwlbSocket(t, "127.0.0.2:0")
				s := startServer(t, Config{Handler: h, ReplyPort: gwlb.LocalAddr().(*net.UDPAddr).AddrPort().Port()})
				from := netip.MustParseAddrPort("127.0.0.2:47001")
				client, dest := netip.AddrPortFrom(fam.client, 40000), netip.AddrPortFrom(fam.dest, 443)
				in := func(pkt []byte, cookie uint32) {
					s.handleDatagram(append(AppendHeader(nil, fam.ether, 0, 7, uint64(cookie), cookie, nil), pkt...), from, nil)
				}
				in(clientSegment(client, dest, 1000, 0, header.TCPFlagSyn, nil), 9)
				ack := readReplySegment(t, gwlb, header.TCPFlagSyn|header.TCPFlagAck).SequenceNumber() + 1
				// About the SYN-ACK; the sender does not know its sequence number.
				quoted := clientSegment(dest, client, 0, 0, header.TCPFlagSyn|header.TCPFlagAck, nil)
				in(icmpErrorAbout(sender, quoted, fam.typ, fam.setup, 0), 0xbad)
				in(clientSegment(client, dest, 1001, ack, header.TCPFlagAck, nil), 9)
				in(clientSegment(client, dest, 1001, ack, header.TCPFlagAck|header.TCPFlagPsh, []byte("hello")), 9)

				var got []byte
				var err error
				select {
				case c := <-h.Conns:
					defer c.Abort()
					got = make([]byte, 5)
					c.SetReadDeadline(time.Now().Add(2 * time.Second))
					_, err = io.ReadFull(c, got)
				case <-time.After(2 * time.Second):
					err = errors.New("no connection accepted")
				}
				d := s.Stats().Drops
				if forged && (err != nil || string(got) != "hello" || d["icmp_error_not_from_client"] != 1) {
					t.Fatalf("after another client's unreachable: read %q, %v; drops %v", got, err, d)
				}
				if !forged && (err == nil || d["icmp_error_not_from_client"] != 0) {
					t.Fatalf("after the client's own unreachable the connection read %q, want an error; drops %v", got, d)
				}
			})
		}
	}
}

// TestForgedICMPErrorDropsAllocateNothing: dropping a forged ICMP error
// about a flow the table holds, for its sender or its MTU, allocates
// nothing: a client can send them as fast as it likes.
func TestForgedICMPErrorDropsAllocateNothing(t *testing.T) {
	fam := unreachables[0]
	s := startServer(t, Config{})
	from := netip.MustParseAddrPort("127.0.0.2:40000")
	client, dest := netip.AddrPortFrom(fam.client, 3000), netip.AddrPortFrom(fam.dest, 53)
	s.handleDatagram(append(AppendHeader(nil, fam.ether, 0, 7, 1, 2, nil), udpSum(udpDatagram(client, dest, 10))...), from, nil)
	quoted := udpSum(udpDatagram(dest, client, 8))
	for _, e := range [][]byte{
		icmpErrorAbout(fam.neighbour, quoted, fam.typ, fam.port, 0),
		pathMTUError(fam.neighbour, quoted, 0),
	} {
		d := append(AppendHeader(nil, fam.ether, 0, 7, 0xbad, 0xbad, nil), e...)
		if a := testing.AllocsPerRun(100, func() { s.handleDatagram(d, from, nil) }); a != 0 {
			t.Errorf("%.1f allocations a dropped error", a)
		}
	}
	if d := s.Stats().Drops; d["icmp_error_not_from_client"] != 101 || d["icmp_mtu_too_small"] != 101 {
		t.Fatalf("drops %v, want 101 of each (AllocsPerRun runs once more)", d)
	}
}
