package netstack

import (
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/gwlbproxy/gwlbproxy/internal/monoclock"
)

// Wall-clock steps. A test cannot step the machine's clock, so it feeds
// the stamps a step leaves behind: one taken an instant before a step back
// of an hour is an hour ahead of the wall clock after it. wallStepped
// stands for the step itself: the wall clock moves by step, the netstack's
// clock (monoclock.Now) does not.

// wallStepped has the netstack's clock read as if the wall clock had been
// stepped by step since the stamps were taken (monoclock.Now = wall - step),
// until the test ends.
func wallStepped(t *testing.T, step time.Duration) {
	monoclock.Shift(-step)
	t.Cleanup(func() { monoclock.Shift(step) })
}

// stampedBefore is a stamp taken ago before a wall-clock step of step,
// read now: what the code stored then.
func stampedBefore(step, ago time.Duration) int64 {
	return time.Now().Add(-step - ago).UnixNano()
}

// silentPath is a return path that sends nothing, from any goroutine.
type silentPath struct{}

func (silentPath) send([]byte, netip.AddrPort) error  { return nil }
func (silentPath) sendBatch(*replyBatch) (int, error) { return 0, nil }
func (silentPath) close() error                       { return nil }
func (silentPath) name() string                       { return "silent" }

// flowOf returns the flow of the rig's client in the server's table.
func flowOf(t *testing.T, r *groRig) *Flow {
	t.Helper()
	d := append(AppendHeader(nil, r.ether, 0, 7, 8, 9, nil), clientSegment(r.client, r.server, 1, 0, header.TCPFlagAck, nil)...)
	h, _ := ParseHeader(d)
	p, _ := ParsePacket(d[h.Len:], h.Protocol)
	k := p.Key(h.Endpoint)
	f := r.s.flows.Lookup(&k)
	if f == nil {
		t.Fatal("the rig's flow is not in the table")
	}
	return f
}

// TestDelayedAckWallStepBack: an ACK held an instant before the wall clock
// steps back an hour leaves after its 2 ms, and the holds after the step
// do not pile up behind it. On the wall clock the delayer's timer found
// the front hold an hour short of its delay and re-armed for the hour;
// every later hold stayed queued behind it (100,001 entries, each pinning
// its flow), and the held ACK left only when a reply carried it.
func TestDelayedAckWallStepBack(t *testing.T) {
	step := -time.Hour
	wallStepped(t, step)
	r := newReplyRig(t, 2*time.Millisecond, 2)
	r.s.ret = silentPath{} // the timer's goroutine sends too
	a, b := &r.flows[0], &r.flows[1]
	r.send(b.ack, 101, stampedBefore(step, 0)) // held; the timer is armed for 2 ms
	for deadline := time.Now().Add(time.Second); ; time.Sleep(time.Millisecond) {
		ab := acksOf(b.flow)
		ab.mu.Lock()
		held := ab.held.buf != nil
		ab.mu.Unlock()
		if !held {
			break
		}
		if time.Now().After(deadline) {
			t.Error("the ACK held before the step is still held a second later (delay 2 ms)")
			break
		}
	}
	ack := uint32(101)
	for range 100000 {
		ack += 100
		now := monoclock.Now()
		r.send(a.ack, ack, now)  // held
		r.send(a.data, ack, now) // carries it
	}
	r.s.acks.mu.Lock()
	n := len(r.s.acks.queue)
	r.s.acks.mu.Unlock()
	if n > 1000 {
		t.Errorf("the delayer's queue holds %d entries after 100,000 holds carried at once", n)
	}
}

