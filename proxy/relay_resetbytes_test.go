package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// These tests check bytes_out of a relayed flow whose destination's
// connection ends in a reset with the upload still queued in the
// appliance's socket: the reset throws the queue away, and the record must
// not count what the destination never had.

// destinationHas is what a destination's socket c holds: read is what was
// read from it already; what is still queued in its kernel is added.
func destinationHas(t *testing.T, c *net.TCPConn, read int64) int64 {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var inq int
	var ierr error
	if err := rc.Control(func(fd uintptr) { inq, ierr = unix.IoctlGetInt(int(fd), unix.SIOCINQ) }); err != nil {
		t.Fatal(err)
	}
	if ierr != nil {
		t.Fatal(ierr)
	}
	return read + int64(inq)
}

// A destination that stops reading an upload: the appliance's write
// stalls, and the flow is reset a timeout later with its socket's send
// queue full. bytes_out is what the destination acknowledged (a wait that
// timed out: resetCut), not what was written into the socket.
func TestRelayStallCountsOnlyDelivered(t *testing.T) {
	r := newStallRig(t, time.Second)
	dests := make(chan *net.TCPConn, 1)
	dst := destination(t, func(c *net.TCPConn) { dests <- c }) // reads nothing after hello
	c := r.dial(t, dst)
	var sent atomic.Int64
	go func() { _ = flood(c, &sent) }()
	rec, ok := r.record(t, 20*time.Second)
	if !ok {
		t.Fatal("the stalled flow was never recorded")
	}
	r.checkStalled(t, rec, "destination")
	dc := <-dests
	got := destinationHas(t, dc, int64(len(hello)))
	t.Logf("client sent %d, destination has %d, record bytes_out %d", sent.Load(), got, rec.BytesOut)
	if rec.BytesOut != got {
		t.Errorf("bytes_out %d, but the destination has %d bytes (acknowledged all of them)", rec.BytesOut, got)
	}
	checkVouched(t, rec, got)
}

// A destination that stops reading, then resets its connection while the
// appliance's socket still holds much of the upload, never sent: bytes_out
// counts what went on the wire (resetCut), not the queue the reset threw
// away.
func TestRelayDestinationResetCountsOnlySent(t *testing.T) {
	r := newStallRig(t, time.Minute)
	dests := make(chan *net.TCPConn, 1)
	dst := destination(t, func(c *net.TCPConn) { dests <- c })
	c := r.dial(t, dst)
	var sent atomic.Int64
	clientErr := make(chan error, 1)
	go func() { clientErr <- flood(c, &sent) }()
	stalled(t, &sent)
	dc := <-dests
	got := destinationHas(t, dc, int64(len(hello)))
	if err := dc.SetLinger(0); err != nil {
		t.Fatal(err)
	}
	dc.Close() // a RST, the receive queue's bytes counted in got
	rec, ok := r.record(t, 10*time.Second)
	if !ok {
		t.Fatal("the reset flow was never recorded")
	}
	t.Logf("client sent %d, destination had %d, record %s %q bytes_out %d", sent.Load(), got, rec.Result, rec.Error, rec.BytesOut)
	if rec.Result != "reset" {
		t.Errorf("result %q, want reset", rec.Result)
	}
	// Under a shut window nothing is in flight: the destination had all
	// that was sent.
	if rec.BytesOut != got {
		t.Errorf("bytes_out %d, but the destination had %d bytes when it reset", rec.BytesOut, got)
	}
	checkVouched(t, rec, got)
	select {
	case err := <-clientErr:
		if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
			t.Logf("the client's write: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("the client was not reset")
	}
}

// readCountingListener hands out connections that count what was read from
// them, the last one's in conn.
type readCountingListener struct {
	net.Listener
	conn chan *readCounted
}

type readCounted struct {
	*net.TCPConn
	n atomic.Int64
}

func (c *readCounted) Read(b []byte) (int, error) {
	n, err := c.TCPConn.Read(b)
	c.n.Add(int64(n))
	return n, err
}

func (l *readCountingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	rc := &readCounted{TCPConn: c.(*net.TCPConn)}
	select {
	case l.conn <- rc:
	default:
	}
	return rc, nil
}

// A bumped upload to a destination that stops reading: the session is
// reset for the stall with the upstream socket's send queue full. The tls
// record's bytes_out, the TCP payload sent the destination, is what the
// destination had, not what was written into the socket.
func TestBumpStallCountsOnlyDelivered(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	dests := make(chan *readCounted, 1)
	r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: time.Second,
		handler:  func(*bumpStallRig, http.ResponseWriter, *http.Request) { <-release }, // reads nothing of the body
		destWrap: func(l net.Listener) net.Listener { return &readCountingListener{Listener: l, conn: dests} }})
	c := r.dialTLS(t, "http/1.1")
	if _, err := fmt.Fprintf(c, "POST /up HTTP/1.1\r\nHost: big.example\r\nContent-Length: %d\r\n\r\n", 1<<30); err != nil {
		t.Fatal(err)
	}
	var sent atomic.Int64
	go func() { _ = flood(c, &sent) }()
	rec, ok := r.tlsRecord(t, 20*time.Second)
	if !ok {
		t.Fatal("the stalled session was never recorded")
	}
	r.checkStalled(t, rec, "destination")
	dc := <-dests
	got := destinationHas(t, dc.TCPConn, dc.n.Load())
	t.Logf("client sent %d, destination has %d, tls record bytes_out %d", sent.Load(), got, rec.BytesOut)
	if rec.BytesOut != got {
		t.Errorf("tls record bytes_out %d, but the destination has %d bytes", rec.BytesOut, got)
	}
	checkVouched(t, rec, got)
}

// A bumped upload whose destination stops reading, then resets its
// connection while the upstream socket still holds much of the upload:
// the tls record's bytes_out leaves out what was never sent.
func TestBumpDestinationResetCountsOnlySent(t *testing.T) {
	resetNow := make(chan struct{})
	had := make(chan int64, 1)
	dests := make(chan *readCounted, 1)
	r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: time.Minute,
		handler: func(_ *bumpStallRig, w http.ResponseWriter, _ *http.Request) {
			<-resetNow
			dc := <-dests
			had <- destinationHas(t, dc.TCPConn, dc.n.Load())
			_ = dc.SetLinger(0)
			dc.Close()
		},
		destWrap: func(l net.Listener) net.Listener { return &readCountingListener{Listener: l, conn: dests} }})
	c := r.dialTLS(t, "http/1.1")
	if _, err := fmt.Fprintf(c, "POST /up HTTP/1.1\r\nHost: big.example\r\nContent-Length: %d\r\n\r\n", 1<<30); err != nil {
		t.Fatal(err)
	}
	var sent atomic.Int64
	go func() { _ = flood(c, &sent) }()
	stalled(t, &sent)
	close(resetNow)
	got := <-had
	rec, ok := r.tlsRecord(t, 10*time.Second)
	if !ok {
		t.Fatal("the reset session was never recorded")
	}
	t.Logf("client sent %d, destination had %d, tls record %s %q bytes_out %d", sent.Load(), got, rec.Result, rec.Error, rec.BytesOut)
	for _, x := range r.sink.parse(t) {
		t.Logf("%s %s %q out %d in %d status %d", x.Kind, x.Result, x.Error, x.BytesOut, x.BytesIn, x.Status)
	}
	if rec.BytesOut != got {
		t.Errorf("tls record bytes_out %d, but the destination had %d bytes when it reset", rec.BytesOut, got)
	}
	checkVouched(t, rec, got)
}
