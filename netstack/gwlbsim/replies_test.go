package gwlbsim

import (
	"net"
	"net/netip"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// sendDatagram sends b to to from a socket bound to from.
func sendDatagram(t *testing.T, from, to netip.AddrPort, b []byte) {
	t.Helper()
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(from))
	if err != nil {
		t.Fatalf("binding %s: %v", from, err)
	}
	defer c.Close()
	if _, err := c.WriteToUDPAddrPort(b, to); err != nil {
		t.Fatalf("sending from %s: %v", from, err)
	}
}

// TestRepliesFromTheSimulatorsOwnAddress: a target on the simulator's own
// address cannot bind the ports the simulator sends from (its sockets hold
// them), so the appliance's bound return path falls back to its GENEVE
// port: from such a target that port is accepted too, and any other still
// counts as a wrong source port.
func TestRepliesFromTheSimulatorsOwnAddress(t *testing.T) {
	simAddr, _ := testNet(116)
	simAP := netip.AddrPortFrom(simAddr, netstack.GenevePort)
	ft := newFakeTarget(t, simAddr, simAP)
	sim, err := New(Config{Addr: simAddr, Targets: []netip.AddrPort{ft.addr()}, Senders: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	g := &group{sim: sim, ep: sim.Endpoint(testEndpoint, testAttachment), targets: []*fakeTarget{ft}}
	g.ep.SetReceiver(func([]byte) {})
	if g.send(t, protoUDP, 40000, 53) != ft {
		t.Fatal("the packet did not reach the target")
	}
	r := ft.last(t)
	if c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(simAddr, r.from.Port()))); err == nil {
		c.Close()
		t.Fatalf("port %d, the flow's, could be bound on the simulator's address", r.from.Port())
	}
	ft.send(0, r.header, reflectPacket(r.inner)) // from the target's GENEVE port
	g.waitStats(t, "the reply from the target's GENEVE port", func(s Stats) bool { return s.Received == 1 })
	sendDatagram(t, netip.AddrPortFrom(simAddr, 0), simAP, append(append([]byte(nil), r.header...), reflectPacket(r.inner)...))
	g.waitStats(t, "a reply from a third port refused", func(s Stats) bool { return s.WrongSourcePort == 1 })
	if st := sim.Stats(); st.Received != 1 {
		t.Errorf("stats %+v: want the one reply from the GENEVE port delivered", st)
	}
}
