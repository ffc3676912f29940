package records

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// stuckAfterSink takes its first free writes, then blocks every later one
// until release; entered is closed when the first blocked write begins.
type stuckAfterSink struct {
	free          int // writes taken at once; the writer goroutine's own
	entered, gate chan struct{}
	in, out       sync.Once
}

func (s *stuckAfterSink) Write(p []byte) (int, error) {
	if s.free > 0 {
		s.free--
		return len(p), nil
	}
	s.in.Do(func() { close(s.entered) })
	<-s.gate
	return len(p), nil
}

func (s *stuckAfterSink) release() { s.out.Do(func() { close(s.gate) }) }

// accounted is the sum of a Writer's counters: every record written must be
// in exactly one.
func accounted(st Stats) uint64 {
	return st.Written + st.Dropped + st.Failed + uint64(st.Queued)
}

// TestWriterInFlightCounted: the records in the batch a stuck sink holds
// (hundreds of them, one write) are counted as queued, so the counters add
// up to the records written at every point; when Close gives up on the
// sink, every record not written is counted as dropped, Close says how
// many, and the sink moving afterwards counts nothing twice.
func TestWriterInFlightCounted(t *testing.T) {
	const before, stuck = 100, 300
	sink := &stuckAfterSink{free: 1 << 30, entered: make(chan struct{}), gate: make(chan struct{})}
	w := NewWriter(nil, sink)
	t.Cleanup(sink.release)
	for i := range before {
		w.Write(&Record{Kind: "tcp", Packets: int64(i)})
	}
	if err := w.Flush(ctxFor(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if st := w.Stats(); st.Written != before || accounted(st) != before {
		t.Fatalf("after the first %d: %+v", before, st)
	}
	// The goroutine is idle (the Flush returned) until the next Write.
	sink.free = 0
	for i := range stuck { // within one linger: one batch of ~25 KB
		w.Write(&Record{Kind: "tcp", Packets: int64(before + i)})
	}
	<-sink.entered
	time.Sleep(20 * time.Millisecond) // any straggler is queued behind the batch
	st := w.Stats()
	if accounted(st) != before+stuck || st.Queued != stuck {
		t.Fatalf("while the sink holds a batch: %+v, %d accounted; want %d, %d queued",
			st, accounted(st), before+stuck, stuck)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := w.Close(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close with a stuck sink: %v", err)
	}
	t.Logf("Close: %v", err)
	st = w.Stats()
	if st.Dropped != stuck || st.Written != before || st.Queued != 0 || accounted(st) != before+stuck {
		t.Fatalf("after Close gave up: %+v; want %d written, %d dropped, none queued", st, before, stuck)
	}
	sink.release()
	if err := w.Close(ctxFor(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if st2 := w.Stats(); st2.Written != st.Written || st2.Dropped != st.Dropped || st2.Queued != 0 {
		t.Fatalf("the sink moving after Close gave up changed the counts: %+v, then %+v", st, st2)
	}
}
