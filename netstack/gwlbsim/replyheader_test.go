package gwlbsim

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// TestExtraOptionsSentAndRequiredBack holds that the simulator sends its
// extra (unknown) GENEVE options to the target and refuses a reply that
// leaves them out. The appliance's rule "unknown options are kept and
// echoed" is tested end to end only through these options: if the
// simulator dropped them, an appliance that strips unknown options would
// pass.
func TestExtraOptionsSentAndRequiredBack(t *testing.T) {
	extra := []byte{0x01, 0x02, 0x7f, 0x01, 0xde, 0xad, 0xbe, 0xef}
	g := newGroup(t, 180, 1, func(c *Config, _ int) { c.ExtraOptions = extra })
	a := g.targets[0]
	if g.send(t, protoUDP, 40000, 53) != a {
		t.Fatal("the packet did not reach the target")
	}
	r := a.last(t)
	if !bytes.HasSuffix(r.header, extra) {
		t.Fatalf("header %x sent without the extra options %x", r.header, extra)
	}
	h, why := netstack.ParseHeader(append(append([]byte(nil), r.header...), 0x45))
	if why != netstack.DropNone {
		t.Fatalf("parsing the header the target got: %v", why)
	}
	stripped := netstack.AppendHeader(nil, netstack.EtherTypeIPv4, h.VNI, h.Endpoint, h.Attachment, h.FlowCookie, nil)
	a.send(r.from.Port(), stripped, reflectPacket(r.inner))
	g.waitStats(t, "a reply without the extra options refused", func(s Stats) bool { return s.HeaderMismatch == 1 })
	if st := g.sim.Stats(); st.Received != 0 {
		t.Fatalf("stats %+v: a reply without the extra options was delivered", st)
	}
}

// TestReplyUnderAnotherVNIRefused holds that the VNI is part of the
// byte-for-byte header compare: a reply must carry the flow's header
// unchanged (design.md), so an appliance that rewrites the VNI must be
// caught here rather than by a real GWLB dropping its replies.
func TestReplyUnderAnotherVNIRefused(t *testing.T) {
	g := newGroup(t, 181, 1, nil)
	a := g.targets[0]
	if g.send(t, protoUDP, 40000, 53) != a {
		t.Fatal("the packet did not reach the target")
	}
	r := a.last(t)
	bad := append([]byte(nil), r.header...)
	bad[4] ^= 0x01 // the VNI's high byte
	a.send(r.from.Port(), bad, reflectPacket(r.inner))
	g.waitStats(t, "a reply under another VNI refused", func(s Stats) bool { return s.HeaderMismatch == 1 })
	if st := g.sim.Stats(); st.Received != 0 {
		t.Fatalf("stats %+v: a reply under another VNI was delivered", st)
	}
}

// TestReplyToASenderPortCounted holds that a datagram sent to one of the
// simulator's sender ports instead of 6081 is counted as wrong_port. The
// end-to-end tests assert wrong_port == 0 to catch an appliance that
// answers a GWLB's source port; that assertion is only worth something if
// the counter moves.
func TestReplyToASenderPortCounted(t *testing.T) {
	g := newGroup(t, 182, 1, nil)
	a := g.targets[0]
	if g.send(t, protoUDP, 40000, 53) != a {
		t.Fatal("the packet did not reach the target")
	}
	r := a.last(t)
	// To the sender port the flow came from, from the target's GENEVE socket.
	if _, err := a.conn.WriteToUDPAddrPort(dgram(r.header, reflectPacket(r.inner)), r.from); err != nil {
		t.Fatalf("sending to the sender port %s: %v", r.from, err)
	}
	g.waitStats(t, "a reply to a sender port counted", func(s Stats) bool { return s.WrongPort == 1 })
}

// TestWholeReplyOfNoFlowRefused holds that an unfragmented reply is tied
// to the flow of its own 5-tuple only: one whose ports name no flow is
// unknown even under the header of a live flow between the same
// addresses. Otherwise an appliance answering on the wrong client port
// would pass.
func TestWholeReplyOfNoFlowRefused(t *testing.T) {
	g := newGroup(t, 190, 1, nil)
	a := g.targets[0]
	if g.send(t, protoUDP, 40000, 53) != a {
		t.Fatal("the flow's packet did not reach its target")
	}
	r := a.last(t)
	// The reply to port 40001: no flow from there.
	other := ipPacket(protoUDP, netip.AddrPortFrom(testDest, 53), netip.AddrPortFrom(testClient, 40001), []byte("x"))
	a.send(r.from.Port(), r.header, other)
	g.waitStats(t, "a reply of no flow refused", func(s Stats) bool { return s.UnknownFlow == 1 })
	if st := g.sim.Stats(); st.Received != 0 {
		t.Fatalf("stats %+v: a reply of no flow was delivered under another flow's header", st)
	}
}

// TestConfiguredVNISent holds that the flows' headers carry the configured
// VNI and that a reply must carry it back: a reply written under VNI 0 is
// refused, the echoed header delivered. With every flow under VNI 0, an
// appliance that writes 0 instead of echoing the VNI would pass every test.
func TestConfiguredVNISent(t *testing.T) {
	const vni = 0xabcdef
	g := newGroup(t, 191, 1, func(c *Config, _ int) { c.VNI = vni })
	a := g.targets[0]
	if g.send(t, protoUDP, 40000, 53) != a {
		t.Fatal("the packet did not reach the target")
	}
	r := a.last(t)
	h, why := netstack.ParseHeader(append(append([]byte(nil), r.header...), 0x45))
	if why != netstack.DropNone {
		t.Fatalf("parsing the header the target got: %v", why)
	}
	if h.VNI != vni {
		t.Fatalf("header sent with VNI %#x, want %#x", h.VNI, vni)
	}
	zero := netstack.AppendHeader(nil, netstack.EtherTypeIPv4, 0, h.Endpoint, h.Attachment, h.FlowCookie, nil)
	a.send(r.from.Port(), zero, reflectPacket(r.inner))
	g.waitStats(t, "a reply under VNI 0 refused", func(s Stats) bool { return s.HeaderMismatch == 1 })
	a.send(r.from.Port(), r.header, reflectPacket(r.inner))
	g.waitStats(t, "the reply under the echoed header delivered", func(s Stats) bool { return s.Received == 1 })
}
