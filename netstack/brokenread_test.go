package netstack_test

import (
	"errors"
	"io"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// TestBrokenErrorAfterReadTookIt: a reader waiting on the connection
// (an HTTP/2 server's) takes the client's reset from the stack, which
// reports it once. Broken and BrokenError, asked after, still say the
// connection broke and why, and ClientBroke says it after Close: a
// session's client watch, told nothing, let the session end as if the
// client had closed cleanly, and its record said ok.
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
	if why == nil || errors.Is(why, netstack.ErrResetAfterFIN) || errors.Is(why, syscall.ETIMEDOUT) {
		t.Errorf("BrokenError after a read took the client's reset: %v; want the reset", why)
	}
	c.Close()
	if got := c.ClientBroke(); got == nil || got.Error() != why.Error() {
		t.Errorf("ClientBroke after Close: %v; want %v", got, why)
	}
}

// TestReadTellsOnReadableOfBreak: a Read that takes the client's reset
// from the stack calls OnReadable's function before it returns, so that
// a watch of the connection hears of the break before the reader acts on
// it. Here the function is set after the stack announced the reset, so
// only the Read can call it: a watch that learned of it only once the
// HTTP/2 server had ended its streams saw the session between requests.
func TestReadTellsOnReadableOfBreak(t *testing.T) {
	r := newConnRig(t)
	_, cep, c := r.dialEndpoint()
	cep.Abort()
	for end := time.Now().Add(waitFor); !c.Broken(); time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("not Broken after the client's RST")
		}
	}
	n := newNotifier()
	c.OnReadable(n.fn)
	if _, err := c.Read(make([]byte, 8)); err == nil {
		t.Fatal("the read after the client's RST returned no error")
	}
	if n.calls.Load() == 0 {
		t.Error("the Read that took the client's reset returned without calling OnReadable's function")
	}
}

// TestReadAfterBrokenErrorTellsOnReadable: the client sends bytes and
// resets right behind them. The watch's BrokenError takes the stack's one
// report of the reset while the bytes still wait unread; the reader takes
// them, and then the end of the stream. That Read, ending on the break
// the watch already kept, still calls OnReadable's function before it
// returns: the bytes it took before may have begun a request (an HTTP/1
// head), which makes the break one under way, and the watch, having
// seen the session between requests, is told only so.
func TestReadAfterBrokenErrorTellsOnReadable(t *testing.T) {
	r := newConnRig(t)
	cc, cep, c := r.dialEndpoint()
	if _, err := cc.Write([]byte("GET /b")); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(waitFor); !c.Readable(); time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("the client's bytes did not arrive")
		}
	}
	cep.Abort()
	for end := time.Now().Add(waitFor); !c.Broken(); time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("not Broken after the client's RST")
		}
	}
	if why := c.BrokenError(); why == nil {
		t.Fatal("BrokenError after the client's RST: nil")
	}
	n := newNotifier()
	c.OnReadable(n.fn)
	buf := make([]byte, 64)
	got, err := c.Read(buf)
	if err != nil || string(buf[:got]) != "GET /b" {
		t.Fatalf("the read of the bytes sent before the RST: %q, %v", buf[:got], err)
	}
	calls := n.calls.Load()
	if _, err := c.Read(buf); err == nil {
		t.Fatal("the read after the client's RST returned no error")
	}
	if n.calls.Load() == calls {
		t.Error("the Read that ended on the client's reset, kept by BrokenError, returned without calling OnReadable's function")
	}
}

// TestBrokenAfterFINTellsTheFIN: BrokenAfterFIN, which the client watch
// asks on the packet path, tells a client's reset after its FIN (it had
// ended its side whole: a WebSocket tunnel it closed is no longer under
// way) from one without a FIN, as BrokenError does off that path.
func TestBrokenAfterFINTellsTheFIN(t *testing.T) {
	r := newConnRig(t)
	for _, fin := range []bool{false, true} {
		cc, cep, c := r.dialEndpoint()
		if fin {
			if err := cc.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(waitFor))
			if _, err := c.Read(make([]byte, 1)); err != io.EOF {
				t.Fatalf("read %v, want EOF", err)
			}
		}
		cep.Abort()
		for end := time.Now().Add(waitFor); !c.Broken(); time.Sleep(time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("FIN %v: not Broken after the client's RST", fin)
			}
		}
		if got := c.BrokenAfterFIN(); got != fin {
			t.Errorf("FIN %v: BrokenAfterFIN %v after the client's RST", fin, got)
		}
		if why := c.BrokenError(); errors.Is(why, netstack.ErrResetAfterFIN) != fin {
			t.Errorf("FIN %v: BrokenError %v", fin, why)
		}
		c.Close()
		if c.BrokenAfterFIN() {
			t.Errorf("FIN %v: BrokenAfterFIN after Close", fin)
		}
	}
}
