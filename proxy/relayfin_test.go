package proxy

import (
	"errors"
	"io"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestCloseDeliveringThroughWrapper: a destination that spoke first (its
// early bytes held by the relay's prefixConn) has sent bytes the relay
// never read when the client breaks after its FIN. The relay's close still
// delivers what it sent, and a FIN, not a RST: the unread bytes are
// discarded under the wrapper. A close with them unread reset the
// connection at once.
func TestCloseDeliveringThroughWrapper(t *testing.T) {
	ours, dest := loopbackPair(t)
	if _, err := dest.Write([]byte("unread")); err != nil {
		t.Fatal(err)
	}
	rc, err := ours.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		var queued int
		_ = rc.Control(func(fd uintptr) { queued, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
		if queued == len("unread") {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("the destination's bytes did not arrive (%d queued)", queued)
		}
	}
	upload := make([]byte, 64<<10)
	if _, err := ours.Write(upload); err != nil {
		t.Fatal(err)
	}
	r := new(relay)
	closed := make(chan struct{})
	go func() { // it lingers until the destination has read it all
		defer close(closed)
		r.closeDelivering(&prefixConn{Conn: ours, prefix: []byte("early")})
	}()
	dest.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := io.Copy(io.Discard, dest)
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("closeDelivering still lingers after the destination read it all")
	}
	if cut := r.cut.Load(); cut != nil {
		t.Errorf("closeDelivering says the tail was cut: %v", cut.err)
	}
	if n != int64(len(upload)) || err != nil {
		t.Errorf("the destination read %d of %d bytes, ended by %v; want all and the FIN", n, len(upload), err)
	}
	if errors.Is(err, syscall.ECONNRESET) {
		t.Error("the destination was reset")
	}
}
