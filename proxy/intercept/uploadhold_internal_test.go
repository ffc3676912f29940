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
	fn *func()
}

func (c *waitingClient) OnReadWait(fn *func()) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fn = fn
	return true
}

func (c *waitingClient) StopReadWait(fn *func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fn == fn {
		c.fn = nil
	}
}

// readWait plays the client's reader finding nothing and going to wait.
func (c *waitingClient) readWait() {
	c.mu.Lock()
	fn := c.fn
	c.mu.Unlock()
	if fn != nil {
		(*fn)()
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

// TestUploadHoldLargeWriteGoesAfterTheHeld: a large write leaves at once,
// after what is held, apart (a failure of its own must not take the held
// bytes with it); past maxCoalesced held, a small write goes the same way;
// finish sends what is left held.
func TestUploadHoldLargeWriteGoesAfterTheHeld(t *testing.T) {
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
	wantWrites(t, out, "a", large)
	small := strings.Repeat("s", holdSmall-1)
	fit := (maxCoalesced - 1) / len(small) // beside "c"
	for range fit + 1 {
		mustWrite(t, h, small)
	}
	if got := out.got(); len(got) != 4 || got[2] != "c"+strings.Repeat(small, fit) || got[3] != small {
		t.Fatalf("past maxCoalesced: %d writes, want the held, then the one that did not fit", len(got))
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
		t.Fatalf("finish did not send what was held: last write of %d bytes", len(got[len(got)-1]))
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

// TestUploadHoldStopsOnlyItsOwnReadWait: a hold that finishes after
// another registered on the same client connection leaves the other's
// call in place (review r5s26 F2), and registering and stopping allocate
// nothing (F4).
func TestUploadHoldStopsOnlyItsOwnReadWait(t *testing.T) {
	out, client := &uploadLog{}, &waitingClient{}
	first, second := &uploadHold{}, &uploadHold{}
	first.start(out, client)
	second.start(out, client)
	if err := first.finish(); err != nil {
		t.Fatal(err)
	}
	if !client.registered() {
		t.Fatal("the first hold's finish stopped the second's call")
	}
	second.settle(0, &bodySent{})
	mustWrite(t, second, "x")
	client.readWait()
	wantWrites(t, out, "x")
	if err := second.finish(); err != nil {
		t.Fatal(err)
	}
	if client.registered() {
		t.Fatal("the second hold's call is still registered after its finish")
	}
	if n := testing.AllocsPerRun(100, func() {
		second.start(out, client)
		_ = second.finish()
	}); n != 0 {
		t.Errorf("%v allocations to start and finish a hold, want 0", n)
	}
}

// partialWriter writes the first n bytes it is given, then fails.
type partialWriter struct {
	n   int
	got []byte
}

func (w *partialWriter) Write(b []byte) (int, error) {
	k := min(len(b), w.n-len(w.got))
	w.got = append(w.got, b[:k]...)
	if k < len(b) {
		return k, errors.New("reset midway")
	}
	return k, nil
}

// TestUploadHoldPartlyFailedFlushCounts: a flush that failed after part of
// what was held went takes off a tunnel's count only what did not go
// (review r5s26 F3: 20 bytes went, 0 counted).
func TestUploadHoldPartlyFailedFlushCounts(t *testing.T) {
	holdFor(t, time.Hour)
	out, client := &partialWriter{n: 20}, &waitingClient{}
	var written atomic.Int64
	var upload uploadCopy
	h := &uploadHold{}
	h.startTunnel(out, client, nil, &upload, &written)
	for range 3 {
		mustWrite(t, h, "0123456789")
		written.Add(10) // as recordingRWBody counts them
	}
	client.readWait()
	if n := written.Load(); n != 20 {
		t.Errorf("counted %d written, want the 20 that went", n)
	}
	h.stop()
}

// TestUploadHoldGoesAtTheClientsEnd: a tunnel's client whose last records
// came with its end (a close_notify, a FIN) has no read that finds the
// connection empty: they waited out the time bound (review r5s26 F1). The
// copy's reading the client's end lets them go, and nothing is held after.
func TestUploadHoldGoesAtTheClientsEnd(t *testing.T) {
	holdFor(t, time.Hour)
	out, client := &uploadLog{}, &waitingClient{}
	var upload uploadCopy
	h := &uploadHold{}
	h.startTunnel(out, client, nil, &upload, nil)
	upload.holdWrites(h)
	mustWrite(t, h, "last")
	upload.readEnded(0)
	wantWrites(t, out, "last")
	select {
	case <-upload.over():
	default:
		t.Error("the copy is not over once its last bytes went")
	}
	mustWrite(t, h, "after")
	wantWrites(t, out, "last", "after")
	h.stop()
}

// gateWriter says when a write starts and holds it until gate is closed.
type gateWriter struct {
	gate, started chan struct{}
	once          sync.Once
}

func (w *gateWriter) Write(b []byte) (int, error) {
	w.once.Do(func() { close(w.started) })
	<-w.gate
	return len(b), nil
}

// TestUploadHoldClientEndNotBlockedByAFlush: a flush blocked on a
// destination that takes nothing held the read of the client's end, and
// with it the tunnel's end and its linger's bound, for as long as the
// destination took nothing (review r8s26 F4). The read goes on; the copy
// is over once that flush has written what it held.
func TestUploadHoldClientEndNotBlockedByAFlush(t *testing.T) {
	holdFor(t, 10*time.Millisecond)
	out := &gateWriter{gate: make(chan struct{}), started: make(chan struct{})}
	var wmu sync.Mutex
	var upload uploadCopy
	h := &uploadHold{}
	h.startTunnel(out, &waitingClient{}, &wmu, &upload, nil)
	upload.holdWrites(h)
	wmu.Lock() // as upgradedBody.Write holds it
	mustWrite(t, h, "a")
	wmu.Unlock()
	<-out.started // the timer's flush, blocked on the destination
	ended := make(chan struct{})
	go func() { upload.readEnded(0); close(ended) }()
	select {
	case <-ended:
	case <-time.After(2 * time.Second):
		t.Fatal("the read of the client's end waits for a flush blocked on the destination")
	}
	select {
	case <-upload.over():
		t.Fatal("the copy is over with its bytes still being written")
	default:
	}
	close(out.gate)
	select {
	case <-upload.over():
	case <-time.After(2 * time.Second):
		t.Fatal("the copy is not over once the flush wrote what it held")
	}
	h.stop()
}
