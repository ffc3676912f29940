package capture

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

// TestCloseContextBoundedOnStalledWriter: a pcap writer stuck in a write
// (here the write end of a pipe nobody reads, which blocks as a stalled
// disk does once its 64 KiB are full) does not hold CloseContext past its
// deadline; the packets it never got to are counted as dropped.
func TestCloseContextBoundedOnStalledWriter(t *testing.T) {
	c, err := New(Config{PcapDir: t.TempDir(), QueuePackets: 1024})
	if err != nil {
		t.Fatal(err)
	}
	r, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	// Set before the first packet: the writer reads it when that packet
	// makes it open a file, after the queue's channel send.
	c.pcap.create = func(string) (*os.File, error) { return pw, nil }
	pkt := tcpPacket(t, client, dest, bytes.Repeat([]byte("x"), 1400))
	p := parsed(t, pkt)
	// 1,000 packets of 1.4 KB: more than the writer's 256 KiB buffer and
	// the pipe's 64 KiB together, so the writer blocks with many queued.
	for range 1000 {
		c.Packet(epA, 1, false, time.Now().UnixNano(), p, pkt)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	errc := make(chan error, 1)
	go func() { errc <- c.CloseContext(ctx) }()
	select {
	case err = <-errc:
	case <-time.After(5 * time.Second):
		r.Close() // unblock the writer, or the test binary hangs
		t.Fatal("CloseContext still waiting 5s after its 300ms deadline")
	}
	// Generous: under a loaded -race run the goroutines wake late; a
	// CloseContext that ignored its deadline would wait for the writer,
	// which stays blocked until r.Close.
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("CloseContext took %s with a 300ms deadline", took)
	}
	if err == nil || !strings.Contains(err.Error(), "gave up") {
		t.Errorf("CloseContext = %v, want an error saying it gave up", err)
	}
	st := c.Stats().Pcap
	t.Logf("after close: %+v, err %v", st.SinkStats, err)
	if st.Dropped == 0 {
		t.Error("no packets counted as dropped")
	}
	// The writer, unstuck, writes nothing more and stops.
	r.Close()
	select {
	case <-c.stopped:
	case <-time.After(5 * time.Second):
		t.Error("the writer did not stop once its write returned")
	}
	// abandon counts what is queued as dropped while the writer may be
	// taking one of those packets (queue.go): that one may be counted
	// twice, once dropped and once written or failed. No more than that.
	if st := c.Stats().Pcap; st.Packets+st.Dropped+st.Errors > 1001 {
		t.Errorf("packets %d + dropped %d + errors %d: more than the 1000 handed in, and the one abandon may count twice", st.Packets, st.Dropped, st.Errors)
	}
}
