package netstack_test

import (
	"errors"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// TestBrokenErrorAfterReadTookIt: a reader waiting on the connection
// (an HTTP/2 server's) takes the client's reset from the stack, which
// reports it once. Broken and BrokenError, asked after, still say the
// connection broke and why: a session's client watch, told nothing, let
// the session end as if the client had closed cleanly, and its record
// said ok.
func TestBrokenErrorAfterReadTookIt(t *testing.T) {
	r := newConnRig(t)
	_, cep, c := r.dialEndpoint()
	read := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 8))
		read <- err
	}()
	cep.Abort()
	var rerr error
	select {
	case rerr = <-read:
	case <-time.After(waitFor):
		t.Fatal("the read did not return after the client's RST")
	}
	if rerr == nil {
		t.Fatal("the read after the client's RST returned no error")
	}
	if !c.Broken() {
		t.Fatal("not Broken after the client's RST")
	}
	why := c.BrokenError()
	t.Logf("read: %v; BrokenError: %v", rerr, why)
	if why == nil || errors.Is(why, netstack.ErrResetAfterFIN) {
		t.Errorf("BrokenError after a read took the client's reset: %v; want the reset", why)
	}
}
