package netstack_test

import (
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// resetAndWaitBroken has the client of c reset the connection (cep's
// Abort: a RST) and waits until c sees it.
func resetAndWaitBroken(t *testing.T, c *netstack.Conn, abort func()) {
	t.Helper()
	abort()
	for end := time.Now().Add(waitFor); !c.Broken(); time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("not Broken after the client's RST")
		}
	}
}

// TestBrokenErrorAfterWriteTookIt: a writer (an HTTP/1 response's body
// copy, an HTTP/2 server's frame writer) takes the client's reset from the
// stack, which reports it once. BrokenError, asked after, still says the
// connection broke and why, and ClientBroke says it after Close: a client
// that reset mid-download had its session's watch told nothing, and the
// connection's record said ok.
func TestBrokenErrorAfterWriteTookIt(t *testing.T) {
	r := newConnRig(t)
	_, cep, c := r.dialEndpoint()
	resetAndWaitBroken(t, c, cep.Abort)
	n := newNotifier()
	c.OnReadable(n.fn) // after the stack announced the reset: only the Write can call it
	_, werr := c.Write([]byte("the response"))
	if werr == nil {
		t.Fatal("a write after the client's RST returned no error")
	}
	if n.calls.Load() == 0 {
		t.Error("the Write that took the client's reset returned without calling OnReadable's function")
	}
	why := c.BrokenError()
	t.Logf("write: %v; BrokenError: %v", werr, why)
	if why == nil || errors.Is(why, netstack.ErrResetAfterFIN) || errors.Is(why, syscall.ETIMEDOUT) {
		t.Errorf("BrokenError after a write took the client's reset: %v; want the reset", why)
	}
	c.Close()
	if got := c.ClientBroke(); got == nil || why == nil || got.Error() != why.Error() {
		t.Errorf("ClientBroke after Close: %v; want %v", got, why)
	}
}

// TestBrokenErrorWaitsForWriterKeepingBreak: BrokenError asked between a
// writer taking the client's reset from the stack and keeping it (the
// writer stands here: it holds the write lock, takes the stack's error,
// and keeps it later) waits for the writer, and says the reset: it said
// nil, and the watch left the session to end as if nothing had broken.
func TestBrokenErrorWaitsForWriterKeepingBreak(t *testing.T) {
	r := newConnRig(t)
	_, cep, c := r.dialEndpoint()
	resetAndWaitBroken(t, c, cep.Abort)
	keep := c.TakeErrorAsWriter()
	got := make(chan error, 1)
	go func() { got <- c.BrokenError() }()
	// A BrokenError that does not wait answers at once; one that waits is
	// let go after this long, by the writer keeping what it took.
	select {
	case why := <-got:
		keep()
		t.Fatalf("BrokenError while a writer held the client's reset it took: %v, without waiting for it", why)
	case <-time.After(100 * time.Millisecond):
	}
	keep()
	select {
	case why := <-got:
		if why == nil || errors.Is(why, netstack.ErrResetAfterFIN) {
			t.Errorf("BrokenError once the writer kept the client's reset: %v; want the reset", why)
		}
	case <-time.After(waitFor):
		t.Fatal("BrokenError did not return once the writer kept the client's reset")
	}
}
