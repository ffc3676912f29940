package netstack_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"gvisor.dev/gvisor/pkg/tcpip"
)

// TestIsStackClose: IsStackClose tells the errors the stacks' close (the
// drain's end) gives a client's conn from those its client's own doing
// gives, so that a record says the appliance's shutdown ended a flow only
// when it did (review rev32a F3). A Read waiting when the stacks close,
// and a TryRead after, say the stack's abort; a conn closed says
// net.ErrClosed; the client's reset and FIN say theirs.
func TestIsStackClose(t *testing.T) {
	t.Run("stacks close under a Read", func(t *testing.T) {
		r := newConnRig(t)
		_, c := r.dial()
		read := make(chan error, 1)
		go func() {
			_, err := c.Read(make([]byte, 64))
			read <- err
		}()
		time.Sleep(50 * time.Millisecond) // the Read waits
		r.srv.Close()
		wantStackClose(t, "the Read", waitErr(t, read), true)
	})
	t.Run("stacks close, then TryRead", func(t *testing.T) {
		r := newConnRig(t)
		_, c := r.dial()
		r.srv.Close()
		wantStackClose(t, "the TryRead", tryReadErr(t, c), true)
	})
	t.Run("conn closed", func(t *testing.T) {
		r := newConnRig(t)
		_, c := r.dial()
		c.Close()
		wantStackClose(t, "the TryRead", tryReadErr(t, c), true)
	})
	t.Run("client reset", func(t *testing.T) {
		r := newConnRig(t)
		_, cep, c := r.dialEndpoint()
		cep.Abort()
		wantStackClose(t, "the Read", func() error { _, err := c.Read(make([]byte, 64)); return err }(), false)
	})
	t.Run("client FIN", func(t *testing.T) {
		r := newConnRig(t)
		cc, c := r.dial()
		cc.Close()
		wantStackClose(t, "the Read", func() error { _, err := c.Read(make([]byte, 64)); return err }(), false)
	})
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{io.EOF, false},
		{&net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}, false},
		{&net.OpError{Op: "read", Net: "tcp", Err: syscall.ETIMEDOUT}, false},
		{&net.OpError{Op: "read", Net: "udp", Err: syscall.ECONNREFUSED}, false},
		{&net.OpError{Op: "read", Net: "tcp", Err: netstack.ErrMemoryReclaimed}, false},
		{fmt.Errorf("sniff: waiting for the first bytes: %w", &net.OpError{Op: "read", Net: "tcp", Err: errors.New("operation aborted")}), true},
		{fmt.Errorf("the client's side closed: %w", &net.OpError{Op: "read", Net: "udp", Err: net.ErrClosed}), true},
		{errors.Join(errors.Join(errors.New("operation aborted"))), true},
		{fmt.Errorf("the client's connection broke after its FIN: %w", netstack.ErrResetAfterFIN), false},
		{errors.Join(netstack.ErrResetAfterFIN, errors.New("operation aborted")), true},
		{errors.Join(syscall.ECONNRESET, errors.New("the upload's tail was not delivered")), false},
	} {
		if got := netstack.IsStackClose(tc.err); got != tc.want {
			t.Errorf("IsStackClose(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// TestBrokenErrorTellsResetAfterFINFromStackClose: gVisor reports a
// client's reset after its FIN (a RST in CLOSE-WAIT) with the very error
// of its own abort of the connection as the stacks close (ErrAborted,
// "operation aborted"), which a conn in CLOSE-WAIT gets too; BrokenError
// tells them apart by the endpoint's state (CLOSED after the client's
// reset, the error state after the abort), every time it is asked, so
// that a client that resets after its FIN as the stacks begin closing is
// recorded as what it did, not as the shutdown (review rev32c F3). Both
// said ErrResetAfterFIN, which IsStackClose took for the stacks' close.
func TestBrokenErrorTellsResetAfterFINFromStackClose(t *testing.T) {
	finRead := func(t *testing.T, r *connRig) (tcpip.Endpoint, *netstack.Conn) {
		t.Helper()
		cc, cep, c := r.dialEndpoint()
		if err := cc.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(waitFor))
		if _, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("read %v, want EOF: the client's FIN", err)
		}
		return cep, c
	}
	broken := func(t *testing.T, c *netstack.Conn) {
		t.Helper()
		for end := time.Now().Add(waitFor); !c.Broken(); time.Sleep(time.Millisecond) {
			if time.Now().After(end) {
				t.Fatal("not Broken")
			}
		}
	}
	t.Run("client reset after its FIN", func(t *testing.T) {
		r := newConnRig(t)
		cep, c := finRead(t, r)
		cep.Abort()
		broken(t, c)
		for i := range 2 {
			why := c.BrokenError()
			if !errors.Is(why, netstack.ErrResetAfterFIN) || netstack.IsStackClose(why) {
				t.Errorf("BrokenError (call %d): %v, IsStackClose %v; want ErrResetAfterFIN, not the stacks' close", i+1, why, netstack.IsStackClose(why))
			}
		}
		// The stacks' close after it changes nothing: the client's reset
		// came first.
		r.srv.Close()
		if why := c.BrokenError(); !errors.Is(why, netstack.ErrResetAfterFIN) {
			t.Errorf("BrokenError after the stacks closed: %v; want ErrResetAfterFIN", why)
		}
	})
	t.Run("stacks close after the client's FIN", func(t *testing.T) {
		r := newConnRig(t)
		_, c := finRead(t, r)
		r.srv.Close()
		broken(t, c)
		for i := range 2 {
			why := c.BrokenError()
			if errors.Is(why, netstack.ErrResetAfterFIN) || !netstack.IsStackClose(why) {
				t.Errorf("BrokenError (call %d): %v, IsStackClose %v; want the stacks' close", i+1, why, netstack.IsStackClose(why))
			}
		}
	})
	t.Run("stacks close under a Write, then BrokenError", func(t *testing.T) {
		r := newConnRig(t)
		_, c := r.dial()
		wrote := waitingWrite(t, c)
		r.srv.Close()
		wantStackClose(t, "the Write", waitErr(t, wrote), true)
		// The Write took the stack's one report: BrokenError says it
		// still (it said nothing, a clean close completing).
		broken(t, c)
		wantStackClose(t, "BrokenError", c.BrokenError(), true)
	})
}

func wantStackClose(t *testing.T, what string, err error, want bool) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: no error", what)
	}
	if got := netstack.IsStackClose(err); got != want {
		t.Errorf("%s: %v: IsStackClose %v, want %v", what, err, got, want)
	}
}

func waitErr(t *testing.T, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(waitFor):
		t.Fatal("no error came")
		return nil
	}
}

// tryReadErr is the first error other than ErrWouldBlock that TryRead
// gives c, within waitFor.
func tryReadErr(t *testing.T, c *netstack.Conn) error {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for {
		_, err := c.TryRead(make([]byte, 64))
		if err != netstack.ErrWouldBlock {
			return err
		}
		if time.Now().After(deadline) {
			t.Fatal("TryRead still blocks")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
