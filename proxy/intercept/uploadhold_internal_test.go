package intercept

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// uploadLog is a destination that keeps each write it was given, and
// fails them all once fail is set.
type uploadLog struct {
	mu     sync.Mutex
	writes []string
	fail   error
}

func (w *uploadLog) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fail != nil {
		return 0, w.fail
	}
	w.writes = append(w.writes, string(b))
	return len(b), nil
}

func (w *uploadLog) got() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.writes...)
}

func (w *uploadLog) failWith(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.fail = err
}

// waitingClient is a client connection whose reader's wait the test
// plays (readWait), as netstack.Conn.OnReadWait calls it.
type waitingClient struct {
	net.Conn
	mu sync.Mutex
	fn func()
}

func (c *waitingClient) OnReadWait(fn func()) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fn = fn
	return true
}

// readWait plays the client's reader finding nothing and going to wait.
func (c *waitingClient) readWait() {
	c.mu.Lock()
	fn := c.fn
	c.mu.Unlock()
	if fn != nil {
		fn()
	}
}

func (c *waitingClient) registered() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fn != nil
}

// mustWrite writes b through h and fails the test if it failed.
func mustWrite(t *testing.T, h *uploadHold, b string) {
	t.Helper()
	if n, err := h.write([]byte(b)); n != len(b) || err != nil {
		t.Fatalf("write of %d bytes: %d, %v", len(b), n, err)
	}
}

func wantWrites(t *testing.T, out *uploadLog, want ...string) {
	t.Helper()
	if got := out.got(); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("destination got writes %q, want %q", got, want)
	}
}

// holdFor sets how long a byte may be held, for the test.
func holdFor(t *testing.T, d time.Duration) {
	old := uploadDelay
	uploadDelay = d
	t.Cleanup(func() { uploadDelay = old })
}

// TestUploadHoldGoesWhenTheReaderWaits: a request's head goes through;
// the body's small writes are held while its reader finds more, and go
// together the moment it finds none and is about to wait for the client,
// not after a delay (an hour here); counted sent only once gone. finish
// stops the reader's calls.
func TestUploadHoldGoesWhenTheReaderWaits(t *testing.T) {
	holdFor(t, time.Hour)
	out, client := &uploadLog{}, &waitingClient{}
	h := &uploadHold{}
	h.start(out, client)
	mustWrite(t, h, "head1")
	mustWrite(t, h, "head2")
	wantWrites(t, out, "head1", "head2")
	var sent bodySent
	h.settle(0, &sent)
	mustWrite(t, h, "a")
	h.settle(1, &sent)
	mustWrite(t, h, "b")
	wantWrites(t, out, "head1", "head2")
	if n := sent.n.Load(); n != 0 {
		t.Fatalf("counted sent %d with a held, want 0", n)
	}
	client.readWait()
	wantWrites(t, out, "head1", "head2", "ab")
	if n := sent.n.Load(); n != 1 {
		t.Fatalf("counted sent %d once a left, want 1 (b is counted at the next read)", n)
	}
	h.settle(1, &sent)
	if n := sent.n.Load(); n != 2 {
		t.Fatalf("counted sent %d, want 2", n)
	}
	if err := h.finish(); err != nil {
		t.Fatal(err)
	}
	if client.registered() {
		t.Fatal("the reader still flushes a finished upload")
	}
}

// TestUploadHoldBoundedInTime: what is held goes uploadDelay after its
// first byte at the latest, the reader never having waited.
func TestUploadHoldBoundedInTime(t *testing.T) {
	holdFor(t, 30*time.Millisecond)
	out, client := &uploadLog{}, &waitingClient{}
	h := &uploadHold{}
	h.start(out, client)
	var sent bodySent
	h.settle(0, &sent)
	mustWrite(t, h, "a")
	mustWrite(t, h, "b")
	for deadline := time.Now().Add(10 * time.Second); len(out.got()) == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("what was held never left")
		}
	}
	wantWrites(t, out, "ab")
	if err := h.finish(); err != nil {
		t.Fatal(err)
	}
}

// TestUploadHoldNothingWithoutReadWaits: a client connection that cannot
// say when its reader waits has nothing held: every write goes at once.
func TestUploadHoldNothingWithoutReadWaits(t *testing.T) {
	holdFor(t, time.Hour)
	out := &uploadLog{}
	h := &uploadHold{}
	h.start(out, nil)
	var sent bodySent
	h.settle(0, &sent)
	mustWrite(t, h, "a")
	mustWrite(t, h, "b")
	wantWrites(t, out, "a", "b")
	if err := h.finish(); err != nil {
		t.Fatal(err)
	}
}

