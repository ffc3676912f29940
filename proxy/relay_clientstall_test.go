package proxy

import (
	"net"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A client that stops reading its download (the relay's write to the
// client stalls) while it trickles an upload to a live destination that
// reads it all but delays its ACKs: the stall resets both, and bytes_out
// leaves out only what was never sent, never what the destination had
// and had not yet acknowledged. Taken for a wait on the destination that
// timed out, the stall left out every unacknowledged byte, and bytes_out
// fell short of what the destination had (8 of 8 runs; review r1s24 F2).
func TestRelayClientStallCountsUploadInFlight(t *testing.T) {
	r := newStallRig(t, time.Second)
	dests := make(chan *net.TCPConn, 1)
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	dst := destination(t, func(c *net.TCPConn) {
		dests <- c
		// A big download, which the client never reads.
		go func() {
			b := make([]byte, 64<<10)
			for {
				if _, err := c.Write(b); err != nil {
					return
				}
			}
		}()
		// Delayed ACKs (pingpong mode), renewed as they lapse.
		rc, _ := c.SyscallConn()
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
			if rc.Control(func(fd uintptr) { _ = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_QUICKACK, 0) }) != nil {
				return
			}
		}
	})
	c := r.dial(t, dst)
	var sent atomic.Int64
	go func() {
		b := make([]byte, 100)
		for {
			select {
			case <-stop:
				return
			case <-time.After(3 * time.Millisecond):
			}
			n, err := c.Write(b)
			sent.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	rec, ok := r.record(t, 20*time.Second)
	if !ok {
		t.Fatal("the stalled flow was never recorded")
	}
	dc := <-dests
	got := destinationHas(t, dc, int64(len(hello)))
	t.Logf("record %s %q bytes_out %d; client sent %d; destination has %d", rec.Result, rec.Error, rec.BytesOut, sent.Load()+int64(len(hello)), got)
	r.checkStalled(t, rec, "client")
	if rec.BytesOut < got {
		t.Errorf("bytes_out %d is less than the %d bytes the destination has (records.md: it never counts less than the destination read, bar a timed-out destination)", rec.BytesOut, got)
	}
	checkVouched(t, rec, got)
}
