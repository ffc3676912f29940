package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// These tests show the buffers of a flow whose write waits lowered to
// PressureBufferCap once memory is short, what a client that trickles
// would otherwise keep for as long as it likes, and that nothing of the
// flow is lost by it.

// patterned is the byte at offset i of what these tests send.
func patterned(i int64) byte { return byte(i % 251) }

// readPattern reads r to its end, checking the pattern from offset from,
// and returns how much it read.
func readPattern(r io.Reader, from int64) (int64, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	for off := from; ; off++ {
		b, err := br.ReadByte()
		if err == io.EOF {
			return off - from, nil
		}
		if err != nil {
			return off - from, err
		}
		if b != patterned(off) {
			return off - from, fmt.Errorf("byte %d is %d, want %d", off, b, patterned(off))
		}
	}
}

// waitingClientConn returns the client connection, in the appliance's
// stack, of the one flow whose write waits.
func (r *stallRig) waitingClientConn(t *testing.T) *netstack.Conn {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		r.p.stalls.mu.Lock()
		var c *netstack.Conn
		for ww := range r.p.stalls.dirs {
			if ww.waitSince.Load() <= 0 {
				continue
			}
			if nc, ok := ww.conn.(*netstack.Conn); ok {
				c = nc
			} else {
				c = ww.client
			}
		}
		r.p.stalls.mu.Unlock()
		if c != nil {
			return c
		}
	}
	t.Fatal("no write of the flow waits")
	return nil
}

// capped waits until c's buffers are at most PressureBufferCap.
func (r *stallRig) capped(t *testing.T, c *netstack.Conn) {
	t.Helper()
	r.p.SetMemoryPressure(netstack.MemoryShort)
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		send, recv := c.BufferSizes()
		if send <= PressureBufferCap && recv <= PressureBufferCap {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("buffers still %d KiB to send and %d KiB to receive 5 s after memory turned short", send>>10, recv>>10)
		}
	}
	if got := r.p.Stats().TCPBuffersCapped; got != 1 {
		t.Errorf("tcp_buffers_capped %d, want 1", got)
	}
}

// A client stops reading a download: once memory is short, the flow's
// send buffer in the appliance's stack is capped (it was 256 KiB or more),
// and when the client reads again it gets every byte, in order.
func TestStalledDownloadBuffersCappedUnderPressure(t *testing.T) {
	r := newStallRig(t, time.Hour)
	const total = 16 << 20
	var sent atomic.Int64
	dst := destination(t, func(c *net.TCPConn) {
		if sendPatternFrom(c, 0, total, &sent) == nil {
			c.CloseWrite()
		}
	})
	c := r.dial(t, dst)
	const first = 1 << 20
	if _, err := io.ReadFull(c, make([]byte, first)); err != nil {
		t.Fatal(err)
	}
	stalled(t, &sent)
	conn := r.waitingClientConn(t)
	if send, _ := conn.BufferSizes(); send <= PressureBufferCap {
		t.Fatalf("send buffer %d KiB before memory turned short: the test shows nothing", send>>10)
	}
	r.capped(t, conn)
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	n, err := readPattern(c, first)
	if err != nil || first+n != total {
		t.Fatalf("read %d bytes of %d after the cap: %v", first+n, total, err)
	}
	c.Close()
	rec, ok := r.record(t, 5*time.Second)
	if !ok {
		t.Fatal("no record")
	}
	if rec.Result != "ok" || rec.BytesIn != total {
		t.Errorf("record: result %q, %d bytes in; want ok, %d", rec.Result, rec.BytesIn, total)
	}
}

// A destination stops reading an upload: once memory is short, the
// receive buffer in the appliance's stack that the client fills is
// capped, and when the destination reads again it gets every byte.
func TestStalledUploadBuffersCappedUnderPressure(t *testing.T) {
	r := newStallRig(t, time.Hour)
	const total = 16 << 20
	resume := make(chan struct{})
	got := make(chan error, 1)
	var read int64
	dst := destination(t, func(c *net.TCPConn) {
		if _, err := io.ReadFull(c, make([]byte, 1<<20)); err != nil {
			got <- err
			return
		}
		<-resume
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		n, err := readPattern(c, int64(len(hello))+1<<20)
		read = n
		got <- err
	})
	c := r.dial(t, dst)
	var sent atomic.Int64
	// hello was the first bytes of the pattern's offsets: the pattern
	// goes on from there.
	sent.Store(int64(len(hello)))
	go func() {
		if sendPatternFrom(c, int64(len(hello)), total, &sent) == nil {
			c.(interface{ CloseWrite() error }).CloseWrite()
		}
	}()
	stalled(t, &sent)
	conn := r.waitingClientConn(t)
	if _, recv := conn.BufferSizes(); recv <= PressureBufferCap {
		t.Fatalf("receive buffer %d KiB before memory turned short: the test shows nothing", recv>>10)
	}
	r.capped(t, conn)
	close(resume)
	if err := <-got; err != nil || int64(len(hello))+1<<20+read != total {
		t.Fatalf("the destination read %d bytes of %d after the cap: %v", int64(len(hello))+1<<20+read, total, err)
	}
}

// sendPatternFrom writes the pattern's bytes from offset from up to n to
// w, counting them in sent.
func sendPatternFrom(w io.Writer, from, n int64, sent *atomic.Int64) error {
	buf := make([]byte, 32<<10)
	for off := from; off < n; {
		m := min(int64(len(buf)), n-off)
		for i := range m {
			buf[i] = patterned(off + i)
		}
		k, err := w.Write(buf[:m])
		off += int64(k)
		sent.Add(int64(k))
		if err != nil {
			return err
		}
	}
	return nil
}
