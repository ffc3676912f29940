package netstack_test

import (
	"errors"
	"io"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// waitSignal is a WriteWaiter that says when a Write first waits.
type waitSignal chan struct{}

func (w waitSignal) WriteWaiting(waiting bool) {
	if waiting {
		select {
		case w <- struct{}{}:
		default:
		}
	}
}

// TestReadsAfterStackCloseTookByWriteNotEOF: the stacks close (the
// drain's end) while a Write to the client waits for room and the client,
// which sent no FIN, is mid-upload. The Write takes the stack's one
// report ("operation aborted", not the client's doing); the reads after it
// must say the abort, not io.EOF: that is the client's FIN, and a relay
// passes it on, a clean end for an upload the shutdown cut.
func TestReadsAfterStackCloseTookByWriteNotEOF(t *testing.T) {
	r := newConnRig(t)
	cc, c := r.dial()
	if _, err := cc.Write([]byte("partial upload")); err != nil {
		t.Fatal(err)
	}
	wrote := waitingWrite(t, c)
	r.srv.Close()
	select {
	case err := <-wrote:
		if err == nil {
			t.Fatal("the Write succeeded after the stacks closed")
		}
	case <-time.After(waitFor):
		t.Fatal("the Write did not return after the stacks closed")
	}
	buf := make([]byte, 64)
	// What the client sent may still be read first, or have gone with
	// the abort; then the reads end, and never on the end of the stream.
	errs := 0
	for range 6 {
		n, err := c.TryRead(buf)
		if n > 0 {
			continue
		}
		if err == nil || errors.Is(err, io.EOF) || errors.Is(err, netstack.ErrWouldBlock) {
			t.Errorf("TryRead after the stacks closed: %v; want the abort, not the end of the stream", err)
		}
		if _, err := c.Read(buf); err == nil || errors.Is(err, io.EOF) {
			t.Errorf("Read after the stacks closed: %v; want the abort, not the end of the stream", err)
		}
		if errs++; errs == 2 {
			break
		}
	}
	if c.ClientBroke() != nil {
		t.Errorf("ClientBroke %v: the client broke nothing, the stacks closed", c.ClientBroke())
	}
}

// waitingWrite starts a Write of 16 MiB to c, whose client reads none of
// it, and returns once the Write waits; its error comes on the channel.
func waitingWrite(t *testing.T, c *netstack.Conn) <-chan error {
	t.Helper()
	waiting := make(waitSignal, 1)
	c.OnWriteWait(waiting)
	wrote := make(chan error, 1)
	go func() {
		_, err := c.Write(make([]byte, 16<<20))
		wrote <- err
	}()
	select {
	case <-waiting:
	case <-time.After(waitFor):
		t.Fatal("the Write to a client that reads nothing did not wait")
	}
	return wrote
}
