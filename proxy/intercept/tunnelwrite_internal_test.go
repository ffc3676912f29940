package intercept

import (
	"io"
	"strings"
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
