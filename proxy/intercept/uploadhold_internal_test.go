package intercept

import (
	"bytes"
	"errors"
	"strings"
	"sync"
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

// TestUploadHoldGathersABurst: before the body's first read (a request's
// head) writes go through; the first write of the body goes at once, and
// the small ones that follow within the delay are held and go together at
// its end, by the timer.
func TestUploadHoldGathersABurst(t *testing.T) {
	out := &uploadLog{}
	h := &uploadHold{delay: 200 * time.Millisecond}
	h.start(out)
	mustWrite(t, h, "head1")
	mustWrite(t, h, "head2")
	wantWrites(t, out, "head1", "head2")
	var sent bodySent
	h.settle(0, &sent)
	mustWrite(t, h, "a")
	h.settle(1, &sent)
	mustWrite(t, h, "b")
	h.settle(1, &sent)
	mustWrite(t, h, "c")
	wantWrites(t, out, "head1", "head2", "a")
	if n := sent.n.Load(); n != 1 {
		t.Fatalf("counted sent %d with b held, want 1 (a)", n)
	}
	for deadline := time.Now().Add(10 * time.Second); len(out.got()) < 4; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("what was held never left: %q", out.got())
		}
	}
	wantWrites(t, out, "head1", "head2", "a", "bc")
	if n := sent.n.Load(); n != 2 {
		t.Fatalf("counted sent %d once b left, want 2 (c is counted at the next read)", n)
	}
	if err := h.finish(); err != nil {
		t.Fatal(err)
	}
}

// TestUploadHoldLargeWriteTakesTheHeld: a large write leaves at once, what
// is held before it in the same write; finish sends what is left held.
func TestUploadHoldLargeWriteTakesTheHeld(t *testing.T) {
	out := &uploadLog{}
	h := &uploadHold{delay: time.Hour}
	h.start(out)
	var sent bodySent
	h.settle(0, &sent)
	mustWrite(t, h, "a")
	mustWrite(t, h, "b")
	large := strings.Repeat("L", holdSmall)
	mustWrite(t, h, large)
	mustWrite(t, h, "c")
	wantWrites(t, out, "a", "b"+large)
	// Past maxCoalesced held, the write goes with what fits.
	huge := bytes.Repeat([]byte("H"), 2*maxCoalesced)
	if n, err := h.write(huge); n != len(huge) || err != nil {
		t.Fatalf("huge write: %d, %v", n, err)
	}
	got := out.got()
	if len(got) != 4 || got[2] != "c"+string(huge[:maxCoalesced-1]) || got[3] != string(huge[maxCoalesced-1:]) {
		t.Fatalf("after the huge write: %d writes, lengths %d", len(got), lens(got))
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
// counted, no later write goes, and finish reports the failure, also when
// it was the timer's write after the upload's last.
func TestUploadHoldFailedWriteStops(t *testing.T) {
	out := &uploadLog{}
	h := &uploadHold{delay: 20 * time.Millisecond}
	h.start(out)
	var sent bodySent
	h.settle(0, &sent)
	mustWrite(t, h, "a")
	mustWrite(t, h, "b")
	h.settle(1, &sent)
	boom := errors.New("boom")
	out.mu.Lock()
	out.fail = boom
	out.mu.Unlock()
	time.Sleep(100 * time.Millisecond) // the timer's write fails
	if err := h.finish(); !errors.Is(err, boom) {
		t.Fatalf("finish: %v, want the timer's write's failure", err)
	}
	if n := sent.n.Load(); n != 0 {
		t.Fatalf("counted %d sent, want 0: b never left", n)
	}
	h.start(out) // a new upload on a pooled writer starts clean
	out.mu.Lock()
	out.fail = nil
	out.mu.Unlock()
	mustWrite(t, h, "head")
	wantWrites(t, out, "a", "head")
	if err := h.finish(); err != nil {
		t.Fatal(err)
	}
}

func lens(s []string) []int {
	var n []int
	for _, x := range s {
		n = append(n, len(x))
	}
	return n
}
