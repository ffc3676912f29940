package netstack_test

import (
	"io"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// SendQueued says how much of what was written to a conn its client has
// not acknowledged: 0 on a fresh conn, what is written while the client
// reads nothing (sent or still in the stack's buffer), and 0 again once
// the client has read it all. An HTTP/1.0 answer the destination cut is
// reset only once it says 0 (proxy/intercept, abortWhenSent): a reset
// throws the send queue away.
func TestSendQueuedFollowsTheClientsAcknowledgements(t *testing.T) {
	r := newConnRigTCP(t, netstack.TCPOptions{})
	cc, sc := r.dial()
	if n, err := sc.SendQueued(); err != nil || n != 0 {
		t.Fatalf("a fresh conn: SendQueued = %d, %v; want 0", n, err)
	}
	chunk := make([]byte, 64<<10)
	wrote := 0
	for range 64 {
		sc.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
		m, err := sc.Write(chunk)
		wrote += m
		if err != nil {
			break
		}
	}
	sc.SetWriteDeadline(time.Time{})
	// The client's window shuts: all that was written is unacknowledged,
	// but for what the client's receive buffer took and acknowledged.
	n, err := sc.SendQueued()
	t.Logf("wrote %d bytes the client has not read: SendQueued %d, %v", wrote, n, err)
	if err != nil || n <= 0 || n > wrote {
		t.Fatalf("SendQueued = %d, %v after %d bytes written and unread; want 0 < n <= %d", n, err, wrote, wrote)
	}
	if _, err := io.ReadFull(cc, make([]byte, wrote)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(waitFor)
	for {
		n, err = sc.SendQueued()
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the client read all %d bytes, and SendQueued still says %d", wrote, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Small writes, each acknowledged in turn.
	for i := range 20 {
		if _, err := sc.Write([]byte("0123456789")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(cc, make([]byte, 10)); err != nil {
			t.Fatal(err)
		}
		for n, err = sc.SendQueued(); err == nil && n != 0 && time.Now().Before(deadline); n, err = sc.SendQueued() {
			time.Sleep(time.Millisecond)
		}
		if err != nil || n != 0 {
			t.Fatalf("write %d, read by the client: SendQueued = %d, %v", i, n, err)
		}
	}
}
