package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// destEnd is how a destination's read of its connection ended.
type destEnd struct {
	n   int64
	err error
}

// slowReadDest listens on loopback with a 4 KiB receive buffer; its one
// connection reads nothing until release is closed, then reads to its
// end and says how many bytes it got and how the stream ended.
func slowReadDest(t *testing.T, release <-chan struct{}) (netip.AddrPort, <-chan destEnd) {
	t.Helper()
	return slowReadDestKeep(t, release, false)
}

// slowReadDestKeep is slowReadDest whose connection, when keep, stays
// open once read to its end, until the test ends: the destination ends
// no relay.
func slowReadDestKeep(t *testing.T, release <-chan struct{}, keep bool) (netip.AddrPort, <-chan destEnd) {
	t.Helper()
	ln := smallBufferListener(t)
	ends := make(chan destEnd, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		if keep {
			t.Cleanup(func() { c.Close() })
		} else {
			defer c.Close()
		}
		<-release
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := io.Copy(io.Discard, c)
		ends <- destEnd{n, err}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort(), ends
}

// TestRelayWholeUploadSurvivesClientBreakAfterFIN: a client uploads and
// sends its FIN; the appliance acknowledges all of it, but the
// destination reads slowly, so the upload's tail is still in the
// appliance's send buffer when the client resets or vanishes. The upload
// was whole: the destination gets every byte and the FIN, as it would
// without the appliance, and the record's bytes_out is what it got. The
// relay reset the destination (a zero linger), which threw the tail away
// while the record counted it sent.
func TestRelayWholeUploadSurvivesClientBreakAfterFIN(t *testing.T) {
	for _, tc := range []struct {
		name   string
		reset  bool
		result string
	}{
		{"vanish", false, "timeout"},
		{"reset", true, "reset"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const size = 600 << 10
			p, sink, client := quickKeepaliveRig(t)
			r := &stallRig{p: p, sink: sink, client: client}
			release := make(chan struct{})
			released := false
			defer func() {
				if !released {
					close(release)
				}
			}()
			// It stays open once it has read all, ending nothing: the
			// relay ends on the client's break.
			dst, ends := slowReadDestKeep(t, release, true)
			c := dialRaw(t, client, dst)
			c.SetDeadline(time.Now().Add(20 * time.Second))
			payload := make([]byte, size)
			copy(payload, hello)
			if _, err := c.Write(payload); err != nil {
				t.Fatal(err)
			}
			if err := c.halfClose(); err != nil {
				t.Fatal(err)
			}
			// The upload and its FIN acknowledged by the appliance.
			for end := time.Now().Add(10 * time.Second); tcp.EndpointState(c.ep.State()) != tcp.StateFinWait2; time.Sleep(5 * time.Millisecond) {
				if time.Now().After(end) {
					t.Fatalf("the appliance did not take the whole upload and its FIN (client state %v)", tcp.EndpointState(c.ep.State()))
				}
			}
			if tc.reset {
				c.reset()
			} else {
				client.SetTap(func([]byte) bool { return true }) // the client is gone
			}
			// The destination reads from now on; the relay, once it has
			// seen the break, lingers until the destination has taken
			// the tail and the FIN, and ends then.
			close(release)
			released = true
			var got destEnd
			select {
			case got = <-ends:
			case <-time.After(15 * time.Second):
				t.Fatal("the destination's read did not end")
			}
			rec, ok := r.record(t, 10*time.Second)
			if !ok {
				t.Fatal("no record: the relay did not end after the client broke and the destination took all")
			}
			t.Logf("destination got %d of %d bytes, ended by %v; record: result %s, bytes_out %d, error %q",
				got.n, size, got.err, rec.Result, rec.BytesOut, rec.Error)
			wantWholeUploadDelivered(t, got, size, rec.BytesOut)
			if rec.Result != tc.result {
				t.Errorf("record result %s (%q), want %s", rec.Result, rec.Error, tc.result)
			}
		})
	}
}

