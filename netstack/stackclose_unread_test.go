package netstack_test

import (
	"errors"
	"io"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// TestStackCloseWithUnreadUploadAndFIN: the client's upload and its FIN
// are in the stack, unread by the server's reader (a relay not yet
// scheduled), when the stacks close. gVisor's abort purges what is unread
// and keeps the FIN: the reader got the end of the stream, and a relay
// passed a clean FIN on to the destination after an upload cut short
// (review rev33e F1: 16,389 of 32,768 bytes, then EOF, at the
// destination). Reads must say the stacks' close, as BrokenError does.
func TestStackCloseWithUnreadUploadAndFIN(t *testing.T) {
	r := newConnRig(t)
	cc, c := r.dial()
	upload := make([]byte, 8000)
	if _, err := cc.Write(upload); err != nil {
		t.Fatal(err)
	}
	if err := cc.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(waitFor); !c.FINIn(); time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("the client's FIN did not come")
		}
	}
	r.srv.Close()
	for end := time.Now().Add(waitFor); !c.Broken(); time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("not Broken after the stacks' close")
		}
	}
	got := 0
	var rerr error
	b := make([]byte, 64<<10)
	for range 100 {
		n, err := c.TryRead(b)
		got += n
		if err != nil && !errors.Is(err, netstack.ErrWouldBlock) {
			rerr = err
			break
		}
		if n == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	if rerr == io.EOF && got < len(upload) {
		t.Errorf("the reader got %d of the %d bytes the client sent and then the end of the stream: a relay passes a clean FIN on after a cut upload", got, len(upload))
	}
	if got < len(upload) && !netstack.IsStackClose(rerr) {
		t.Errorf("the read after %d of %d bytes says %v, want the stacks' close", got, len(upload), rerr)
	}
	if why := c.BrokenError(); !netstack.IsStackClose(why) {
		t.Errorf("BrokenError says %v for a connection the stacks' close aborted, want the stacks' close", why)
	}
}
