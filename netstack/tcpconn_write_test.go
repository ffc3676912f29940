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
