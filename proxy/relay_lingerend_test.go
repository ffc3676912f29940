package proxy

import (
	"context"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// readAllThenResetDest listens on loopback with a 4 KiB receive buffer;
// its one connection reads nothing for wait, then reads to the end of the
// stream and resets at once (SO_LINGER 0, as some servers close), and
// says how many bytes it read.
func readAllThenResetDest(t *testing.T, wait time.Duration) (netip.AddrPort, <-chan int64) {
	t.Helper()
	ln := smallBufferListener(t)
	got := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		time.Sleep(wait) // a slow reader: the scenario, not a wait for an event
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, _ := io.Copy(io.Discard, c)
		_ = c.(*net.TCPConn).SetLinger(0)
		c.Close()
		got <- n
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort(), got
}

// TestRelayDestinationResetAfterWholeUploadNotCut: a client uploads and
// sends its FIN, then resets; the destination, slow, reads it all and the
// FIN while the relay lingers, then resets. It had the whole upload: the
// record's bytes_out counts it all, and its error says the destination
// reset, never that the tail was not delivered. The destination's reset
// aborted the socket under the linger, which took the count of an
// earlier look for what was left: "the upload's tail was not delivered",
// bytes_out 4096 of 262,144, 5 runs in 5.
func TestRelayDestinationResetAfterWholeUploadNotCut(t *testing.T) {
	const size = 256 << 10
	for i := range 3 {
		p, sink, client := quickKeepaliveRig(t)
		r := &stallRig{p: p, sink: sink, client: client}
		dst, got := readAllThenResetDest(t, 800*time.Millisecond)
		c := dialRaw(t, client, dst)
		c.SetDeadline(time.Now().Add(30 * time.Second))
		uploadWholeThenReset(t, c, size)
		var n int64
		select {
		case n = <-got:
		case <-time.After(15 * time.Second):
			t.Fatal("the destination's read did not end")
		}
		rec, ok := r.record(t, 10*time.Second)
		if !ok {
			t.Fatal("no record")
		}
		if n != size {
			t.Fatalf("run %d: the destination read %d of %d bytes", i, n, size)
		}
		if strings.Contains(rec.Error, "not delivered") || rec.BytesOut != size {
			t.Errorf("run %d: the destination read all %d bytes and the FIN, but the record says bytes_out %d, %q", i, n, rec.BytesOut, rec.Error)
		}
	}
}

// TestRelayLingerFollowsShortenedStallTimeout: a flow whose client broke
// after its FIN lingers for the write-stall timeout in force; one
// shortened meanwhile (as memory turning short does) ends the linger
// under way by the new bound. It kept the bound of its start: 40 s here,
// the ample-memory default's 15 min in production, while every stalled
// write was cut at 10 s.
func TestRelayLingerFollowsShortenedStallTimeout(t *testing.T) {
	const size = 256 << 10
	r := lingerOnDeafDest(t, 40*time.Second, size)
	p := r.p
	time.Sleep(500 * time.Millisecond) // the reset taken, the linger begun: no event says so
	p.SetWriteStallTimeout(time.Second)
	rec, ok := r.record(t, 8*time.Second)
	if !ok {
		t.Fatalf("the write-stall timeout is %v, but the lingering flow still had no record 8 s later", p.WriteStallTimeout())
	}
	if !strings.Contains(rec.Error, "tail was not delivered") {
		t.Errorf("record %s %q; want the tail not delivered", rec.Result, rec.Error)
	}
}

// TestShutdownEndsLingerUnderWay: the stacks close (the drain's end)
// while a flow whose client broke after its FIN lingers towards a
// destination that reads nothing: the linger ends, and the flow's record,
// within the drain's wait, says the tail was not delivered, for the
// shutdown. The linger outlived the stacks by its whole bound (15 min by
// default), and the drain lost the record.
func TestShutdownEndsLingerUnderWay(t *testing.T) {
	const size = 256 << 10
	r, srv := shutdownRig(t)
	p, client := r.p, r.client
	release := make(chan struct{})
	defer close(release)
	dst, _ := slowReadDest(t, release)
	c := dialRaw(t, client, dst)
	c.SetDeadline(time.Now().Add(60 * time.Second))
	uploadWholeThenReset(t, c, size)
	time.Sleep(500 * time.Millisecond) // the reset taken, the linger begun: no event says so
	p.StacksClosing()
	srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := p.Wait(ctx); err != nil {
		t.Fatalf("flow still open 3 s after the stacks closed (stall bound %v): its record would be lost at shutdown", p.WriteStallTimeout())
	}
	rec, ok := r.record(t, time.Second)
	if !ok || !strings.Contains(rec.Error, "tail was not delivered") || !strings.Contains(rec.Error, "shutdown") {
		t.Errorf("record %v %s %q; want the tail not delivered, for the shutdown", ok, rec.Result, rec.Error)
	}
}
