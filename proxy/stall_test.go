package proxy

import (
	"context"
	"io"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/netstack/gwlbsim"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// These tests stall relayed flows for real: a client stack behind a GWLB
// simulator on loopback, a netstack server whose handler is the Proxy, and
// a destination on loopback that the Proxy dials from a host socket.

type stallRig struct {
	p      *Proxy
	sink   *recordSink
	client *gwlbsim.ClientStack
	ns     *netstack.Server // the appliance's stacks, the Proxy their handler
}

func newStallRig(t *testing.T, timeout time.Duration) *stallRig {
	t.Helper()
	r := &stallRig{sink: new(recordSink)}
	r.p = New(Config{Records: records.NewWriter(nil, r.sink), AllowLoopback: true, WriteStallTimeout: timeout})
	t.Cleanup(r.p.Close)
	ns, ep := simulatedEndpoint(t, r.p, true)
	r.ns = ns
	var err error
	if r.client, err = ep.NewClientStack(netip.MustParseAddr("198.18.0.5")); err != nil {
		t.Fatal(err)
	}
	return r
}

// hello is what each client sends first: bytes the classifier calls
// "other" at once, so that the flow is relayed.
var hello = []byte("\x00\x01\x02\x03 stall test\n")

// destination listens on loopback and hands each connection, once it has
// read hello, to serve in a goroutine of its own.
func destination(t *testing.T, serve func(c *net.TCPConn)) netip.AddrPort {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			go func() {
				if _, err := io.ReadFull(c, make([]byte, len(hello))); err != nil {
					c.Close()
					return
				}
				serve(c)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// dial connects the client to dst through the appliance and sends hello.
func (r *stallRig) dial(t *testing.T, dst netip.AddrPort) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := r.client.DialTCP(ctx, dst)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write(hello); err != nil {
		t.Fatal(err)
	}
	return c
}

// record waits up to within for the flow's record.
func (r *stallRig) record(t *testing.T, within time.Duration) (records.Record, bool) {
	t.Helper()
	for end := time.Now().Add(within); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if recs := r.sink.parse(t); len(recs) > 0 {
			return recs[0], true
		}
	}
	return records.Record{}, false
}

// flood writes to c until a write fails, counting what it wrote; it
// returns the write's error.
func flood(c net.Conn, sent *atomic.Int64) error {
	chunk := make([]byte, 64<<10)
	for {
		n, err := c.Write(chunk)
		sent.Add(int64(n))
		if err != nil {
			return err
		}
	}
}

// stalled waits until sent stops moving: the writes wait.
func stalled(t *testing.T, sent *atomic.Int64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for last := int64(-1); ; last = sent.Load() {
		time.Sleep(150 * time.Millisecond)
		if sent.Load() == last {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the flow never stalled: %d bytes sent", sent.Load())
		}
	}
}

// countBuffers makes the relay's buffers from now on count themselves
// made and freed; it returns what is alive once collections have emptied
// the pool.
func countBuffers(t *testing.T) func() int64 {
	var made, freed atomic.Int64
	oldNew := relayBufPool.New
	relayBufPool.New = func() any {
		made.Add(1)
		b := make([]byte, relayBufSize)
		runtime.AddCleanup(&b[0], func(f *atomic.Int64) { f.Add(1) }, &freed)
		return &b
	}
	t.Cleanup(func() { relayBufPool.New = oldNew })
	runtime.GC()
	runtime.GC()
	return func() int64 {
		runtime.GC()
		runtime.GC()
		time.Sleep(50 * time.Millisecond) // cleanups run in a goroutine of their own
		return made.Load() - freed.Load()
	}
}

// checkStalled checks the record of a flow aborted for a stalled write to
// whom, and the counter.
func (r *stallRig) checkStalled(t *testing.T, rec records.Record, whom string) {
	t.Helper()
	t.Logf("record: result %s, error %q, out %d, in %d", rec.Result, rec.Error, rec.BytesOut, rec.BytesIn)
	if rec.Result != "stalled" {
		t.Errorf("result %q, want stalled", rec.Result)
	}
	if !strings.Contains(rec.Error, "the "+whom+" accepted nothing") {
		t.Errorf("error %q does not name the %s", rec.Error, whom)
	}
	if got := r.p.Stats().TCPStalled; got != 1 {
		t.Errorf("tcp_stalled %d, want 1", got)
	}
}

// A client that reads part of a download, then stops reading (a zero
// window) while the destination keeps sending: the relay's write to the
// client stalls, and the flow is aborted a timeout later, both peers
// reset, its relay buffer given back, recorded as stalled and counted.
func TestRelayClientStallsDownload(t *testing.T) {
	alive := countBuffers(t)
	r := newStallRig(t, time.Second)
	var sent atomic.Int64
	serverErr := make(chan error, 1)
	dst := destination(t, func(c *net.TCPConn) { serverErr <- flood(c, &sent) })
	c := r.dial(t, dst)
	if _, err := io.ReadFull(c, make([]byte, 1<<20)); err != nil { // the window opens, then shuts
		t.Fatal(err)
	}
	r.expectStallAbort(t, &sent, "client", "destination", serverErr, alive)
}

// A destination that stops reading an upload: the relay's write to the
// host socket stalls, and the flow is aborted as above.
func TestRelayDestinationStallsUpload(t *testing.T) {
	alive := countBuffers(t)
	r := newStallRig(t, time.Second)
	dst := destination(t, func(c *net.TCPConn) {}) // reads nothing after hello
	c := r.dial(t, dst)
	var sent atomic.Int64
	clientErr := make(chan error, 1)
	go func() { clientErr <- flood(c, &sent) }()
	r.expectStallAbort(t, &sent, "destination", "client", clientErr, alive)
}

// expectStallAbort waits, once sent has stopped moving, for the flow to be
// aborted with a record naming stalledSide, its writer (sender) reset, and
// no relay buffer left alive.
func (r *stallRig) expectStallAbort(t *testing.T, sent *atomic.Int64, stalledSide, sender string, senderErr <-chan error, alive func() int64) {
	t.Helper()
	stalled(t, sent)
	stalledAt := time.Now()
	rec, ok := r.record(t, 5*time.Second)
	if !ok {
		t.Fatalf("the flow stalled %v ago (%d MiB sent) and is still relayed (tcp_stalled %d)",
			time.Since(stalledAt).Round(time.Millisecond), sent.Load()>>20, r.p.Stats().TCPStalled)
	}
	t.Logf("aborted %v after the %s's writes stopped moving", time.Since(stalledAt).Round(time.Millisecond), sender)
	r.checkStalled(t, rec, stalledSide)
	select {
	case err := <-senderErr:
		t.Logf("the %s's write: %v", sender, err)
	case <-time.After(5 * time.Second):
		t.Errorf("the %s was not reset", sender)
	}
	if n := alive(); n != 0 {
		t.Errorf("%d relay buffers still held after the abort", n)
	}
}

// A client that reads slowly but steadily, a little every 200 ms, keeps
// the relay's write to it waiting far longer in all than the timeout, but
// never without progress for that long: it is not aborted.
func TestRelaySlowReaderNotStalled(t *testing.T) {
	r := newStallRig(t, time.Second)
	var sent atomic.Int64
	dst := destination(t, func(c *net.TCPConn) { flood(c, &sent) })
	c := r.dial(t, dst)
	read := readSlowly(t, r.p, c, c, 32<<10)
	t.Logf("read %d KiB in 5 s; the destination had sent %d KiB", read>>10, sent.Load()>>10)
	if sent.Load()-read < 1<<20 {
		t.Fatalf("only %d bytes in flight: the relay's write never waited, the test shows nothing", sent.Load()-read)
	}
	r.expectNotStalled(t)
}

// A destination that reads an upload slowly but steadily is not aborted
// either: the host socket's queue shrinks while the relay's write waits.
func TestRelaySlowDestinationNotStalled(t *testing.T) {
	r := newStallRig(t, time.Second)
	var read atomic.Int64
	readErr := make(chan error, 1)
	dst := destination(t, func(c *net.TCPConn) {
		buf := make([]byte, 32<<10)
		for end := time.Now().Add(5 * time.Second); time.Now().Before(end); {
			time.Sleep(200 * time.Millisecond)
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			n, err := io.ReadFull(c, buf)
			read.Add(int64(n))
			if err != nil {
				readErr <- err
				return
			}
		}
		readErr <- nil
	})
	c := r.dial(t, dst)
	var sent atomic.Int64
	go flood(c, &sent)
	if err := <-readErr; err != nil {
		t.Fatalf("after %d bytes read: %v (tcp_stalled %d)", read.Load(), err, r.p.Stats().TCPStalled)
	}
	t.Logf("the destination read %d KiB in 5 s; the client had sent %d KiB", read.Load()>>10, sent.Load()>>10)
	if sent.Load()-read.Load() < 1<<20 {
		t.Fatalf("only %d bytes in flight: the relay's write never waited, the test shows nothing", sent.Load()-read.Load())
	}
	r.expectNotStalled(t)
}

// Lowering the timeout reaches a write already waiting: a flow stalled
// under a timeout of an hour is aborted within about the new one of a
// second once it is set (as when memory turns short), not an hour later.
// Within two of them: the client's stack may have acknowledged bytes that
// gVisor did not wake the write for, and the watch's look at the deadline
// lets the write take them first (progress) before it calls it stalled.
func TestRelayStallTimeoutLoweredWhileWaiting(t *testing.T) {
	r := newStallRig(t, time.Hour)
	var sent atomic.Int64
	dst := destination(t, func(c *net.TCPConn) { flood(c, &sent) })
	c := r.dial(t, dst)
	if _, err := io.ReadFull(c, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	stalled(t, &sent)
	time.Sleep(time.Second)
	if recs := r.sink.parse(t); len(recs) != 0 {
		t.Fatalf("aborted under a timeout of an hour: %+v", recs[0])
	}
	r.p.SetWriteStallTimeout(time.Second)
	set := time.Now()
	rec, ok := r.record(t, 5*time.Second)
	if !ok {
		t.Fatalf("still relayed %v after the timeout was lowered to 1 s", time.Since(set).Round(time.Millisecond))
	}
	took := time.Since(set)
	t.Logf("aborted %v after the timeout was lowered", took.Round(time.Millisecond))
	if took > 2500*time.Millisecond {
		t.Errorf("aborted %v after the timeout was lowered to 1 s", took)
	}
	r.checkStalled(t, rec, "client")
}

// The timeout in force is the configured one, at most a minute while
// memory is short and ten seconds while it is critical.
func TestWriteStallTimeoutFollowsMemoryPressure(t *testing.T) {
	p := New(Config{})
	defer p.Close()
	for _, c := range []struct {
		base time.Duration
		l    netstack.MemoryPressure
		want time.Duration
	}{
		{0, netstack.MemoryAmple, DefaultWriteStallTimeout},
		{0, netstack.MemoryShort, ShortMemoryWriteStallTimeout},
		{0, netstack.MemoryCritical, CriticalMemoryWriteStallTimeout},
		{5 * time.Second, netstack.MemoryShort, 5 * time.Second},
		{5 * time.Second, netstack.MemoryAmple, 5 * time.Second},
		{time.Hour, netstack.MemoryAmple, time.Hour},
	} {
		p.SetWriteStallTimeout(c.base)
		p.SetMemoryPressure(c.l)
		if got := p.WriteStallTimeout(); got != c.want {
			t.Errorf("base %v at pressure %d: %v, want %v", c.base, c.l, got, c.want)
		}
	}
}

// When both directions of a flow wait (a client that stops reading a
// download soon stops its destination reading the upload too), the
// record names the side that has waited longer, whichever the sweeper
// met first.
func TestStallNamesTheLongerWaiter(t *testing.T) {
	for _, tc := range []struct {
		name        string
		longer      func(r *relay) *halfRelay
		metFirst    func(r *relay) *halfRelay
		wantInError string
	}{
		{"client waited longer, met second", func(r *relay) *halfRelay { return &r.in }, func(r *relay) *halfRelay { return &r.out }, "the client accepted nothing"},
		{"destination waited longer, met second", func(r *relay) *halfRelay { return &r.out }, func(r *relay) *halfRelay { return &r.in }, "the destination accepted nothing"},
	} {
		a, b := net.Pipe()
		c, d := net.Pipe()
		r := &relay{client: a, upstream: c}
		r.out = halfRelay{r: r, dst: c, src: a}
		r.in = halfRelay{r: r, dst: a, src: c}
		r.left.Store(2)
		time.Sleep(20 * time.Millisecond)
		r.out.ww.sw, r.in.ww.sw = newStallWatch(time.Millisecond), newStallWatch(time.Millisecond)
		tc.longer(r).ww.waitSince.Store(1) // waiting since the clock began
		met := tc.metFirst(r)
		met.ww.waitSince.Store(-stallNow()) // the sweeper's mark on a wait just begun
		r.stall(&met.ww, time.Millisecond, time.Millisecond)
		p := r.stalled.Load()
		if p == nil || !strings.Contains((*p).Error(), tc.wantInError) {
			t.Errorf("%s: %v, want it to say %q", tc.name, p, tc.wantInError)
		}
		for _, x := range []net.Conn{a, b, c, d} {
			x.Close()
		}
	}
}

// readSlowly reads chunk bytes from r (c's deadline bounding each read)
// every 200 ms for 5 s, failing the test if a read fails, and returns what
// it read: a slow but steady reader.
func readSlowly(t *testing.T, p *Proxy, c net.Conn, r io.Reader, chunk int) int64 {
	t.Helper()
	buf := make([]byte, chunk)
	var read int64
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); {
		time.Sleep(200 * time.Millisecond)
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err := io.ReadFull(r, buf)
		read += int64(n)
		if err != nil {
			t.Fatalf("after %d bytes read: %v (tcp_stalled %d)", read, err, p.Stats().TCPStalled)
		}
	}
	return read
}

// expectNotStalled checks that no flow or session of the rig has ended or
// been counted stalled.
func (r *stallRig) expectNotStalled(t *testing.T) {
	t.Helper()
	if recs := r.sink.parse(t); len(recs) != 0 {
		t.Errorf("the connection ended: %+v", recs[0])
	}
	if got := r.p.Stats().TCPStalled; got != 0 {
		t.Errorf("tcp_stalled %d, want 0", got)
	}
}

// TestRelayClientTimeoutRecorded: a client that vanishes (its stack drops
// everything the appliance sends, so the keep-alive probes go unanswered)
// ends the relay with the stack's timeout, and the record's result is
// timeout, not reset: the client sent no reset. Keep-alives are tuned to
// give up within a second.
func TestRelayClientTimeoutRecorded(t *testing.T) {
	p, sink, client := quickKeepaliveRig(t)
	r := &stallRig{p: p, sink: sink, client: client}
	relayed := make(chan struct{})
	dst := destination(t, func(c *net.TCPConn) { close(relayed) }) // then silent
	r.dial(t, dst)
	select {
	case <-relayed:
	case <-time.After(5 * time.Second):
		t.Fatal("the flow was not relayed")
	}
	client.SetTap(func([]byte) bool { return true }) // the client is gone
	rec, ok := r.record(t, 10*time.Second)
	if !ok {
		t.Fatal("no record: the relay did not end")
	}
	t.Logf("record: result %s, error %q", rec.Result, rec.Error)
	if rec.Result != "timeout" {
		t.Errorf("result %q, want timeout", rec.Result)
	}
}

// quickKeepaliveRig is a proxy behind a simulated GWLB endpoint whose
// stacks give up on a client that answers no keep-alive probe within a
// second, and a client stack behind it: for the tests of a client that
// vanishes.
func quickKeepaliveRig(t *testing.T) (*Proxy, *recordSink, *gwlbsim.ClientStack) {
	t.Helper()
	sink := new(recordSink)
	p := New(Config{Records: records.NewWriter(nil, sink), AllowLoopback: true})
	t.Cleanup(p.Close)
	_, ep := simulatedEndpointTCP(t, p, true, netstack.TCPOptions{
		KeepaliveIdle: 300 * time.Millisecond, KeepaliveInterval: 200 * time.Millisecond, KeepaliveCount: 2,
	})
	client, err := ep.NewClientStack(netip.MustParseAddr("198.18.0.5"))
	if err != nil {
		t.Fatal(err)
	}
	return p, sink, client
}