// TestUploadHoldLargeWriteTakesTheHeld: a large write leaves at once, what
// is held before it in the same write; past maxCoalesced the write goes
// with what fits, then the rest; finish sends what is left held.
func TestUploadHoldLargeWriteTakesTheHeld(t *testing.T) {
	holdFor(t, time.Hour)
	out, client := &uploadLog{}, &waitingClient{}
	h := &uploadHold{}
	h.start(out, client)
	var sent bodySent
	h.settle(0, &sent)
	mustWrite(t, h, "a")
	large := strings.Repeat("L", holdSmall)
	mustWrite(t, h, large)
	mustWrite(t, h, "c")
	wantWrites(t, out, "a"+large)
	huge := bytes.Repeat([]byte("H"), 2*maxCoalesced)
	if n, err := h.write(huge); n != len(huge) || err != nil {
		t.Fatalf("huge write: %d, %v", n, err)
	}
	if got := out.got(); len(got) != 3 || got[1] != "c"+string(huge[:maxCoalesced-1]) || got[2] != string(huge[maxCoalesced-1:]) {
		t.Fatalf("after the huge write: %d writes", len(got))
	}
	mustWrite(t, h, "d")
	h.settle(1, &sent)
	if n := sent.n.Load(); n != 0 {
		t.Fatalf("counted %d with d held, want 0", n)
	}
	if err := h.finish(); err != nil {
		t.Fatal(err)
	}
	if got := out.got(); got[len(got)-1] != "d" {
		t.Fatalf("finish did not send what was held: last write %q", got[len(got)-1])
	}
	if n := sent.n.Load(); n != 1 {
		t.Fatalf("counted %d once d left, want 1", n)
	}
}

// TestUploadHoldFailedWriteStops: once a write failed, held bytes are not
// counted (a tunnel's count of them is taken back), no later write goes,
// and finish reports the failure, also when it was a flush's after the
// upload's last write.
func TestUploadHoldFailedWriteStops(t *testing.T) {
	holdFor(t, time.Hour)
	out, client := &uploadLog{}, &waitingClient{}
	var written atomic.Int64
	var upload uploadCopy
	h := &uploadHold{}
	h.startTunnel(out, client, nil, &upload, &written)
	for _, b := range []string{"a", "bb", "ccc"} {
		mustWrite(t, h, b)
		written.Add(int64(len(b))) // as recordingRWBody counts them
	}
	boom := errors.New("boom")
	out.failWith(boom)
	client.readWait() // the flush fails
	if n := written.Load(); n != 0 {
		t.Fatalf("counted %d written, want 0: none of it left", n)
	}
	if _, err := h.write([]byte("d")); !errors.Is(err, boom) {
		t.Fatalf("a write after the failure: %v", err)
	}
	h.stop()
	if client.registered() {
		t.Fatal("the reader still flushes a stopped tunnel")
	}
	wantWrites(t, out)
	h2 := &uploadHold{}
	h2.start(out, client)
	h2.settle(0, &bodySent{})
	mustWrite(t, h2, "x")
	if err := h2.finish(); !errors.Is(err, boom) {
		t.Fatalf("finish: %v, want the write's failure", err)
	}
}

// gatedConn lets its first pass writes through and holds the rest until
// open is closed.
type gatedConn struct {
	net.Conn
	pass   int
	open   chan struct{}
	gated  chan struct{} // closed when a write waits at the gate
	writes int
}

func (c *gatedConn) Write(b []byte) (int, error) {
	c.writes++
	if c.writes > c.pass {
		close(c.gated)
		<-c.open
	}
	return c.Conn.Write(b)
}

// TestTunnelCopyNotOverBeforeItsLastWrite: the copy's last read (16 KiB
// and the client's end) went out in two writes, what was held with its
// start, then its rest; the copy counted as over after the first (the
// held bytes settled what the last read owed), and a tunnel whose
// destination had ended its side closed over the second: the destination
// got a clean end without the upload's tail, the records ok (review r2s26
// F1). The copy is over only once all its last read has gone, and the
// destination gets all of it.
func TestTunnelCopyNotOverBeforeItsLastWrite(t *testing.T) {
	holdFor(t, time.Hour)
	up, dest := tlsUpstream(t)
	gc := &gatedConn{Conn: up, pass: 1, open: make(chan struct{}), gated: make(chan struct{})}
	var upload uploadCopy
	u := &upgradedBody{br: bufio.NewReader(up), conn: gc, stop: func() bool { return true },
		ended: make(chan struct{}), tunnel: true, endClient: func() bool { return true }}
	u.holdUpload(&upload, &waitingClient{}, nil)
	got := make(chan []byte, 1)
	go func() {
		b, err := io.ReadAll(dest)
		if err != nil {
			b = append(b, " <"+err.Error()+">"...)
		}
		got <- b
	}()
	var want bytes.Buffer
	write := func(b []byte) {
		want.Write(b)
		if n, err := u.Write(b); n != len(b) || err != nil {
			t.Errorf("write %d: %d %v", len(b), n, err)
		}
	}
	for j := range 3 {
		write(bytes.Repeat([]byte{byte('b' + j)}, 4000)) // held
	}
	last := bytes.Repeat([]byte("Z"), 16384)
	upload.readEnded(len(last)) // the last read: 16 KiB and the client's end
	done := make(chan struct{})
	go func() { defer close(done); write(last) }()
	<-gc.gated // held and the start of the last read went; its rest waits
	select {
	case <-upload.over():
		t.Error("the upload's copy is over with the rest of its last read still to be written")
	case <-time.After(100 * time.Millisecond):
	}
	close(u.ended) // the destination had ended its side: Close waits for the copy
	closed := make(chan error, 1)
	go func() { closed <- u.Close() }()
	select {
	case err := <-closed:
		t.Errorf("Close returned (%v) with the upload's tail still to be written", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(gc.open)
	<-done
	if err := <-closed; err != nil {
		t.Errorf("Close: %v", err)
	}
	if b := <-got; !bytes.Equal(b, want.Bytes()) {
		t.Errorf("the destination got %d of the %d bytes", len(b), want.Len())
	}
}