// TestFlowExpiryWallStepBack: flows made a minute before the wall clock
// steps back an hour expire by their own timeout (30 s for a SYN), so
// their client's share is free for a new flow. On the wall clock they
// lived an hour more, and the client (limit 2) got client_flow_limit.
func TestFlowExpiryWallStepBack(t *testing.T) {
	step := -time.Hour
	wallStepped(t, step)
	tb := newFlowTable(100, 350*time.Second, 120*time.Second)
	tb.LimitPerClient(2)
	s := &Server{flows: tb}
	gwlb := netip.MustParseAddrPort("127.0.0.2:40000")
	key := func(port uint16) FlowKey {
		c := netip.AddrPortFrom(netip.MustParseAddr("198.18.0.5"), port)
		d := append(AppendHeader(nil, EtherTypeIPv4, 0, 7, 8, 1, nil),
			clientSegment(c, netip.MustParseAddrPort("198.18.9.9:443"), 1, 0, header.TCPFlagSyn, nil)...)
		h, _ := ParseHeader(d)
		p, _ := ParsePacket(d[h.Len:], h.Protocol)
		return p.Key(h.Endpoint)
	}
	for port := uint16(1); port <= 2; port++ {
		k := key(port)
		if _, r := tb.Touch(&k, nil, Header{}, gwlb, stampedBefore(step, time.Minute)); r != DropNone {
			t.Fatal(r)
		}
	}
	s.expireIdle()
	if n := tb.count.Load(); n != 0 {
		t.Errorf("%d flows left in the table, a minute after their SYNs (timeout 30 s)", n)
	}
	k := key(3)
	if _, r := tb.Touch(&k, nil, Header{}, gwlb, monoclock.Now()); r != DropNone {
		t.Errorf("the client's new flow: %v, want taken", r)
	}
}

// TestFlowExpiryWallStepForward: a wall-clock step forward of ten minutes
// (past the 350 s idle timeout of established TCP) expires no flow and
// closes no stack. On the wall clock the next round expired the flow of a
// connection that had a segment an instant before the step, closed its
// endpoint's stack, and aborted the connection.
func TestFlowExpiryWallStepForward(t *testing.T) {
	step := 10 * time.Minute
	wallStepped(t, step)
	r := newGRORig(t, netip.MustParseAddrPort("198.18.0.5:40000"), netip.MustParseAddrPort("198.18.9.9:443"))
	r.batch(r.data([]byte("hello")))
	buf := make([]byte, 16)
	_ = r.conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := r.conn.Read(buf); err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	// The segment's stamps, from an instant before the step.
	flowOf(t, r).lastSeen.Store(stampedBefore(step, 0))
	r.st.lastPacket.Store(stampedBefore(step, 0))
	r.s.expireIdle()
	if n := r.s.flows.count.Load(); n != 1 {
		t.Errorf("%d flows in the table after the step, want the connection's", n)
	}
	r.st.mu.RLock()
	closed := r.st.closed
	r.st.mu.RUnlock()
	if closed {
		t.Fatal("the endpoint's stack was closed")
	}
	r.batch(r.data([]byte("again")))
	_ = r.conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := r.conn.Read(buf); err != nil || string(buf[:n]) != "again" {
		t.Errorf("the connection after the step: read %q, %v", buf[:n], err)
	}
}

// TestPathMTUWallStepBack: a connection that took a path MTU error a
// second before the wall clock stepped back an hour takes the next one
// (one per 100 ms). On the wall clock every later one was refused as
// icmp_mtu_too_soon for the hour, and a second MTU drop on the path
// black-holed the connection's full-size segments.
func TestPathMTUWallStepBack(t *testing.T) {
	step := -time.Hour
	wallStepped(t, step)
	r := newGRORigOpts(t, netip.MustParseAddrPort("198.18.0.5:40000"), netip.MustParseAddrPort("198.18.9.9:443"),
		func(*Config) {}, []byte{2, 4, 0x23, 0x00}, nil) // MSS 8960
	if _, err := r.conn.Write(make([]byte, 4000)); err != nil {
		t.Fatal(err)
	}
	first, size := nextDataSegment(t, r)
	if size != 4000 {
		t.Fatalf("the first data segment carries %d bytes, want 4000", size)
	}
	flowOf(t, r).mtuTaken.Store(stampedBefore(step, time.Second)) // an MTU of 1400, say
	quoted := clientSegment(r.server, r.client, first, r.seq, header.TCPFlagAck, nil)
	errPkt := pathMTUError(netip.MustParseAddr("198.18.200.1"), quoted, 1280)
	r.s.handleDatagram(append(AppendHeader(nil, r.ether, 0, 7, 0xbad, 0xbad, nil), errPkt...), netip.MustParseAddrPort("127.0.0.2:47002"), nil)
	if n := r.s.Stats().Drops["icmp_mtu_too_soon"]; n != 0 {
		t.Errorf("icmp_mtu_too_soon %d, want the error taken", n)
	}
	if _, err := r.conn.Write(make([]byte, 4000)); err != nil {
		t.Fatal(err)
	}
	if _, next := nextDataSegment(t, r); next > 1280-40 {
		t.Errorf("after the error, the next data segment carries %d bytes, want at most %d", next, 1280-40)
	}
}
