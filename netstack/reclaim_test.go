package netstack_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// reclaimPair is both ends of one connection.
type reclaimPair struct {
	cc   *gonet.TCPConn
	conn *netstack.Conn
}

// reclaimed reports whether the server's end was reset to reclaim memory,
// failing the test on any other error.
func (p reclaimPair) reclaimed(t *testing.T) bool {
	t.Helper()
	_, err := p.conn.TryRead(make([]byte, 16))
	switch {
	case errors.Is(err, netstack.ErrWouldBlock):
		return false
	case errors.Is(err, netstack.ErrMemoryReclaimed):
		return true
	}
	t.Fatalf("reading the server's end: %v", err)
	return false
}

// TestReclaimAtCriticalMemory: while memory is critical, the connections
// of the client holding the most are reset, newest first, down to the
// share critical memory still admits new flows to; a client within it is
// untouched, and nothing is reset once the level leaves critical.
func TestReclaimAtCriticalMemory(t *testing.T) {
	r := newConnRig(t)
	light := netip.MustParseAddr("198.18.0.6") // the same endpoint, another client
	if err := r.client.Stack.AddProtocolAddress(1, tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddrFrom4(light.As4()).WithPrefix()}, stack.AddressProperties{}); err != nil {
		t.Fatalf("adding the light client's address: %s", err)
	}
	dial := func(from netip.Addr) reclaimPair {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		cc, err := r.client.DialTCPFrom(ctx, netip.AddrPortFrom(from, 0), connDest)
		if err != nil {
			t.Fatalf("dialing from %s: %v", from, err)
		}
		t.Cleanup(func() { cc.Close() })
		return reclaimPair{cc, r.accepted()}
	}
	const heavyN, lightN, share = 40, 5, netstack.CriticalMemoryClientFlows
	var heavy, lights []reclaimPair
	for range heavyN {
		heavy = append(heavy, dial(connClient))
	}
	for range lightN {
		lights = append(lights, dial(light))
	}

	r.srv.SetMemoryPressure(netstack.MemoryCritical)
	deadline := time.Now().Add(waitFor)
	for r.srv.Stats().MemoryReclaimed < heavyN-share && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(time.Second) // four more rounds: none may take more
	if got := r.srv.Stats().MemoryReclaimed; got != heavyN-share {
		t.Fatalf("memory_reclaimed %d, want %d (the heavy client's %d less the share of %d)", got, heavyN-share, heavyN, share)
	}
	for i, p := range heavy {
		if want := i >= share; p.reclaimed(t) != want {
			t.Errorf("heavy client's connection %d (oldest first): reclaimed %v, want %v (newest first)", i, !want, want)
		}
	}
	for i, p := range lights {
		if p.reclaimed(t) {
			t.Errorf("light client's connection %d was reset", i)
		}
	}
	// The client gets a RST.
	heavy[heavyN-1].cc.SetReadDeadline(time.Now().Add(waitFor))
	if _, err := heavy[heavyN-1].cc.Read(make([]byte, 1)); err == nil || errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		t.Errorf("the client's read of a reclaimed connection: %v, want a reset", err)
	}

	// Left critical: the heavy client's new connections stay.
	r.srv.SetMemoryPressure(netstack.MemoryAmple)
	for range 20 {
		heavy = append(heavy, dial(connClient))
	}
	time.Sleep(time.Second)
	if got := r.srv.Stats().MemoryReclaimed; got != heavyN-share {
		t.Errorf("memory_reclaimed %d after memory left critical, want still %d", got, heavyN-share)
	}
	for i, p := range heavy[heavyN:] {
		if p.reclaimed(t) {
			t.Errorf("a connection made after memory left critical (%d) was reset", i)
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
