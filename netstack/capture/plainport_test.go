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
