package netstack_test

import (
	"errors"
	"net/netip"
	"slices"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// TestReclaimPassesOverConnsTheirClientReset: a connection its client
// has reset, whose handler has not closed it yet (its session winds its
// requests down), is still listed and may still say it holds much
// (AddHeld); the reclaim weighs it as nothing and never takes it, nor
// marks it reclaimed when the client's RST comes between the taking and
// the reset: its handler's records would say the appliance reset it to
// reclaim memory, and memory_reclaimed count a connection the client had
// ended. The hoarding client's connection still connected is taken.
func TestReclaimPassesOverConnsTheirClientReset(t *testing.T) {
	for _, when := range []string{"before the round", "between the taking and the reset"} {
		t.Run(when, func(t *testing.T) {
			r := newConnRig(t)
			other := netip.MustParseAddr("198.18.0.7")
			if err := r.client.Stack.AddProtocolAddress(1, tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber,
				AddressWithPrefix: tcpip.AddrFrom4(other.As4()).WithPrefix()}, stack.AddressProperties{}); err != nil {
				t.Fatalf("adding the other client's address: %s", err)
			}
			for range 40 { // 20 MiB of new buffers
				r.dialFrom(other)
			}
			// The hoarder (connClient): one connection it resets, one it
			// keeps, each holding more than the other client's forty.
			_, cep, gone := r.dialEndpoint()
			kept := r.dialFrom(connClient)
			gone.AddHeld(64 << 20)
			kept.conn.AddHeld(48 << 20)
			n := newNotifier()
			gone.OnReadable(n.fn)
			resetByClient := func() {
				cep.Abort()
				n.wait(t, "the client's RST")
			}
			if when == "before the round" {
				resetByClient()
			}
			before := r.srv.Stats().MemoryReclaimed
			r.srv.ReclaimWith(func(taken []*netstack.Conn) {
				if when == "before the round" && slices.Contains(taken, gone) {
					t.Error("the round took the connection its client had reset")
				}
				if !slices.Contains(taken, kept.conn) {
					t.Errorf("the round took %d connections, not the hoarder's still connected one", len(taken))
				}
				if when != "before the round" {
					resetByClient()
				}
			})
			if !kept.reclaimed(t) {
				t.Error("the hoarder's connection still connected was not reset")
			}
			if _, err := gone.TryRead(make([]byte, 8)); errors.Is(err, netstack.ErrMemoryReclaimed) {
				t.Errorf("the connection its client reset reads as reclaimed: %v", err)
			}
			if got := r.srv.Stats().MemoryReclaimed - before; got != 1 {
				t.Errorf("memory_reclaimed counted %d connections, want 1 (the one still connected)", got)
			}
		})
	}
}