// gateConn is a destination whose writes wait for gate to be closed, and
// which says when the first one begins and whether it was half-closed or
// reset: meanwhile the relay leaves the client's later bytes, and its
// FIN, unread in the stack.
type gateConn struct {
	*net.TCPConn
	gate        chan struct{}
	writing     chan struct{}
	once        atomic.Bool
	closed      atomic.Bool
	aborted     atomic.Bool
	closedWrite atomic.Bool
}

func (c *gateConn) Write(b []byte) (int, error) {
	if !c.once.Swap(true) {
		close(c.writing)
	}
	<-c.gate
	return c.TCPConn.Write(b)
}

func (c *gateConn) CloseWrite() error {
	c.closedWrite.Store(true)
	return c.TCPConn.CloseWrite()
}

func (c *gateConn) Close() error {
	c.closed.Store(true)
	return c.TCPConn.Close()
}

// Abort resets the connection, unless it was closed already: an Abort
// after Close does nothing, as on a *net.TCPConn.
func (c *gateConn) Abort() {
	if c.closed.Swap(true) {
		return
	}
	c.aborted.Store(true)
	_ = c.TCPConn.SetLinger(0)
	c.TCPConn.Close()
}

// relayHeldInStack relays a client that sends 1 KiB, which the relay
// reads and holds in a write to a gated destination, then 100 KiB more
// (and its FIN when fin), left unread in the stack; the client then
// breaks (a RST when reset, else it vanishes) and the gate opens. It
// returns the destination's conn, how the destination's read ended, and
// the relay's error.
func relayHeldInStack(t *testing.T, fin, reset bool) (*gateConn, destEnd, error) {
	t.Helper()
	g := newGatedRelay(t, nil)
	defer g.open()
	cep, conn, gc := g.cep, g.conn, g.gc
	g.write(make([]byte, 1024))
	select {
	case <-gc.writing: // the relay holds the first KiB, and reads no more
	case <-time.After(5 * time.Second):
		t.Fatal("the relay did not write to the destination")
	}
	g.write(make([]byte, 100<<10))
	if fin {
		if terr := cep.Shutdown(tcpip.ShutdownWrite); terr != nil {
			t.Fatal(terr)
		}
	}
	// In the appliance's stack: the FIN acknowledged, or bytes waiting.
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		st := tcp.EndpointState(cep.State())
		if fin && st == tcp.StateFinWait2 || !fin && conn.Readable() {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("the appliance did not take all the client sent (client state %v)", st)
		}
	}
	if reset {
		cep.Abort()
	} else {
		g.rig.client.SetTap(func([]byte) bool { return true }) // the client is gone
	}
	// Seen by the stack, or by the relay already, which resets the
	// destination at once on a break before the FIN while its write
	// waits (relaybreak.go).
	for end := time.Now().Add(5 * time.Second); !conn.Broken() && !gc.aborted.Load(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("the appliance's stack did not see the client break")
		}
	}
	g.open()
	got, rerr := g.end()
	return gc, got, rerr
}

// gatedRelay is a relay from a client stack whose keepalives give up
// within a second to a gated destination (gateConn) on loopback, whose
// far end reads to its end.
type gatedRelay struct {
	t      *testing.T
	rig    *relayRig
	cep    tcpip.Endpoint
	conn   *netstack.Conn
	gc     *gateConn
	server *net.TCPConn
	done   chan error
	got    chan destEnd
	opened bool
}

// newGatedRelay starts the relay; wrap, if not nil, wraps the client
// conn the relay is given.
func newGatedRelay(t *testing.T, wrap func(net.Conn) net.Conn) *gatedRelay {
	t.Helper()
	return newGatedRelayWatched(t, wrap, nil)
}

