package capture

import (
	"net/netip"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// TestPlaintextPortAvoidsTaken: a stream's port is the flipped one unless
// a wire flow holds that 5-tuple, or another open stream does; then the next
// free port of the same half, wrapping within it. A closed stream's port is
// free again.
func TestPlaintextPortAvoidsTaken(t *testing.T) {
	c := queuedCapture(4096)
	wire := map[uint16]bool{7550: true, 0xffff: true}
	flow := func(port uint16) PlaintextFlow {
		f := plainFlow
		f.Client = netip.AddrPortFrom(plainFlow.Client.Addr(), port)
		f.Taken = func(k netstack.FlowKey) bool {
			if k.Proto != 6 || k.ClientAddr != plainFlow.Client.Addr().As16() || k.ServerAddr != plainFlow.Dest.Addr().As16() ||
				k.ServerPort != plainFlow.Dest.Port() || k.Endpoint != epA {
				t.Errorf("asked about %+v", k)
			}
			return wire[k.ClientPort]
		}
		return f
	}
	open := func(port, want uint16) *Stream {
		t.Helper()
		s := c.OpenPlaintext(flow(port))
		if s == nil {
			t.Fatalf("port %d: no stream", port)
		}
		if s.cport != want {
			t.Errorf("port %d: stream from %d, want %d", port, s.cport, want)
		}
		return s
	}
	a := open(40318, 7551)    // 7550 is a wire flow's
	b := open(40319, 7552)    // 7551 is a's
	w := open(0x7fff, 0x8000) // 0xffff taken: wraps within the upper half
	open(7551, 40319).Close() // the other way round: unaffected
	a.Close()
	open(40319, 7551).Close() // a's port is free again
	b.Close()
	w.Close()
	if len(c.ports.m) != 0 {
		t.Errorf("%d tuples still held after every stream closed", len(c.ports.m))
	}
}

// A client that holds every port near the flipped one (a bare ACK from
// each of 32,768 ports makes as many flows) must not hide its bumped
// connections' plaintext from the IDS: the stream is written on the
// flipped port anyway, the collision counted, and the search asks the flow
// table about a bounded number of ports, not the whole half.
func TestPlaintextPortCollidesRatherThanHides(t *testing.T) {
	c := queuedCapture(4096)
	asked := 0
	f := plainFlow
	f.Client = netip.AddrPortFrom(plainFlow.Client.Addr(), 40318)
	f.Taken = func(netstack.FlowKey) bool { asked++; return true }
	s1 := c.OpenPlaintext(f)
	if s1 == nil {
		t.Fatal("no stream when every port tried is a wire flow's: the connection's plaintext is hidden")
	}
	if s1.cport != 40318^PlaintextPortFlip {
		t.Errorf("stream from %d, want the flipped port %d", s1.cport, 40318^PlaintextPortFlip)
	}
	if asked > plainPortTries {
		t.Errorf("the flow table was asked about %d ports, want at most %d", asked, plainPortTries)
	}
	s2 := c.OpenPlaintext(f) // a second connection from the same port, after a reuse
	if s2 == nil || s2.cport != s1.cport {
		t.Fatalf("a second colliding stream: %v", s2)
	}
	if got := c.Stats().Plaintext.Collisions; got != 2 {
		t.Errorf("collisions %d, want 2", got)
	}
	s1.Close()
	if len(c.ports.m) != 1 {
		t.Errorf("%d tuples held with one colliding stream still open, want 1", len(c.ports.m))
	}
	s2.Close()
	if len(c.ports.m) != 0 {
		t.Errorf("%d tuples still held after every stream closed", len(c.ports.m))
	}
}
