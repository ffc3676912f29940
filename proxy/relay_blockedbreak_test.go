package proxy

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/hostconn"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
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
	// The rig's keepalive probes, but 25 of them unanswered before the
	// client is given up on, not 2: the rig's 700 ms from the client's
	// last segment ended a flow on a loaded machine whose client answered
	// late, recorded timeout, not reset. A client's reset needs none.
	r := newShareRigTCP(t, share, 300*time.Millisecond, Config{MaxLingeringPerClient: lingerCap},
		netstack.TCPOptions{KeepaliveIdle: 300 * time.Millisecond, KeepaliveInterval: 200 * time.Millisecond, KeepaliveCount: 25})
	r.p.SetWriteStallTimeout(5 * time.Minute)
	dst, _ := heldDest(t)
	// The records of the flows the test made, by their client's port: a
	// dial given up on (dialOnce, its SYN unanswered in 300 ms) may still
	// reach the appliance, which dials the destination and is refused the
	// handshake, and records that.
	made := map[uint16]bool{}
	recorded := func() (mine, others []records.Record) {
		for _, rec := range r.sink.parse(t) {
			if made[rec.ClientPort] {
				mine = append(mine, rec)
			} else {
				others = append(others, rec)
			}
		}
		return mine, others
	}
	for i := range flows {
		before := hostSocketQueues(t, dst.Port())
		c := r.dialWithinShare(t, dst, 20*time.Second)
		made[uint16(c.LocalAddr().(*net.TCPAddr).Port)] = true
		if finFirst {
			uploadUntilRelayBlocked(t, r.p, c, dst.Port(), before)
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
			// Recorded within a few seconds of the reset (a loaded
			// machine's), not the write-stall timeout: reset at once,
			// or cut short past the share.
			want := i + 1
			if finFirst {
				want = i + 1 - lingerCap
			}
			var n int
			for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
				if mine, _ := recorded(); len(mine) >= want {
					n = len(mine)
					break
				}
			}
			if n < want {
				mine, _ := recorded()
				t.Fatalf("flow %d: %d records 5s after its client's reset, want %d", i, len(mine), want)
			}
		}
	}
	held := hostFDSocketsTo(t, dst.Port())
	t.Logf("%d flows (flow share %d, share of lingering connections %d): %d host sockets to the destination open", flows, share, lingerCap, held)
	max := 0
	if finFirst {
		max = lingerCap
	}
	mine, others := recorded()
	if held > max {
		// Whether they are held for good or were closing: said, for
		// whoever looks into it.
		start, after := time.Now(), held
		for time.Since(start) < 5*time.Second && after > max {
			time.Sleep(10 * time.Millisecond)
			after = hostFDSocketsTo(t, dst.Port())
		}
		t.Errorf("one client holds %d host sockets to its destination after resetting every flow, want at most %d (flow share %d, share of lingering connections %d); %d records of its flows, %d of others; %d sockets %v later",
			held, max, share, lingerCap, len(mine), len(others), after, time.Since(start).Round(time.Millisecond))
	}
	for _, rec := range others {
		t.Logf("record of a dial given up on: client port %d, result %s, error %q", rec.ClientPort, rec.Result, rec.Error)
	}
	for _, rec := range mine {
		if rec.Result != "reset" {
			t.Errorf("record: client port %d, result %s, error %q; want reset", rec.ClientPort, rec.Result, rec.Error)
		}
		if finFirst && (!strings.Contains(rec.Error, "tail was not delivered") || !strings.Contains(rec.Error, "share of lingering connections")) {
			t.Errorf("record of a flow past the share of lingering connections: client port %d, error %q", rec.ClientPort, rec.Error)
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

// uploadUntilRelayBlocked has c upload, a chunk at a time, until the
// relay's write to its host socket is blocked: the host socket and the
// destination hold less than c sent and stop taking more, and p's stall
// watch has that socket's write waiting. Only then is the next chunk left
// in the stack, so the upload overshoots by at most a chunk, well within
// the stack's first receive window: a fixed size (3 MiB once) needed the
// window grown by moderation past what the kernel's send buffer took,
// which a loaded machine did not always do (the client's FIN then never
// left: FIN-WAIT-1). The queue standing still for 100 ms is not enough by
// itself: a loaded machine (2 CPU hogs, -race) held the relay's copy that
// long with 0.3 to 2.5 MB of the 2.8 MB the socket takes written, and the
// relay, scheduled again, wrote the rest without waiting (no relay write
// waits on the destination, 3 runs of 40; the tests that did not check
// went on without their premise). before is the host sockets to port
// before c was dialled; the new one is c's. It returns what c sent.
func uploadUntilRelayBlocked(t *testing.T, p *Proxy, c *rawClient, port uint16, before map[string]int64) (sent int64) {
	t.Helper()
	const chunk = 64 << 10
	var local string
	for end := time.Now().Add(5 * time.Second); local == "" && time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		for a := range hostSocketQueues(t, port) {
			if _, ok := before[a]; !ok {
				local = a
			}
		}
	}
	if local == "" {
		t.Fatal("no new host socket to the destination after the dial")
	}
	_, hexPort, _ := strings.Cut(local, ":")
	localPort, err := strconv.ParseUint(hexPort, 16, 16)
	if err != nil {
		t.Fatalf("host socket %q: %v", local, err)
	}
	queued := func() int64 { return hostSocketQueues(t, port)[local] }
	for sent < 32<<20 {
		if _, err := c.Write(make([]byte, chunk)); err != nil {
			t.Fatal(err)
		}
		sent += chunk
		// Until the relay has written it all, or its write waits and
		// nothing more moves for 100 ms while some of it is still short.
		last, still := queued(), time.Now()
		for end := time.Now().Add(10 * time.Second); last < sent && (time.Since(still) < 100*time.Millisecond || !relayWriteWaitsFrom(p, uint16(localPort))); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("the host socket's queue holds %d of %d bytes 10s on, the relay's write to it waiting %v", last, sent, relayWriteWaitsFrom(p, uint16(localPort)))
			}
			if q := queued(); q != last {
				last, still = q, time.Now()
			}
		}
		if last < sent {
			t.Logf("relay blocked: %d bytes sent, the host socket and destination hold %d", sent, last)
			return sent
		}
	}
	t.Fatalf("the host socket and destination took %d bytes and still took more", sent)
	return sent
}