// newGatedRelayWatched is newGatedRelay with the relay's writes watched by
// stalls (nil: none), whose stacksClosing the test may set.
func newGatedRelayWatched(t *testing.T, wrap func(net.Conn) net.Conn, stalls *stallWatch) *gatedRelay {
	t.Helper()
	r := &relayRig{h: &acceptAll{conns: make(chan *netstack.Conn, 1)}}
	_, ep := simulatedEndpointTCP(t, r.h, false, netstack.TCPOptions{
		KeepaliveIdle: 300 * time.Millisecond, KeepaliveInterval: 200 * time.Millisecond, KeepaliveCount: 2,
	})
	var err error
	if r.client, err = ep.NewClientStack(netip.MustParseAddr("198.18.0.5")); err != nil {
		t.Fatal(err)
	}
	cep, conn := r.dialEndpoint(t, 4100)
	upSide, server := loopbackPair(t)
	g := &gatedRelay{t: t, rig: r, cep: cep, conn: conn, server: server,
		gc:   &gateConn{TCPConn: upSide, gate: make(chan struct{}), writing: make(chan struct{})},
		done: make(chan error, 1), got: make(chan destEnd, 1)}
	var c net.Conn = &peekedConn{Conn: conn}
	if wrap != nil {
		c = wrap(c)
	}
	startWatchedRelay(c, g.gc, stalls, nil, nil, func(_ relayCounts, err error) { g.done <- err })
	go func() {
		server.SetReadDeadline(time.Now().Add(15 * time.Second))
		n, err := io.Copy(io.Discard, server)
		g.got <- destEnd{n, err}
	}()
	return g
}

// write sends b from the client.
func (g *gatedRelay) write(b []byte) {
	g.t.Helper()
	var rd bytes.Reader
	rd.Reset(b)
	for end := time.Now().Add(5 * time.Second); rd.Len() > 0; {
		if _, terr := g.cep.Write(&rd, tcpip.WriteOptions{}); terr != nil {
			if _, ok := terr.(*tcpip.ErrWouldBlock); !ok {
				g.t.Fatal(terr)
			}
			if time.Now().After(end) {
				g.t.Fatal("the client's stack took no more of the upload")
			}
			time.Sleep(time.Millisecond)
		}
	}
}

// open lets the relay's writes to the destination through, once.
func (g *gatedRelay) open() {
	if !g.opened {
		g.opened = true
		close(g.gc.gate)
	}
}

// end waits for the relay's end and the destination's, and returns the
// relay's error and how the destination's read ended.
func (g *gatedRelay) end() (destEnd, error) {
	g.t.Helper()
	var rerr error
	select {
	case rerr = <-g.done:
	case <-time.After(10 * time.Second):
		g.t.Fatal("the relay did not end")
	}
	select {
	case got := <-g.got:
		return got, rerr
	case <-time.After(15 * time.Second):
		g.t.Fatal("the destination's read did not end")
	}
	return destEnd{}, rerr
}

// TestRelayPassesFINReadBeforeClientBreak: the client's whole upload and
// its FIN are still unread in the stack, behind a destination slow to
// take the first bytes, when the client vanishes. The relay passes every
// byte and the FIN on, and ends saying the client broke after its FIN:
// the stack's reads said the break, not the FIN before it, and the relay
// reset the destination as for an upload cut short.
func TestRelayPassesFINReadBeforeClientBreak(t *testing.T) {
	gc, got, err := relayHeldInStack(t, true, false)
	t.Logf("relay error %v; destination got %d, ended by %v; CloseWrite %v, Abort %v", err, got.n, got.err, gc.closedWrite.Load(), gc.aborted.Load())
	if want := int64(1024 + 100<<10); got.n != want || got.err != nil {
		t.Errorf("the destination got %d bytes, ended by %v; want %d and the FIN", got.n, got.err, want)
	}
	if !gc.closedWrite.Load() || gc.aborted.Load() {
		t.Errorf("a whole upload ended by the client's FIN was passed on as cut: CloseWrite %v, Abort %v", gc.closedWrite.Load(), gc.aborted.Load())
	}
	if err == nil || !errors.Is(err, syscall.ETIMEDOUT) {
		t.Errorf("the relay ended with %v, want the client's vanishing after its FIN", err)
	}
}

