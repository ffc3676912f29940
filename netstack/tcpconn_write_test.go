package netstack_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// Write waits while the client does not read, and its deadline ends the
// wait, also when it is set while Write waits; a later deadline lets
// writes go on, and every byte written arrives once, in order.
func TestConnWriteDeadline(t *testing.T) {
	r := newConnRig(t)
	cc, c := r.dial()

	// An expired deadline fails a write at once, and is lifted again.
	c.SetWriteDeadline(time.Unix(1, 0))
	if n, err := c.Write([]byte("x")); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Write past its deadline: %d, %v; want 0, ErrDeadlineExceeded", n, err)
	}
	var ne net.Error
	if _, err := c.Write(nil); err == nil || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("the deadline's error is not a timeout: %v", err)
	}
	c.SetWriteDeadline(time.Time{})

	// The client reads nothing: the send buffer fills and Write waits
	// until a deadline set meanwhile.
	var sent bytes.Buffer
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	type result struct {
		n   int
		err error
	}
	blocked := make(chan result, 1)
	go func() {
		for i := 0; ; i++ {
			chunk[0] = byte(i)
			n, err := c.Write(chunk)
			sent.Write(chunk[:n])
			if err != nil {
				blocked <- result{n, err}
				return
			}
		}
	}()
	time.Sleep(200 * time.Millisecond) // long enough to fill the buffers
	c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	select {
	case res := <-blocked:
		if !errors.Is(res.err, os.ErrDeadlineExceeded) {
			t.Fatalf("the waiting Write ended with %v, want ErrDeadlineExceeded", res.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a deadline set while Write waited did not end it")
	}

	// With the deadline lifted, writes go on, and the client gets all.
	c.SetWriteDeadline(time.Time{})
	got := make(chan []byte, 1)
	go func() {
		cc.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, _ := io.ReadAll(cc)
		got <- b
	}()
	if _, err := c.Write([]byte("the end")); err != nil {
		t.Fatalf("Write after the deadline was lifted: %v", err)
	}
	sent.WriteString("the end")
	c.Close()
	if b := <-got; !bytes.Equal(b, sent.Bytes()) {
		t.Fatalf("the client read %d bytes, want the %d written, in order", len(b), sent.Len())
	}
}

// Write after Close fails with ErrClosed.
func TestConnWriteAfterClose(t *testing.T) {
	r := newConnRig(t)
	_, c := r.dial()
	c.Close()
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close: %v, want ErrClosed", err)
	}
}

// Broken is false for a client that only half-closed: its FIN is an end
// of stream, not a break (gVisor's Readiness reports a hang-up then).
func TestConnBrokenNotByFIN(t *testing.T) {
	r := newConnRig(t)
	cc, c := r.dial()
	cc.CloseWrite()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read %v, want EOF", err)
	}
	if c.Broken() {
		t.Fatal("Broken for a client that only sent its FIN")
	}
}

// Deadlines moved, lifted and passed again and again while writes run
// leave the conn writable once lifted (run with -race).
func TestConnWriteDeadlineChurn(t *testing.T) {
	r := newConnRig(t)
	cc, c := r.dial()
	go io.Copy(io.Discard, cc)
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 8192)
		for {
			select {
			case <-stop:
				return
			default:
			}
			c.Write(buf)
		}
	}()
	for i := range 5000 {
		switch i % 4 {
		case 0:
			c.SetWriteDeadline(time.Now().Add(time.Duration(i%7) * time.Microsecond))
		case 1:
			c.SetWriteDeadline(time.Time{})
		case 2:
			c.SetDeadline(time.Unix(1, 0))
		case 3:
			c.SetWriteDeadline(time.Now().Add(-time.Second))
		}
	}
	c.SetDeadline(time.Time{})
	close(stop)
	<-done
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatalf("Write once the deadline is lifted: %v", err)
	}
}
