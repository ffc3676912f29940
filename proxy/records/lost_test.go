package records

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// lostLine is a records_lost marker as the tests read it.
type lostLine struct {
	Time      time.Time `json:"time"`
	Kind      string    `json:"kind"`
	Sink      string    `json:"sink"`
	Lost      uint64    `json:"lost"`
	LostSince time.Time `json:"lost_since"`
	Error     string    `json:"error"`
}

// lostMarkers returns the records_lost markers in b, checking that each
// has exactly the marker's fields.
func lostMarkers(t *testing.T, b []byte) []lostLine {
	t.Helper()
	var out []lostLine
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var fields map[string]any
		if json.Unmarshal(sc.Bytes(), &fields) != nil || fields["kind"] != "records_lost" {
			continue
		}
		var keys []string
		for k := range fields {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		if want := []string{"error", "kind", "lost", "lost_since", "sink", "time"}; !slices.Equal(keys, want) {
			t.Fatalf("marker %s has fields %v, want %v", sc.Bytes(), keys, want)
		}
		var m lostLine
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("marker %s: %v", sc.Bytes(), err)
		}
		out = append(out, m)
	}
	return out
}

// switchSink keeps what it is given, or fails while failing is set.
type switchSink struct {
	mu      sync.Mutex
	failing bool
	buf     bytes.Buffer
}

func (s *switchSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failing {
		return 0, errors.New("no space left on device")
	}
	return s.buf.Write(p)
}

func (s *switchSink) set(f bool) { s.mu.Lock(); s.failing = f; s.mu.Unlock() }

func (s *switchSink) bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.buf.Bytes())
}

// TestWriterLostMarker: when the access log lost records (a write failed,
// then the queue was full), the next records it takes come after one
// records_lost line saying how many, since when and why; a loss is told
// once, and records with no loss before them get no marker.
func TestWriterLostMarker(t *testing.T) {
	sink := &switchSink{failing: true}
	w := newWriter(4, recordQueueBytes, nil, sink)
	defer w.Close(context.Background())
	flush := func() {
		t.Helper()
		if err := w.Flush(ctxFor(t, 5*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	for i := range 3 { // a write fails: 3 lost
		w.Write(&Record{Kind: "tcp", Packets: int64(i)})
	}
	flush()
	sink.set(false)
	w.Write(&Record{Kind: "tcp", Packets: 3})
	flush()
	w.Write(&Record{Kind: "tcp", Packets: 4}) // no loss since the marker
	flush()

	if st := w.Stats(); st.Failed != 3 || st.Written != 2 || st.LossMarkers != 1 {
		t.Fatalf("stats %+v, want 3 failed, 2 written, 1 loss marker", st)
	}
	out := sink.bytes()
	lines := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	if len(lines) != 3 || !strings.Contains(lines[0], `"kind":"records_lost"`) {
		t.Fatalf("the access log holds %q, want a marker, then records 3 and 4", out)
	}
	m := lostMarkers(t, out)
	if len(m) != 1 || m[0].Sink != "access_log" || m[0].Lost != 3 || !strings.Contains(m[0].Error, "no space left on device") {
		t.Fatalf("markers %+v, want one of 3 lost to a failed write", m)
	}
	if m[0].LostSince.Before(start) || m[0].Time.Before(m[0].LostSince) || time.Since(m[0].Time) > 5*time.Second {
		t.Errorf("marker at %v of losses since %v; the test began %v", m[0].Time, m[0].LostSince, start)
	}
	if got := seqs(t, out); !slices.Equal(got, []int64{3, 4}) {
		t.Fatalf("records %v, want 3 and 4", got)
	}
	// Another loss: its marker dates the losses from after the first
	// marker, not from the first loss ever (told of already).
	sink.set(true)
	w.Write(&Record{Kind: "tcp", Packets: 5})
	flush()
	sink.set(false)
	w.Write(&Record{Kind: "tcp", Packets: 6})
	flush()
	if m2 := lostMarkers(t, sink.bytes()); len(m2) != 2 || m2[1].Lost != 1 || m2[1].LostSince.Before(m[0].Time) {
		t.Fatalf("markers %+v, want a second of 1 lost since after the first's time %v", m2, m[0].Time)
	}

	// The queue overflows: 4 queued behind a stuck write, the rest dropped.
	gate := newGateSink()
	w2 := newWriter(4, recordQueueBytes, nil, gate)
	t.Cleanup(func() { gate.release(); w2.Close(context.Background()) })
	w2.Write(&Record{Packets: 0})
	<-gate.entered
	before := time.Now()
	for i := 1; i < 20; i++ {
		w2.Write(&Record{Packets: int64(i)})
	}
	gate.release()
	if err := w2.Flush(ctxFor(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	st := w2.Stats()
	m = lostMarkers(t, gate.buf.Bytes())
	if st.Dropped != 15 || st.LossMarkers != 1 || len(m) != 1 || m[0].Lost != 15 || !strings.Contains(m[0].Error, "queue full") || m[0].LostSince.Before(before) {
		t.Fatalf("stats %+v, markers %+v: want one marker of 15 dropped, since after %v", st, m, before)
	}
	if got := seqs(t, gate.buf.Bytes()); !slices.Equal(got, []int64{0, 1, 2, 3, 4}) {
		t.Fatalf("records %v, want 0 to 4", got)
	}
}