// TestRelayResetsDestinationForUploadCutShort: a client that resets, or
// vanishes, before its FIN cut its upload short, whatever the stack
// still holds of it: the destination is reset, never given a FIN that
// would make a cut upload look whole.
func TestRelayResetsDestinationForUploadCutShort(t *testing.T) {
	for _, reset := range []bool{true, false} {
		name := map[bool]string{true: "reset", false: "vanish"}[reset]
		t.Run(name, func(t *testing.T) {
			gc, got, err := relayHeldInStack(t, false, reset)
			t.Logf("relay error %v; destination got %d, ended by %v; CloseWrite %v, Abort %v", err, got.n, got.err, gc.closedWrite.Load(), gc.aborted.Load())
			if gc.closedWrite.Load() || !gc.aborted.Load() || got.err == nil {
				t.Errorf("an upload cut short by the client was passed on as whole: CloseWrite %v, Abort %v, the destination's read ended by %v",
					gc.closedWrite.Load(), gc.aborted.Load(), got.err)
			}
			if err == nil {
				t.Error("the relay ended without an error")
			}
		})
	}
}

// failSignalConn is the client conn as the relay is given it, closing
// failed when a write to it fails.
type failSignalConn struct {
	*peekedConn
	failed chan struct{}
	once   sync.Once
}

func (c *failSignalConn) Write(b []byte) (int, error) {
	n, err := c.peekedConn.Write(b)
	if err != nil {
		c.once.Do(func() { close(c.failed) })
	}
	return n, err
}

// TestRelayClientWriteFailureKeepsWholeUpload: the destination's
// direction waits in a write to a client that reads nothing, and the
// client's whole upload and its FIN wait in the stack behind a slow
// destination, when the client resets. The write to the client fails
// first: that resets nothing, and the destination still gets every byte
// and the FIN. The failed write reset both sides, and the upload was cut
// at the destination.
func TestRelayClientWriteFailureKeepsWholeUpload(t *testing.T) {
	var fc *failSignalConn
	g := newGatedRelay(t, func(c net.Conn) net.Conn {
		fc = &failSignalConn{peekedConn: c.(*peekedConn), failed: make(chan struct{})}
		return fc
	})
	defer g.open()
	go func() {
		// More than the client, reading nothing, and the stack's send
		// buffer take: the relay's write to the client waits. It ends
		// once the appliance has closed the connection.
		chunk := make([]byte, 64<<10)
		for range 1024 {
			if _, err := g.server.Write(chunk); err != nil {
				return
			}
		}
	}()
	g.write(make([]byte, 1024))
	select {
	case <-g.gc.writing: // the relay holds the first KiB, and reads no more
	case <-time.After(5 * time.Second):
		t.Fatal("the relay did not write to the destination")
	}
	for end := time.Now().Add(10 * time.Second); g.conn.KickWriter(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("the client's send buffer did not fill")
		}
	}
	g.write(make([]byte, 100<<10))
	if terr := g.cep.Shutdown(tcpip.ShutdownWrite); terr != nil {
		t.Fatal(terr)
	}
	for end := time.Now().Add(5 * time.Second); tcp.EndpointState(g.cep.State()) != tcp.StateFinWait2; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("the client's FIN was not acknowledged (client state %v)", tcp.EndpointState(g.cep.State()))
		}
	}
	g.cep.Abort()
	select {
	case <-fc.failed:
	case <-time.After(5 * time.Second):
		t.Fatal("the relay's write to the client did not fail after its reset")
	}
	g.open()
	got, err := g.end()
	t.Logf("relay error %v; destination got %d, ended by %v; CloseWrite %v, Abort %v", err, got.n, got.err, g.gc.closedWrite.Load(), g.gc.aborted.Load())
	if want := int64(1024 + 100<<10); got.n != want {
		t.Errorf("the destination got %d bytes of a whole upload, want %d", got.n, want)
	}
	if !g.gc.closedWrite.Load() || g.gc.aborted.Load() {
		t.Errorf("a whole upload ended by the client's FIN was passed on as cut: CloseWrite %v, Abort %v", g.gc.closedWrite.Load(), g.gc.aborted.Load())
	}
}
