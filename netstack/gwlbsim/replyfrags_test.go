package gwlbsim

import (
	"net/netip"
	"testing"
	"time"
)

// TestReplyFragmentKeyIsTheWholeDatagramID holds that a later reply
// fragment is tied to a first fragment's flow only if it is of the same
// datagram (RFC 791: source, destination, protocol and identification).
// A later fragment with the same ID from another source, or of another
// protocol, is another datagram and may not ride on the first's flow.
func TestReplyFragmentKeyIsTheWholeDatagramID(t *testing.T) {
	g := newGroup(t, 187, 1, nil)
	a := g.targets[0]
	if g.send(t, protoUDP, 40000, 53) != a {
		t.Fatal("the flow's packet did not reach its target")
	}
	r := a.last(t)
	a.send(r.from.Port(), r.header, firstFragment(reflectPacket(r.inner), 0x5151))
	g.waitStats(t, "the first fragment accepted", func(s Stats) bool { return s.Received == 1 })

	// Same ID, same destination (the client), another source: no flow of
	// the client with that source exists, so it names none.
	other := netip.MustParseAddr("198.18.2.99")
	a.send(r.from.Port(), r.header, laterFragment(other, testClient, protoUDP, 0x5151))
	g.waitStats(t, "a later fragment from another source refused", func(s Stats) bool { return s.UnknownFlow == 1 })
	// Same ID and addresses, another protocol (TCP): the flow is UDP's.
	a.send(r.from.Port(), r.header, laterFragment(testDest, testClient, protoTCP, 0x5151))
	g.waitStats(t, "a later fragment of another protocol refused", func(s Stats) bool { return s.UnknownFlow == 2 })
	if st := g.sim.Stats(); st.Received != 1 {
		t.Fatalf("stats %+v: a later fragment of another datagram was delivered", st)
	}
}

// TestOrphanReplyFragmentHeldToItsProtocol holds that a later fragment
// whose first was not seen is claimed only by a flow of its own protocol:
// a UDP fragment under a TCP flow's header is refused, not delivered as
// part of the TCP flow.
func TestOrphanReplyFragmentHeldToItsProtocol(t *testing.T) {
	g := newGroup(t, 188, 1, nil)
	a := g.targets[0]
	if g.send(t, protoTCP, 40000, 80) != a {
		t.Fatal("the flow's packet did not reach its target")
	}
	r := a.last(t)
	a.send(r.from.Port(), r.header, laterFragment(testDest, testClient, protoUDP, 0x6161))
	g.waitStats(t, "an orphan UDP fragment under a TCP flow's header refused", func(s Stats) bool { return s.UnknownFlow == 1 })
	if st := g.sim.Stats(); st.Received != 0 {
		t.Fatalf("stats %+v: an orphan UDP fragment was delivered under a TCP flow", st)
	}
}

// TestReplyFragmentOfForgottenFlowRefused holds that a later fragment
// whose first was accepted is refused once its flow was forgotten (idle
// timeout) and a new flow, under a new cookie, took the same tuple: the
// old header is no longer any flow's, as with a real GWLB.
func TestReplyFragmentOfForgottenFlowRefused(t *testing.T) {
	// One sender, so the port cannot tell the old flow from the new one:
	// the header alone must decide.
	g := newGroup(t, 189, 1, func(c *Config, _ int) { c.IdleTimeout = 100 * time.Millisecond; c.Senders = 1 })
	a := g.targets[0]
	if g.send(t, protoUDP, 40000, 53) != a {
		t.Fatal("the flow's packet did not reach its target")
	}
	r := a.last(t)
	a.send(r.from.Port(), r.header, firstFragment(reflectPacket(r.inner), 0x7171))
	g.waitStats(t, "the first fragment accepted", func(s Stats) bool { return s.Received == 1 })
	g.waitStats(t, "the flow forgotten", func(s Stats) bool { return s.FlowsExpired == 1 })
	if g.send(t, protoUDP, 40000, 53) != a {
		t.Fatal("the new flow's packet did not reach its target")
	}
	if nr := a.last(t); nr.cookie == r.cookie {
		t.Skip("the new flow drew the old cookie")
	}
	a.send(r.from.Port(), r.header, laterFragment(testDest, testClient, protoUDP, 0x7171))
	g.waitStats(t, "the old flow's later fragment refused", func(s Stats) bool { return s.HeaderMismatch+s.UnknownFlow == 1 })
	if st := g.sim.Stats(); st.Received != 1 {
		t.Fatalf("stats %+v: the old flow's later fragment was delivered", st)
	}
}
