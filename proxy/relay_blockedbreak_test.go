package proxy

import (
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// TestRelayBreakWhileWriteBlockedResetsDestination: a client uploads more
// than a destination of its own that reads nothing takes (the relay's
// write to it blocked) and resets, again and again. Nothing read the
// client while the write waited, so the reset went unseen, and the client's
// flow-table entry, forgotten after the transitory timeout, gave its flow
// share back: every flow kept its host socket until the write-stall
// timeout (20 flows, 20 sockets, outside the flow share and the share of
// lingering connections). A break before the FIN resets the destination
// at once, and the flow is recorded.
func TestRelayBreakWhileWriteBlockedResetsDestination(t *testing.T) {
	testBreakWhileWriteBlocked(t, false)
}

// TestRelayBreakAfterFINWhileWriteBlockedHeldToLingerShare: the same with
// an upload the stack took whole, and the client's FIN, acknowledged
// before its reset: the FIN waits in the stack behind the upload the
// relay has yet to write. The upload is whole, and the flow is in the
// client's share of lingering connections from the break; one past it is
// cut short at once. (A FIN the client could not send, its window closed
// by the upload, is a break before the FIN: the test above.)
func TestRelayBreakAfterFINWhileWriteBlockedHeldToLingerShare(t *testing.T) {
	testBreakWhileWriteBlocked(t, true)
}

func testBreakWhileWriteBlocked(t *testing.T, finFirst bool) {
	const (
		share     = 4
		lingerCap = 3
		flows     = 10
	)
	r := newShareRig(t, share, 300*time.Millisecond, Config{MaxLingeringPerClient: lingerCap})
	r.p.SetWriteStallTimeout(5 * time.Minute)
	dst, _ := heldDest(t)
	for i := range flows {
		c := r.dialWithinShare(t, dst, 20*time.Second)
		if finFirst {
			// More than the host socket and the destination take, less
			// than they and the stack's window do.
			if _, err := c.Write(make([]byte, 3<<20)); err != nil {
				t.Fatal(err)
			}
			if err := c.halfClose(); err != nil {
				t.Fatal(err)
			}
			waitFINAcked(t, c)
		} else {
			_ = c.SetWriteDeadline(time.Now().Add(700 * time.Millisecond))
			_, _ = c.Write(make([]byte, 8<<20)) // until the windows close
		}
		c.reset()
		if !finFirst || i >= lingerCap {
			// Recorded within a second or so of the reset: reset at once,
			// or cut short past the share.
			want := i + 1
			if finFirst {
				want = i + 1 - lingerCap
			}
			var n int
			for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
				if n = len(r.sink.parse(t)); n >= want {
					break
				}
			}
			if n < want {
				t.Fatalf("flow %d: %d records 2s after its client's reset, want %d", i, n, want)
			}
		}
	}
	held := hostFDSocketsTo(t, dst.Port())
	t.Logf("%d flows (flow share %d, share of lingering connections %d): %d host sockets to the destination open", flows, share, lingerCap, held)
	max := 0
	if finFirst {
		max = lingerCap
	}
	if held > max {
		t.Errorf("one client holds %d host sockets to its destination after resetting every flow, want at most %d (flow share %d, share of lingering connections %d)", held, max, share, lingerCap)
	}
	for _, rec := range r.sink.parse(t) {
		if rec.Result != "reset" {
			t.Errorf("record: result %s, error %q; want reset", rec.Result, rec.Error)
		}
		if finFirst && (!strings.Contains(rec.Error, "tail was not delivered") || !strings.Contains(rec.Error, "share of lingering connections")) {
			t.Errorf("record of a flow past the share of lingering connections: error %q", rec.Error)
		}
	}
}

// waitFINAcked waits until the stack has acknowledged c's upload and its
// FIN (FIN-WAIT-2).
func waitFINAcked(t *testing.T, c *rawClient) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if tcp.EndpointState(c.ep.State()) == tcp.StateFinWait2 {
			return
		}
	}
	t.Fatalf("the client's upload and FIN not acknowledged within 5s: state %v", tcp.EndpointState(c.ep.State()))
}

// hostFDSocketsTo is hostSocketsTo counting only sockets an fd of this
// process holds (an inode), not the kernel's orphans a close left.
func hostFDSocketsTo(t *testing.T, port uint16) int {
	t.Helper()
	return countHostSockets(t, port, true)
}
