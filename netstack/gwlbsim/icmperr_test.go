package gwlbsim

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"
)

// TestICMPErrorOwnFlow: a client's ICMP error (port unreachable about a
// datagram of a UDP flow) is hashed by its own header, as the GWLB does
// (design.md): it gets a flow and a cookie of its own, and goes to the
// target that header's hash picks, here another target than the quoted
// flow's, not to the quoted flow's target under its cookie.
func TestICMPErrorOwnFlow(t *testing.T) {
	g := newGroup(t, 231, 4, nil)
	errTo, _, ok := g.sim.Route(testEndpoint, protoICMP, netip.AddrPortFrom(testClient, 0), netip.AddrPortFrom(testDest, 0))
	if !ok {
		t.Fatal("no target for the ICMP error's own tuple")
	}
	// A UDP flow whose target is another one than the error's.
	var other *fakeTarget
	for _, ft := range g.targets {
		if ft.addr() != errTo {
			other = ft
			break
		}
	}
	port := g.portTo(t, other, protoUDP, 40000, 53)
	udpSrc, udpDst := netip.AddrPortFrom(testClient, port), netip.AddrPortFrom(testDest, 53)
	if ft := g.sendFrom(t, protoUDP, udpSrc, udpDst); ft != other {
		t.Fatalf("the UDP flow went to %v, want %s", ft, other.addr())
	}
	udp := other.last(t)

	// ICMP 3/3 from the client to the destination, quoting dest:53 → client:port.
	quoted := ipPacket(protoUDP, udpDst, udpSrc, nil)[:28]
	pkt := make([]byte, 20+8+len(quoted))
	pkt[0] = 0x45
	binary.BigEndian.PutUint16(pkt[2:], uint16(len(pkt)))
	pkt[8], pkt[9] = 64, protoICMP
	s, d := testClient.As4(), testDest.As4()
	copy(pkt[12:], s[:])
	copy(pkt[16:], d[:])
	binary.BigEndian.PutUint16(pkt[10:], ipChecksum(pkt[:20]))
	pkt[20], pkt[21] = 3, 3
	copy(pkt[28:], quoted)
	if err := g.ep.Send(pkt); err != nil {
		t.Fatal(err)
	}

	to := g.byAddr[errTo]
	deadline := time.Now().Add(2 * time.Second)
	for len(to.received()) == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if n := len(other.received()); n != 1 {
		t.Errorf("the UDP flow's target got %d packets, want only the datagram: the error went under the quoted flow", n)
	}
	if len(to.received()) != 1 {
		t.Fatalf("the target of the error's own tuple (%s) got %d packets, want the error", errTo, len(to.received()))
	}
	if got := to.last(t); got.cookie == udp.cookie || string(got.inner) != string(pkt) {
		t.Errorf("the error arrived under cookie %08x (the UDP flow's: %08x), inner %x; want its own cookie and the error as sent", got.cookie, udp.cookie, got.inner)
	}
	var icmp, udpFlow int
	for _, f := range g.sim.Flows() {
		switch {
		case f.Proto == "icmp" && f.Src == netip.AddrPortFrom(testClient, 0) && f.Dst == netip.AddrPortFrom(testDest, 0) && f.Target == errTo:
			icmp++
		case f.Proto == "udp" && f.Src == udpSrc && f.Target == other.addr():
			udpFlow++
		}
	}
	if icmp != 1 || udpFlow != 1 {
		t.Errorf("flows %+v: want the UDP flow on %s and the error's own ICMP flow on %s", g.sim.Flows(), other.addr(), errTo)
	}
}
