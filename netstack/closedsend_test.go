package netstack_test

import (
	"context"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// TestClosedConnZeroWindowBounded: a handler fills a client's window and
// its own send buffer, then closes, as a relay does once its destination
// sent a response and its FIN. Clients that keep their window shut (they
// never read; their stack answers every zero-window probe) must not keep
// the queued bytes for ever: within the closed-send timeout the stack
// resets them and counts them timed out. A client that reads after the
// Close still gets every byte and the FIN.
func TestClosedConnZeroWindowBounded(t *testing.T) {
	// The reading client's window is shut from before its write deadline
	// (300 ms) until it starts reading, all within this timeout: 3 s leaves
	// it seconds of margin under -race on loaded cores, where 1 s left it
	// about 700 ms.
	const timeout = 3 * time.Second
	r := newConnRigTCP(t, netstack.TCPOptions{ClosedSendTimeout: timeout})
	type flow struct {
		cc    io.ReadCloser
		wrote int64
	}
	fill := func() flow {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		cc, err := r.client.DialTCPFrom(ctx, netip.AddrPortFrom(connClient, 0), connDest)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		sc := r.accepted()
		var took int64
		chunk := make([]byte, 16<<10)
		for {
			// A write that waits 300 ms: the window and the send buffer are full.
			sc.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
			m, err := sc.Write(chunk)
			took += int64(m)
			if err != nil {
				break
			}
		}
		if err := sc.Close(); err != nil {
			t.Fatal(err)
		}
		return flow{cc, took}
	}
	const stuck = 4
	var held []flow
	for range stuck {
		held = append(held, fill())
	}
	reader := fill()
	got := make(chan int64, 1)
	go func() {
		m, err := io.Copy(io.Discard, reader.cc)
		if err != nil {
			t.Errorf("the reading client: %v after %d bytes", err, m)
		}
		got <- m
	}()
	select {
	case m := <-got:
		if m != reader.wrote {
			t.Errorf("the reading client got %d bytes of %d", m, reader.wrote)
		}
	case <-time.After(waitFor):
		t.Fatal("the reading client got no FIN")
	}

	deadline := time.Now().Add(timeout + waitFor)
	for r.srv.TCPTimedOut() < stuck && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := r.srv.TCPTimedOut(); n != stuck {
		t.Fatalf("the stack gave up on %d closed connections whose clients keep a zero window, want %d", n, stuck)
	}
	for i, f := range held {
		m, err := io.Copy(io.Discard, f.cc)
		if err == nil || m >= f.wrote {
			t.Errorf("stuck client %d: read %d of %d bytes, err %v; want a reset before the end", i, m, f.wrote, err)
		}
	}
}