// relayWriteWaitsFrom says whether p's stall watch has a write waiting on
// the host socket whose local port is port.
func relayWriteWaitsFrom(p *Proxy, port uint16) bool {
	p.stalls.mu.Lock()
	defer p.stalls.mu.Unlock()
	for ww := range p.stalls.dirs {
		hc, ok := ww.conn.(*hostconn.Conn)
		if !ok || ww.waitSince.Load() <= 0 {
			continue
		}
		if a, ok := hc.LocalAddr().(*net.TCPAddr); ok && a.Port == int(port) {
			return true
		}
	}
	return false
}

// hostSocketQueues reads the open sockets to port from
// /proc/net/tcp: by local address, the bytes each has yet to have
// acknowledged plus the bytes its peer (a listener's socket on port) has
// received and not read.
func hostSocketQueues(t *testing.T, port uint16) map[string]int64 {
	t.Helper()
	suffix := fmt.Sprintf(":%04X", port)
	out, peerRx := map[string]int64{}, map[string]int64{}
	procTCPRows(t, func(fs []string) {
		switch {
		case len(fs) < 5:
			return
		case fs[3] == "01", fs[3] == "04", fs[3] == "05", fs[3] == "08":
			// Established, or with a FIN sent or taken: the queues
			// still count.
		default:
			return
		}
		tx, rx, _ := strings.Cut(fs[4], ":")
		switch {
		case strings.HasSuffix(fs[2], suffix):
			n, _ := strconv.ParseInt(tx, 16, 64)
			out[fs[1]] += n
		case strings.HasSuffix(fs[1], suffix):
			n, _ := strconv.ParseInt(rx, 16, 64)
			peerRx[fs[2]] += n
		}
	})
	for a := range out {
		out[a] += peerRx[a]
	}
	return out
}
