package netstack

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// TestSynsPastMaxInFlightCounted: SYNs from many clients, each under its
// share of the slots for connections being set up (so none is refused with
// a RST, tcp_setups_refused), fill a stack's MaxInFlight slots while their
// dials are held; gVisor's forwarder drops every further SYN before the
// handler sees it. Those drops are counted (tcp_setups_full), for every
// endpoint's stack, and the count outlives the stacks: it was gVisor's
// per-stack ForwardMaxInFlightDrop alone, never exported, so new
// connections hung while every counter looked normal.
func TestSynsPastMaxInFlightCounted(t *testing.T) {
	const (
		inFlight = 16
		clients  = 40
	)
	c := gwlbSocket(t, "127.0.0.1:0")
	h := &holdingHandler{got: make(chan netip.AddrPort, 128), release: make(chan struct{})}
	released := false
	release := func() {
		if !released {
			released = true
			close(h.release)
		}
	}
	t.Cleanup(release)
	s := startServer(t, Config{Handler: h, TCP: TCPOptions{MaxInFlight: inFlight},
		IdleTimeout: time.Second, TCPIdleTimeout: time.Second, EndpointIdleTimeout: 200 * time.Millisecond,
		ReplyPort: c.LocalAddr().(*net.UDPAddr).AddrPort().Port()})
	for _, endpoint := range []uint64{1, 2} {
		for i := range clients {
			src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 1, byte(i + 1)}), 40000)
			syn := clientSegment(src, netip.AddrPortFrom(testDest, 443), 1000, 0, header.TCPFlagSyn, nil)
			if _, err := c.WriteToUDPAddrPort(geneve(endpoint, syn), s.Addr()); err != nil {
				t.Fatal(err)
			}
		}
	}
	const full = 2 * (clients - inFlight)
	waitUntil(t, 5*time.Second, "every SYN offered to the handler or counted", func() (bool, string) {
		st := s.Stats()
		return len(h.got) == 2*inFlight && st.Drops["tcp_setups_full"] == full,
			fmt.Sprintf("%d offered to the handler, %d tcp_setups_refused, drops %v", len(h.got), st.TCPSetupsRefused, nonzeroDrops(st.Drops))
	})
	if st := s.Stats(); st.TCPConnections != 2*inFlight || st.TCPSetupsRefused != 0 {
		t.Errorf("tcp_connection_attempts %d, tcp_setups_refused %d; want %d and 0", st.TCPConnections, st.TCPSetupsRefused, 2*inFlight)
	}
	// Once the attempts end and the flows expire, the stacks close; what
	// they dropped stays counted.
	release()
	waitUntil(t, 10*time.Second, "both stacks closed", func() (bool, string) {
		st := s.Stats()
		return st.Stacks == 0 && st.StacksClosed == 2, fmt.Sprintf("%d stacks open, %d closed, %d flows", st.Stacks, st.StacksClosed, st.Flows)
	})
	if n := s.Stats().Drops["tcp_setups_full"]; n != full {
		t.Errorf("tcp_setups_full %d once the stacks closed, want %d", n, full)
	}
}
