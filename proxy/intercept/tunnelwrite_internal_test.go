package intercept

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// closingBody is a tunnel's upstream for tests: Close closes closed.
type closingBody struct {
	io.Reader
	closed chan struct{}
}

func (b *closingBody) Close() error { close(b.closed); return nil }

// lateWriter is a write to the upstream that returns only once the
// tunnel is closed, its bytes all taken (they were in the socket when
// the destination's end closed the tunnel), and not before the record
// is written, or bound has passed.
type lateWriter struct {
	started, closed, recorded chan struct{}
	bound                     time.Duration
}

func (w *lateWriter) Write(p []byte) (int, error) {
	close(w.started)
	<-w.closed
	t := time.NewTimer(w.bound)
	defer t.Stop()
	select {
	case <-w.recorded:
	case <-t.C:
	}
	return len(p), nil
}

// A tunnel's record counts the write under way when goproxy closes the
// tunnel (the other direction ended): its bytes went out. The record was
// written as soon as the close returned, the write's bytes not yet
// counted (5 tunnels of 30 whose destination read all 68325 bytes said
// bytes_out 64044).
func TestTunnelRecordCountsTheWriteUnderWay(t *testing.T) {
	up := &closingBody{Reader: strings.NewReader(""), closed: make(chan struct{})}
	w := &lateWriter{started: make(chan struct{}), closed: up.closed, recorded: make(chan struct{}), bound: 200 * time.Millisecond}
	rb := &recordingBody{ReadCloser: up, tunnel: true}
	var counted int64
	rb.done = endFunc(func() { counted = rb.written.Load(); close(w.recorded) })
	b := &recordingRWBody{recordingBody: rb, w: w}
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		b.Write(make([]byte, 4281))
	}()
	<-w.started
	b.Close()
	<-wrote
	if counted != 4281 {
		t.Errorf("the record counted %d bytes out; the tunnel wrote %d", counted, rb.written.Load())
	}
}

// failingConn is an upstream whose writes fail with err.
type failingConn struct {
	net.Conn
	err error
}

func (c failingConn) Write([]byte) (int, error) { return 0, c.err }

// A write to a tunnel's destination that failed is the tunnel's result
// unless the appliance's own end of the tunnel failed it: the
// destination's reset, taken by the write (ECONNRESET) or before it
// (EPIPE), was recorded ok, the read from it ended by the close that the
// failed write brought about.
func TestTunnelWriteFailureDecidesTheOutcome(t *testing.T) {
	opErr := func(errno syscall.Errno) error {
		return &net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("write", errno)}
	}
	for _, tc := range []struct {
		name      string
		err       error
		sendEnded bool // the appliance had ended its side first
		result    string
	}{
		{"reset", opErr(syscall.ECONNRESET), false, "reset"},
		{"reset taken before", opErr(syscall.EPIPE), false, "reset"},
		{"reset after the appliance's end", opErr(syscall.ECONNRESET), true, "reset"},
		{"the appliance's end", opErr(syscall.EPIPE), true, "ok"},
		{"the appliance's TLS end", errors.New("tls: protocol is shutdown"), true, "ok"},
		{"the appliance's close", &net.OpError{Op: "write", Net: "tcp", Err: net.ErrClosed}, false, "ok"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := &upgradedBody{conn: failingConn{err: tc.err}}
			u.sendEnded.Store(tc.sendEnded)
			rb := &recordingBody{ReadCloser: u, tunnel: true}
			b := &recordingRWBody{recordingBody: rb, w: u}
			if _, err := b.Write([]byte("x")); err == nil {
				t.Fatal("the write did not fail")
			}
			result, why, _ := rb.outcome(context.Background(), nil, nil)
			if result != tc.result || (result != "ok") != strings.HasPrefix(why, "WebSocket tunnel to the destination, after 0 bytes: ") {
				t.Errorf("a write failing with %v: %s %q, want %s", tc.err, result, why, tc.result)
			}
		})
	}
}
