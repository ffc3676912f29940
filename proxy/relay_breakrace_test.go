package proxy

import (
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// heldBreakConn is the client's netstack.Conn under a wrapper whose first
// BrokenError that finds the break holds its answer back until released:
// the goroutine that takes the stack's once-only report of the break
// (breakWhileCopying) descheduled there.
type heldBreakConn struct {
	net.Conn
	nc      *netstack.Conn
	hold    bool
	first   atomic.Bool
	taken   chan struct{}
	release chan struct{}
}

func (c *heldBreakConn) TryRead(b []byte) (int, error) { return c.nc.TryRead(b) }
func (c *heldBreakConn) Readable() bool                { return c.nc.Readable() }
func (c *heldBreakConn) OnReadable(fn func())          { c.nc.OnReadable(fn) }
func (c *heldBreakConn) Broken() bool                  { return c.nc.Broken() }
func (c *heldBreakConn) BrokenAfterFIN() bool          { return c.nc.BrokenAfterFIN() }
func (c *heldBreakConn) CloseWrite() error             { return c.nc.CloseWrite() }
func (c *heldBreakConn) Abort()                        { c.nc.Abort() }

func (c *heldBreakConn) BrokenError() error {
	err := c.nc.BrokenError()
	if err != nil && !c.first.Swap(true) {
		close(c.taken)
		if c.hold {
			<-c.release
		}
	}
	return err
}

// TestBreakAfterFINTakenAsCopyEndsIsKept: a client sends its upload and
// FIN (acknowledged), then resets while the relay's write to the
// destination waits. The relay's watch takes the stack's one report of the
// reset; if the copy reaches the client's FIN before the watch has kept
// it (the destination took the rest meanwhile), the copy's end
// (watchBroken) found no break, and the watch then found the copy ended
// and dropped it: no linger, and a record saying ok once the destination
// closed, for a client that reset.
func TestBreakAfterFINTakenAsCopyEndsIsKept(t *testing.T) { testBreakTakenAsCopyEnds(t, true) }

// TestBreakAfterFINTakenWhileCopyingIsKept: the same, the watch not held
// back.
func TestBreakAfterFINTakenWhileCopyingIsKept(t *testing.T) { testBreakTakenAsCopyEnds(t, false) }

func testBreakTakenAsCopyEnds(t *testing.T, hold bool) {
	g, hc, release := newHeldBreakRelay(t, hold, nil)
	defer release()
	defer g.open()
	g.write(make([]byte, 100<<10))
	if terr := g.cep.Shutdown(tcpip.ShutdownWrite); terr != nil {
		t.Fatal(terr)
	}
	for end := time.Now().Add(5 * time.Second); tcp.EndpointState(g.cep.State()) != tcp.StateFinWait2; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("FIN not acknowledged")
		}
	}
	g.cep.Abort() // the client's reset after its FIN, the write still waiting
	select {
	case <-hc.taken:
	case <-time.After(5 * time.Second):
		t.Fatal("the relay's watch never took the break")
	}
	g.open() // the destination takes the rest: the copy reaches the FIN
	// The destination (the rig's server) reads to the FIN, and stays open
	// and silent, as a destination of the client's own may.
	select {
	case got := <-g.got:
		if got.n != 1024+100<<10 {
			t.Errorf("destination got %d bytes (%v), want the whole upload", got.n, got.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("destination did not get the FIN")
	}
	time.Sleep(100 * time.Millisecond) // the copy's end looks for the break: nothing outside the relay tells when
	release()
	select {
	case err := <-g.done:
		if err == nil || !strings.Contains(err.Error(), "the client's connection broke after its FIN") {
			t.Errorf("relay ended with %v, want the client's break after its FIN", err)
		}
	case <-time.After(8 * time.Second):
		g.server.Close() // the destination closes at last
		err := <-g.done
		t.Errorf("relay not ended 8s after the client's reset after its FIN, the destination having all: the break was lost; ended once the destination closed with %v", err)
	}
}

// TestBreakBeforeFINAsStacksCloseKeepsItsWords: a client resets before
// its FIN while the relay's write to the destination waits, and the
// drain's flag is set after the relay's watch took the reset, before it
// decided (the stacks still open). The reset is the client's: the relay
// ends with its words, "the client's connection broke before its FIN",
// not the bare reset (review rev32c F4: the watch went by the flag alone
// and left the shutdown's words to endedError, which since d156638 adds
// them only to the stacks' own errors, so the record had neither).
func TestBreakBeforeFINAsStacksCloseKeepsItsWords(t *testing.T) {
	var closing atomic.Bool
	stalls := newStallWatch(time.Hour)
	stalls.stacksClosing = &closing
	g, hc, release := newHeldBreakRelay(t, true, stalls)
	defer release()
	defer g.open()
	g.cep.Abort() // the client's reset before its FIN, the write waiting
	select {
	case <-hc.taken:
	case <-time.After(5 * time.Second):
		t.Fatal("the relay's watch never took the break")
	}
	closing.Store(true) // the drain's end begins, the stacks still open
	release()
	// The watch resets the destination; the gate, standing for a host
	// socket that takes nothing, then lets the waiting write see it.
	for end := time.Now().Add(5 * time.Second); !g.gc.aborted.Load(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("the destination was not reset on the client's break")
		}
	}
	g.open()
	select {
	case err := <-g.done:
		if err == nil || !strings.Contains(err.Error(), "the client's connection broke before its FIN") || !strings.Contains(err.Error(), "connection reset by peer") {
			t.Errorf("relay ended with %v, want the client's break before its FIN, its reset", err)
		}
	case <-time.After(8 * time.Second):
		t.Fatal("relay not ended 8s after the destination's reset")
	}
}

// newHeldBreakRelay starts a gated relay (stalls its watch, if any) whose
// client conn is a heldBreakConn (hold: its watch held once it took the
// client's break, until release), and has the client's first 1,024 bytes
// reach the destination's write, which the gate then holds.
func newHeldBreakRelay(t *testing.T, hold bool, stalls *stallWatch) (*gatedRelay, *heldBreakConn, func()) {
	t.Helper()
	var hc *heldBreakConn
	g := newGatedRelayWatched(t, func(c net.Conn) net.Conn {
		nc := c.(wrappedConn).unwrap().(*netstack.Conn)
		hc = &heldBreakConn{Conn: c, nc: nc, hold: hold, taken: make(chan struct{}), release: make(chan struct{})}
		return hc
	}, stalls)
	var relOnce sync.Once
	release := func() { relOnce.Do(func() { close(hc.release) }) }
	g.write(make([]byte, 1024))
	select {
	case <-g.gc.writing:
	case <-time.After(5 * time.Second):
		release()
		g.open()
		t.Fatal("the relay did not write to the destination")
	}
	return g, hc, release
}
