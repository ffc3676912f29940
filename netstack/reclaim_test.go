package netstack_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
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

// dialFrom connects the client from its address from (connClient or one
// added to its stack) and returns both ends.
func (r *connRig) dialFrom(from netip.Addr) reclaimPair {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	cc, err := r.client.DialTCPFrom(ctx, netip.AddrPortFrom(from, 0), connDest)
	if err != nil {
		r.t.Fatalf("dialing from %s: %v", from, err)
	}
	r.t.Cleanup(func() { cc.Close() })
	return reclaimPair{cc, r.accepted()}
}

// TestReclaimAtCriticalMemory: while memory is critical, the connections
// of the heaviest client (here all new, so the one with the most) are
// reset, newest first among equal buffers, down to what sixteen new
// connections hold; a client within that is untouched, and nothing is
// reset once the level leaves critical.
func TestReclaimAtCriticalMemory(t *testing.T) {
	r := newConnRig(t)
	light := netip.MustParseAddr("198.18.0.6") // the same endpoint, another client
	if err := r.client.Stack.AddProtocolAddress(1, tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddrFrom4(light.As4()).WithPrefix()}, stack.AddressProperties{}); err != nil {
		t.Fatalf("adding the light client's address: %s", err)
	}
	const heavyN, lightN, share = 40, 5, netstack.CriticalMemoryClientFlows
	var heavy, lights []reclaimPair
	for range heavyN {
		heavy = append(heavy, r.dialFrom(connClient))
	}
	for range lightN {
		lights = append(lights, r.dialFrom(light))
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
		heavy = append(heavy, r.dialFrom(connClient))
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

// uploadUntilGrown sends zeros from p's client to its server end, read as
// they come, until the server end's receive buffer is past want (or
// uploadCap bytes have gone), then a 0xff byte that ends the upload, which
// the reader drains to, so that no upload byte is left in flight. A read
// still blocked at bound fails.
func (p reclaimPair) uploadUntilGrown(want int64, bound time.Time) error {
	const uploadCap = 8 << 20
	var stop atomic.Bool
	go func() {
		buf := make([]byte, 64<<10)
		for sent := 0; sent < uploadCap && !stop.Load(); sent += len(buf) {
			if _, err := p.cc.Write(buf); err != nil {
				return
			}
		}
		p.cc.Write([]byte{0xff})
	}()
	p.conn.SetReadDeadline(bound)
	defer p.conn.SetReadDeadline(time.Time{})
	buf := make([]byte, 64<<10)
	for {
		n, err := p.conn.Read(buf)
		if bytes.IndexByte(buf[:n], 0xff) >= 0 {
			return nil
		}
		if err != nil {
			return fmt.Errorf("after growing to %d KiB: %w", p.conn.ReceiveBuffer()>>10, err)
		}
		if p.conn.ReceiveBuffer() > want {
			stop.Store(true)
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestReclaimTakesTheHeaviestNotTheMostNumerous is the attack of a client
// spread over several addresses, sixteen connections each (the share
// critical memory admits, and what a count of connections left alone),
// each grown by an upload to a large buffer it can then hold out of order,
// beside a busy client with seventeen new, idle connections. At critical
// memory the heavy addresses' connections are reset, each down to what
// sixteen new connections may hold, and the busy client's are not.
func TestReclaimTakesTheHeaviestNotTheMostNumerous(t *testing.T) {
	r := newConnRig(t)
	heavyFrom := []netip.Addr{netip.MustParseAddr("198.18.0.21"), netip.MustParseAddr("198.18.0.22"), netip.MustParseAddr("198.18.0.23")}
	for _, a := range heavyFrom {
		if err := r.client.Stack.AddProtocolAddress(1, tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber,
			AddressWithPrefix: tcpip.AddrFrom4(a.As4()).WithPrefix()}, stack.AddressProperties{}); err != nil {
			t.Fatalf("adding address %s: %s", a, err)
		}
	}
	const share = netstack.CriticalMemoryClientFlows
	var busy []reclaimPair
	for range share + 1 {
		busy = append(busy, r.dialFrom(connClient))
	}
	heavy := make([][]reclaimPair, len(heavyFrom))
	for i, a := range heavyFrom {
		for range share {
			heavy[i] = append(heavy[i], r.dialFrom(a))
		}
	}
	// Each heavy connection grows its receive buffer with an upload read as
	// it comes, as a relay reads, until the buffer is past twice its start.
	// One bound covers every upload: under -race on loaded cores they take
	// seconds, and what matters is the growth, not a fixed volume.
	//
	// The uploads go one at a time. All 48 at once queued behind the
	// appliance's one reader until their round trips (100 to 300 ms at
	// load 5 to 8) outgrew the client's retransmission timeouts: 40 to
	// 116 timeouts a run, each doubling its connection's next, and at load
	// 12 a connection still waiting for its last bytes at the 60 s bound.
	// One at a time, they took no timeout, fewer bytes, and less time
	// (1.6 to 6.5 s at load 7, against 7.8 to 13 s all at once).
	const start = 256 << 10
	bound := time.Now().Add(12 * waitFor)
	for _, ps := range heavy {
		for _, p := range ps {
			if err := p.uploadUntilGrown(2*start, bound); err != nil {
				t.Fatalf("reading an upload: %v", err)
			}
		}
	}
	var grown int64
	for _, ps := range heavy {
		for _, p := range ps {
			grown += p.conn.ReceiveBuffer()
		}
	}
	t.Logf("heavy connections' receive buffers: %d KiB on average", grown/int64(len(heavyFrom)*share)>>10)
	if grown <= int64(len(heavyFrom)*share*2*start) {
		t.Fatalf("the uploads grew the receive buffers to %d KiB on average, want well past 256 KiB", grown/int64(len(heavyFrom)*share)>>10)
	}

	// kept is the count of an address's connections reset, and what the
	// rest may hold: their receive buffers, and send buffers never grown
	// (nothing was written to them).
	kept := func(ps []reclaimPair) (reset int, held int64) {
		for _, p := range ps {
			if p.reclaimed(t) {
				reset++
			} else {
				held += p.conn.ReceiveBuffer() + start
			}
		}
		return reset, held
	}
	const floor = share * 2 * start
	down := func() bool {
		for _, ps := range heavy {
			if _, held := kept(ps); held > floor {
				return false
			}
		}
		return true
	}
	r.srv.SetMemoryPressure(netstack.MemoryCritical)
	// Three rounds, one client each, take the heavy addresses down; the
	// level then leaves critical before a fourth could reach the busy
	// client, whose seventeen new connections are then the heaviest.
	deadline := time.Now().Add(waitFor)
	for !down() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	r.srv.SetMemoryPressure(netstack.MemoryAmple)
	time.Sleep(100 * time.Millisecond)
	reclaimed := 0
	for i, ps := range heavy {
		n, held := kept(ps)
		reclaimed += n
		t.Logf("heavy address %s: %d of %d reset, the rest may hold %d KiB", heavyFrom[i], n, share, held>>10)
		if n == 0 || held > floor {
			t.Errorf("heavy address %s: %d connections reset, the rest may hold %d KiB, want some reset and at most %d KiB held", heavyFrom[i], n, held>>10, floor>>10)
		}
	}
	for i, p := range busy {
		if p.reclaimed(t) {
			t.Errorf("the busy client's connection %d was reset", i)
		}
	}
	if got := r.srv.Stats().MemoryReclaimed; got != uint64(reclaimed) {
		t.Errorf("memory_reclaimed %d, want the %d connections reset", got, reclaimed)
	}
}

// TestReclaimSkipsAConnClosedMeanwhile: a handler that closes a connection
// after the reclaim took it and before the reset ends it as it chose, with
// a FIN, and memory_reclaimed counts only the connections reset.
func TestReclaimSkipsAConnClosedMeanwhile(t *testing.T) {
	r := newConnRig(t)
	const n = netstack.CriticalMemoryClientFlows + 4
	var pairs []reclaimPair
	for range n {
		cc, conn := r.dial()
		pairs = append(pairs, reclaimPair{cc, conn})
	}
	var closed *netstack.Conn
	r.srv.ReclaimWith(func(taken []*netstack.Conn) {
		if len(taken) != 4 {
			t.Fatalf("the reclaim took %d connections, want 4", len(taken))
		}
		closed = taken[0]
		closed.Close()
	})
	if got := r.srv.Stats().MemoryReclaimed; got != 3 {
		t.Errorf("memory_reclaimed %d, want 3 (4 taken, 1 closed by its handler first)", got)
	}
	for _, p := range pairs {
		if p.conn != closed {
			continue
		}
		p.cc.SetReadDeadline(time.Now().Add(waitFor))
		if _, err := p.cc.Read(make([]byte, 1)); err != io.EOF {
			t.Errorf("the client's read of the connection its handler closed: %v, want EOF (a FIN, no RST)", err)
		}
	}
}

// TestReclaimOff: with the reclaim off (critical memory the stack's
// buffers do not hold: the kernel's TCP memory), critical memory resets
// no connection; turned on again, the next rounds reset.
func TestReclaimOff(t *testing.T) {
	r := newConnRig(t)
	const n = 40
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		cc, err := r.client.DialTCP(ctx, connDest)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		r.accepted()
	}
	r.srv.SetReclaim(false)
	r.srv.SetMemoryPressure(netstack.MemoryCritical)
	time.Sleep(time.Second) // four rounds
	if got := r.srv.Stats().MemoryReclaimed; got != 0 {
		t.Fatalf("memory_reclaimed %d with the reclaim off, want 0", got)
	}
	r.srv.SetReclaim(true)
	deadline := time.Now().Add(waitFor)
	for r.srv.Stats().MemoryReclaimed == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if r.srv.Stats().MemoryReclaimed == 0 {
		t.Fatal("the reclaim on again reset nothing")
	}
	r.srv.SetMemoryPressure(netstack.MemoryAmple)
}

// TestReclaimOfClosedConnNeverSaysReclaimed: the reclaim may reach a
// connection its handler closed since the reclaim took it from the list.
// It must leave it alone, and nothing must ever see it as reclaimed, not
// even for a moment: a handler recording the connection's end asks
// Reclaimed after its Close, and a connection that ended with its FIN
// would be recorded as reset by the appliance.
func TestReclaimOfClosedConnNeverSaysReclaimed(t *testing.T) {
	r := newConnRig(t)
	_, sc := r.dial()
	if err := sc.Close(); err != nil {
		t.Fatal(err)
	}
	done := make(chan int)
	go func() {
		reset := 0
		for range 200000 {
			if sc.AbortReclaimed() {
				reset++
			}
		}
		done <- reset
	}()
	seen := 0
	for running := true; running; {
		select {
		case reset := <-done:
			running = false
			if reset != 0 {
				t.Errorf("the reclaim reset a closed connection %d times", reset)
			}
		default:
			if sc.Reclaimed() != nil {
				seen++
			}
		}
	}
	if seen != 0 {
		t.Errorf("a closed connection read as reclaimed %d times while the reclaim passed it over", seen)
	}
}

// TestReclaimWeighsWhatTheHandlerHolds: a client whose two connections
// have new, small buffers but whose handler holds 16 MiB for each outside
// the stack (AddHeld: requests waiting on an origin) is the heaviest,
// beside a client with forty new connections (20 MiB of buffers): one
// round of the reclaim takes its connections, the held one first, and
// none of the other's. What a handler gives back no longer counts.
func TestReclaimWeighsWhatTheHandlerHolds(t *testing.T) {
	r := newConnRig(t)
	hoarder := netip.MustParseAddr("198.18.0.7")
	if err := r.client.Stack.AddProtocolAddress(1, tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddrFrom4(hoarder.As4()).WithPrefix()}, stack.AddressProperties{}); err != nil {
		t.Fatalf("adding the hoarder's address: %s", err)
	}
	var many []reclaimPair
	for range 40 {
		many = append(many, r.dialFrom(connClient))
	}
	const held = 16 << 20
	light, heavy := r.dialFrom(hoarder), r.dialFrom(hoarder)
	heavy.conn.AddHeld(held)
	light.conn.AddHeld(held / 2)
	// Added and given back: a request answered.
	light.conn.AddHeld(held)
	light.conn.AddHeld(-held)

	r.srv.ReclaimWith(func(taken []*netstack.Conn) {
		if len(taken) != 2 || taken[0] != heavy.conn || taken[1] != light.conn {
			t.Errorf("the round took %d connections, want the hoarder's 2, the one holding more first", len(taken))
		}
	})
	if !heavy.reclaimed(t) || !light.reclaimed(t) {
		t.Errorf("the hoarder's connections reclaimed: %v, %v; want both", heavy.reclaimed(t), light.reclaimed(t))
	}
	for i, p := range many {
		if p.reclaimed(t) {
			t.Errorf("the other client's connection %d was reset", i)
		}
	}
}
