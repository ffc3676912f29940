package intercept

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// slowClientWrite is a tunnel's client connection whose Write puts take
// bytes of each piece in the client's hands (committed says how many, as
// the client can read them), then does not return until the tunnel's end
// is being recorded: its record begun (the deadline settle sets), or
// written. All taken, it then returns; else it waits for room until its
// deadline, and returns what it took.
type slowClientWrite struct {
	take      int
	committed chan int
	recorded  <-chan struct{}
	once      sync.Once
	dlSet     chan struct{}
	deadline  atomic.Pointer[time.Time]
	cleared   atomic.Bool
}

func newSlowClientWrite(take int, recorded <-chan struct{}) *slowClientWrite {
	return &slowClientWrite{take: take, committed: make(chan int, 1), recorded: recorded, dlSet: make(chan struct{})}
}

func (w *slowClientWrite) SetWriteDeadline(t time.Time) error {
	if t.IsZero() {
		w.cleared.Store(true)
		return nil
	}
	w.deadline.Store(&t)
	w.once.Do(func() { close(w.dlSet) })
	return nil
}

func (w *slowClientWrite) Write(p []byte) (int, error) {
	n := min(len(p), w.take)
	w.committed <- n
	select {
	case <-w.dlSet:
	case <-w.recorded: // recorded without waiting for this write
		return n, nil
	case <-time.After(5 * time.Second):
		return n, errors.New("test: the tunnel's end never came")
	}
	if n == len(p) {
		return n, nil
	}
	t := time.NewTimer(time.Until(*w.deadline.Load())) // no room: the client takes nothing more
	defer t.Stop()
	<-t.C
	return n, os.ErrDeadlineExceeded
}

// passTunnel is a tunnel whose destination sends piece, as goproxy relays
// it: its copy toward client runs on a goroutine of its own, and the
// tunnel's record keeps bytes_in in *delivered, closing recorded. reload,
// if set, decides the tunnel again.
func passTunnel(t *testing.T, piece []byte, reload *tunnelReload, client func(recorded <-chan struct{}) io.Writer) (b *recordingRWBody, recorded chan struct{}, delivered *int64) {
	t.Helper()
	upEnd, destEnd := net.Pipe()
	t.Cleanup(func() { destEnd.Close() })
	u := &upgradedBody{br: bufio.NewReader(upEnd), conn: upEnd, stop: func() bool { return true }, ended: make(chan struct{})}
	rb := &recordingBody{ReadCloser: u, tunnel: true, reload: reload} // as roundTrip wires a tunnel
	recorded, delivered = make(chan struct{}), new(int64)
	*delivered = -1
	rb.done = endFunc(func() {
		_, _, *delivered = rb.outcome(context.Background(), nil, nil)
		close(recorded)
	})
	b = &recordingRWBody{recordingBody: rb, w: u, reload: reload}
	go func() { _, _ = destEnd.Write(piece) }()
	w := client(recorded)
	go func() { _, _ = io.Copy(w, b) }() // goproxy's copy toward the client
	return b, recorded, delivered
}

// A reload that denies a WebSocket tunnel as its upload's next bytes go
// out ends the tunnel (the session aborted, goproxy's upload copy ended,
// the tunnel closed) while goproxy's copy toward the client may still be
// in the write that put the destination's last piece in the client's
// hands: the client read it, and the record, written before that write
// returned, said bytes_in 0 (TestReloadEndsWebSocketTunnel: 1 run in 60
// under -race). The record now waits for the write under way and counts
// it.
func TestTunnelRecordWaitsForWriteToClient(t *testing.T) {
	parse := func(name, rule string) *policy.Policy {
		p, err := policy.Parse(name, []byte("policy:\n  default: deny\n  rules:\n    - "+rule+"\n"))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	before := parse("a.yaml", "{name: named, domains: [www.example.test], action: allow}")
	after := parse("b.yaml", "{name: other, domains: [other.example.test], action: allow}")
	holder := &policy.Holder{}
	holder.Store(before)
	ic := New(Config{Policy: holder})
	clientEnd, proxySide := net.Pipe()
	defer clientEnd.Close()
	s := &session{Session: &Session{Client: &abortingClient{Conn: proxySide, onAbort: func() {}}, Record: &records.Record{Kind: "http"}, Start: time.Now()}, ic: ic}
	var r tunnelReload
	reload := r.init(s, before, policy.Subject{Domain: "www.example.test", Dest: netip.MustParseAddrPort("192.0.2.10:80")}, &records.Record{}, destVouch{}, false)

	const piece = "before the reload"
	var cw *slowClientWrite
	b, recorded, delivered := passTunnel(t, []byte(piece), reload, func(recorded <-chan struct{}) io.Writer {
		cw = newSlowClientWrite(len(piece), recorded)
		return cw
	})
	if n := <-cw.committed; n != len(piece) {
		t.Fatalf("the client had %d bytes", n)
	}
	// The client has the piece; its write has not returned. The reload,
	// and the client's next bytes.
	holder.Store(after)
	if _, err := b.Write([]byte("exfil after reload")); !errors.Is(err, errTunnelReloadDenied) {
		t.Fatalf("the upload after the reload: %v, want denied", err)
	}
	_ = b.Close() // goproxy's, its upload copy ended
	<-recorded
	if *delivered != int64(len(piece)) {
		t.Errorf("bytes_in %d; the client had the %d bytes of %q", *delivered, len(piece), piece)
	}
}

// A write to the client under way at the tunnel's end that waits for room
// (a client that reads nothing) holds the record no longer than
// tunnelPassBound, and what it wrote, in the client's socket, is counted.
// The client's write deadline is cleared after.
func TestTunnelRecordBoundsWriteToClient(t *testing.T) {
	defer func(d time.Duration) { tunnelPassBound = d }(tunnelPassBound)
	tunnelPassBound = 100 * time.Millisecond
	var cw *slowClientWrite
	b, recorded, delivered := passTunnel(t, make([]byte, 1000), nil, func(recorded <-chan struct{}) io.Writer {
		cw = newSlowClientWrite(600, recorded)
		return cw
	})
	if n := <-cw.committed; n != 600 {
		t.Fatalf("the client took %d bytes", n)
	}
	start := time.Now()
	_ = b.Close() // the client's side ended, say
	<-recorded
	if *delivered != 600 {
		t.Errorf("bytes_in %d; the client's socket took 600 bytes of the write under way", *delivered)
	}
	if waited := time.Since(start); waited > tunnelPassBound+2*time.Second {
		t.Errorf("the record waited %v for a write bounded by %v", waited, tunnelPassBound)
	}
	if cw.deadline.Load() == nil {
		t.Error("the record set no bound on the write under way")
	} else if !cw.cleared.Load() {
		t.Error("the client's write deadline was left set")
	}
}

// No write to the client begins once the record is being written: its
// bytes would reach the client uncounted.
func TestTunnelNoWriteToClientAfterRecord(t *testing.T) {
	var p tunnelPass
	p.settle()
	wrote := false
	w := writerFunc(func(b []byte) (int, error) { wrote = true; return len(b), nil })
	var passed atomic.Int64
	if n, err := p.write(w, []byte("late"), &passed); n != 0 || !errors.Is(err, errTunnelOver) || wrote || passed.Load() != 0 {
		t.Errorf("a write after the record: %d, %v, written %v, counted %d", n, err, wrote, passed.Load())
	}
}
