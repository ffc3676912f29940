package proxy

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// TestRelayDestinationResetWordedOneWay: the same destination (4 KiB receive
// buffer, reads a quarter of the upload, resets) while the relay lingers,
// twice: once with the destination's direction still reading (it takes
// the reset), once with it ended before (the destination talked once
// the client broke: that direction ended on its failed write to the
// client, and Linger reads the reset itself). The records agree: one
// said the tail was not delivered, the other that the destination's
// connection ended, for one event.
func TestRelayDestinationResetWordedOneWay(t *testing.T) {
	const size = 256 << 10
	var errs [2]string
	var outs [2]int64
	var reads [2]int64
	for i, halfCloseFirst := range []bool{false, true} {
		p, sink, client := quickKeepaliveRig(t)
		p.SetWriteStallTimeout(10 * time.Second)
		r := &stallRig{p: p, sink: sink, client: client}
		ln := smallBufferListener(t)
		got := make(chan int64, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if halfCloseFirst {
				// talks once the client broke: the destination's
				// direction ends on its failed write to the client
				time.Sleep(400 * time.Millisecond)
				_, _ = c.Write([]byte("tick\n"))
			}
			time.Sleep(800 * time.Millisecond)
			n, _ := io.CopyN(io.Discard, c, 64<<10)
			_ = c.(*net.TCPConn).SetLinger(0)
			c.Close()
			got <- n
		}()
		c := dialRaw(t, client, ln.Addr().(*net.TCPAddr).AddrPort())
		c.SetDeadline(time.Now().Add(30 * time.Second))
		uploadWholeThenReset(t, c, size)
		rec, ok := r.record(t, 10*time.Second)
		n := <-got
		if !ok {
			t.Fatalf("run %d: no record", i)
		}
		errs[i], outs[i], reads[i] = rec.Error, rec.BytesOut, n
		t.Logf("destination direction ended first %v: the destination read %d and reset; record %s bytes_out %d %q", halfCloseFirst, n, rec.Result, rec.BytesOut, rec.Error)
	}
	tail := func(s string) bool { return strings.Contains(s, "tail was not delivered") }
	if tail(errs[0]) != tail(errs[1]) {
		t.Errorf("the same destination reset recorded two ways: %q vs %q", errs[0], errs[1])
	}
}
