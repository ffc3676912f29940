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
		{fmt.Errorf("the client's connection broke after its FIN: %w", netstack.ErrResetAfterFIN), true},
		{errors.Join(syscall.ECONNRESET, errors.New("the upload's tail was not delivered")), false},
	} {
		if got := netstack.IsStackClose(tc.err); got != tc.want {
			t.Errorf("IsStackClose(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
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

func waitErr(t *testing.T, ch chan error) error {
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
