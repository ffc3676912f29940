package records

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// gateSink blocks every Write until release, and closes entered when the
// first Write has begun.
type gateSink struct {
	entered, gate chan struct{}
	in, out       sync.Once
	buf           bytes.Buffer // written by the writer goroutine only
	writes        int          // likewise
}

func newGateSink() *gateSink {
	return &gateSink{entered: make(chan struct{}), gate: make(chan struct{})}
}

func (s *gateSink) Write(p []byte) (int, error) {
	s.in.Do(func() { close(s.entered) })
	<-s.gate
	s.writes++
	return s.buf.Write(p)
}

func (s *gateSink) release() { s.out.Do(func() { close(s.gate) }) }

// seqs decodes JSON lines and returns each record's Packets field, which
// the tests use as a sequence number. records_lost markers are left out:
// lostMarkers reads them.
func seqs(t *testing.T, b []byte) []int64 {
	t.Helper()
	var out []int64
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		var r Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if r.Kind == "records_lost" {
			continue
		}
		if r.Time.IsZero() || r.Time.Location() != time.UTC {
			t.Fatalf("line %q: time not set in UTC", sc.Text())
		}
		out = append(out, r.Packets)
	}
	return out
}

func inOrder(t *testing.T, got []int64, n int) {
	t.Helper()
	if len(got) != n {
		t.Fatalf("%d records delivered, want %d", len(got), n)
	}
	for i, s := range got {
		if s != int64(i) {
			t.Fatalf("record %d has sequence number %d: out of order", i, s)
		}
	}
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// writeWithin fails the test unless write returns within d: Write must
// never wait for a sink.
func writeWithin(t *testing.T, d time.Duration, write func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); write() }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("Write blocked for more than %v behind a stuck sink", d)
	}
}

// TestWriterOrder: every record reaches every sink, complete and in
// the order written.
func TestWriterOrder(t *testing.T) {
	var a, b bytes.Buffer
	w := NewWriter(nil, &a, &b)
	const n = 2000
	for i := range n {
		w.Write(&Record{Kind: "tcp", Packets: int64(i)})
	}
	if err := w.Close(ctxFor(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("sinks got different lines")
	}
	inOrder(t, seqs(t, a.Bytes()), n)
	if st := w.Stats(); st.Written != n || st.Dropped != 0 || st.Queued != 0 || st.LagSeconds != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// countSink counts the writes it gets.
type countSink struct {
	mu     sync.Mutex
	writes int
	buf    bytes.Buffer
}

func (s *countSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writes++
	return s.buf.Write(p)
}

// TestWriterLingers: records that come one at a time, as requests end, a
// little apart, are written several to a write, not one each; Flush does
// not wait out the linger.
func TestWriterLingers(t *testing.T) {
	var s countSink
	w := NewWriter(nil, &s)
	defer w.Close(ctxFor(t, 5*time.Second))
	const n = 50
	for i := range n {
		w.Write(&Record{Kind: "tcp", Packets: int64(i)})
		time.Sleep(recordLinger / 20) // the writer would have written each alone
	}
	start := time.Now()
	if err := w.Flush(ctxFor(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Flush took %s", d)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	inOrder(t, seqs(t, s.buf.Bytes()), n)
	// 50 records over at least 2.5 lingers: a handful of writes, unless the
	// machine stalled for a linger several times.
	if s.writes > n/3 {
		t.Errorf("%d records took %d writes, want them batched", n, s.writes)
	}
}

// TestWriterStuckSink: while a sink is stuck Write returns at once,
// records beyond the queue's bound are dropped and counted exactly, and the
// lag shows; once the sink moves, the queued records arrive in order.
func TestWriterStuckSink(t *testing.T) {
	const bound, sent = 8, 500
	sink := newGateSink()
	w := newWriter(bound, recordQueueBytes, nil, sink)
	t.Cleanup(func() { sink.release(); w.Close(context.Background()) })
	w.Write(&Record{Packets: 0})
	<-sink.entered // the goroutine holds record 0 and is stuck in the sink
	writeWithin(t, 2*time.Second, func() {
		for i := 1; i < sent; i++ {
			w.Write(&Record{Packets: int64(i)})
		}
	})
	st := w.Stats()
	// Queued counts the record the sink holds too: every record sent is
	// in one counter.
	if st.Dropped != sent-1-bound || st.Queued != bound+1 || st.Written != 0 {
		t.Fatalf("while stuck: %+v; want %d dropped, %d queued", st, sent-1-bound, bound+1)
	}
	time.Sleep(50 * time.Millisecond)
	if st := w.Stats(); st.LagSeconds < 0.05 || st.DroppingSeconds < 0.05 {
		t.Errorf("lag %vs, dropping for %vs after the sink was stuck for 50ms", st.LagSeconds, st.DroppingSeconds)
	}

	sink.release()
	if err := w.Flush(ctxFor(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	st = w.Stats()
	got := seqs(t, sink.buf.Bytes())
	if uint64(len(got)) != sent-st.Dropped || st.Written != uint64(len(got)) || st.Queued != 0 || st.LagSeconds != 0 {
		t.Fatalf("%d delivered, stats %+v; want sent − dropped = %d", len(got), st, sent-st.Dropped)
	}
	inOrder(t, got, bound+1)
	// The queued records came after a marker of the ones dropped.
	if m := lostMarkers(t, sink.buf.Bytes()); len(m) != 1 || m[0].Lost != st.Dropped || !strings.Contains(m[0].Error, "queue full") {
		t.Errorf("records_lost markers %+v, want one of %d dropped: queue full", m, st.Dropped)
	}
	if sink.writes != 2 {
		t.Errorf("%d sink writes, want 2: the stuck record, then the queue in one batch", sink.writes)
	}
	time.Sleep(1100 * time.Millisecond) // drops a second apart are no longer a streak
	if st := w.Stats(); st.DroppingSeconds != 0 {
		t.Errorf("still dropping %vs, a second after the last drop", st.DroppingSeconds)
	}
}

// TestWriterByteBound: the queue also holds at most maxBytes of
// lines, counting the one the goroutine is writing.
func TestWriterByteBound(t *testing.T) {
	rec := func(i int) *Record { // every line the same length
		return &Record{Time: time.Unix(1700000000, 0), Kind: "http", Path: "/0123456789", Packets: int64(i)}
	}
	line, _ := json.Marshal(rec(0))
	size := int64(len(line) + 1)
	sink := newGateSink()
	w := newWriter(100, 3*size+size/2, nil, sink)
	t.Cleanup(func() { sink.release(); w.Close(context.Background()) })
	w.Write(rec(0))
	<-sink.entered
	for i := 1; i < 10; i++ {
		w.Write(rec(i))
	}
	if st := w.Stats(); st.Queued != 3 || st.Dropped != 7 {
		t.Fatalf("stats %+v; want the stuck one and 2 behind it queued, 7 dropped", st)
	}
	sink.release()
	if err := w.Close(ctxFor(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	inOrder(t, seqs(t, sink.buf.Bytes()), 3)
	// The bytes came off the account as the lines were written.
	if w.queuedBytes.Load() != 0 {
		t.Fatalf("%d bytes still accounted after Close", w.queuedBytes.Load())
	}
}

// slowSink takes a while over each line, like a busy disk.
type slowSink struct{ buf bytes.Buffer }

func (s *slowSink) Write(p []byte) (int, error) {
	time.Sleep(100 * time.Microsecond)
	return s.buf.Write(p)
}

// TestWriterFlushAndClose: Flush returns once everything queued
// before it is written, without stopping the writer; Close delivers the
// rest; records after Close are dropped and counted.
func TestWriterFlushAndClose(t *testing.T) {
	sink := &slowSink{}
	w := NewWriter(nil, sink)
	for i := range 300 {
		w.Write(&Record{Packets: int64(i)})
	}
	if err := w.Flush(ctxFor(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	inOrder(t, seqs(t, sink.buf.Bytes()), 300)
	for i := 300; i < 600; i++ {
		w.Write(&Record{Packets: int64(i)})
	}
	if err := w.Close(ctxFor(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	inOrder(t, seqs(t, sink.buf.Bytes()), 600)
	w.Write(&Record{Packets: 600})
	if err := w.Close(ctxFor(t, time.Second)); err != nil { // a second Close is harmless
		t.Fatal(err)
	}
	if err := w.Flush(ctxFor(t, time.Second)); err != nil {
		t.Fatal(err)
	}
	if st := w.Stats(); st.Written != 600 || st.Dropped != 1 {
		t.Fatalf("stats %+v; want 600 written, 1 dropped after Close", st)
	}
}

// TestWriterCloseDeadline: Close gives up when its context ends while
// a sink is stuck, and says so.
func TestWriterCloseDeadline(t *testing.T) {
	sink := newGateSink()
	w := NewWriter(nil, sink)
	w.Write(&Record{})
	w.Write(&Record{})
	<-sink.entered
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := w.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close with a stuck sink: %v", err)
	}
	if err := w.Flush(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Flush after Close with a stuck sink: %v", err)
	}
	sink.release()
	if err := w.Close(ctxFor(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if n := len(seqs(t, sink.buf.Bytes())); n != 2 {
		t.Fatalf("%d records after the sink moved again, want 2", n)
	}
}

// TestWriterConcurrent: concurrent writers never interleave lines,
// every sink gets every line, and each writer's records keep their order.
func TestWriterConcurrent(t *testing.T) {
	var a, b bytes.Buffer
	w := NewWriter(nil, &a, &b)
	const writers, each = 8, 500
	var wg sync.WaitGroup
	for g := range writers {
		wg.Go(func() {
			for i := range each {
				w.Write(&Record{Kind: "tcp", DestPort: uint16(g), Packets: int64(i), Error: fmt.Sprintf("%0*d", i%97, 0)})
			}
		})
	}
	go func() { _ = w.Stats() }() // Stats races with nothing
	wg.Wait()
	if err := w.Close(ctxFor(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("sinks got different lines")
	}
	next := make([]int64, writers)
	sc := bufio.NewScanner(&a)
	n := 0
	for sc.Scan() {
		var r Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if r.Packets != next[r.DestPort] {
			t.Fatalf("writer %d: record %d after %d", r.DestPort, r.Packets, next[r.DestPort]-1)
		}
		next[r.DestPort]++
		n++
	}
	if st := w.Stats(); n != writers*each || st.Written != writers*each || st.Dropped != 0 {
		t.Fatalf("%d lines, stats %+v; want %d", n, st, writers*each)
	}
}

// failSink fails while failing is set.
type failSink struct {
	mu      sync.Mutex
	failing bool
}

func (s *failSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failing {
		return 0, errors.New("no space left on device")
	}
	return len(p), nil
}

func (s *failSink) set(f bool) { s.mu.Lock(); s.failing = f; s.mu.Unlock() }

// TestWriterFailingSink: sink errors and the records they lost are
// counted, and how long the sinks have been failing shows until a record
// goes through with no failure for failureRecovery: a write that succeeds
// between failures does not end it.
func TestWriterFailingSink(t *testing.T) {
	sink := &failSink{failing: true}
	w := NewWriter(nil, sink)
	defer w.Close(context.Background())
	write := func() {
		t.Helper()
		w.Write(&Record{})
		if err := w.Flush(ctxFor(t, 5*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	write() // two writes: a Flush in between keeps them out of one batch
	write()
	time.Sleep(20 * time.Millisecond)
	st := w.Stats()
	if st.SinkErrors != 2 || st.FailingSeconds < 0.02 || st.LastError == "" || st.Written != 0 || st.Failed != 2 {
		t.Fatalf("failing sink: %+v, want 2 records failed, none written", st)
	}
	sink.set(false)
	write()
	if st := w.Stats(); st.FailingSeconds < 0.02 || st.Written != 1 || st.Failed != 2 {
		t.Fatalf("a success right after failures: %+v, want still failing", st)
	}
	// As if the last failure had been failureRecovery ago.
	back := int64(failureRecovery)
	w.failingSince.Add(-back)
	w.lastFailure.Add(-back)
	if st := w.Stats(); st.FailingSeconds != 0 {
		t.Fatalf("a success and failureRecovery without a failure: %+v, want recovered", st)
	}
	write()
	if st := w.Stats(); st.FailingSeconds != 0 || st.SinkErrors != 2 || st.Written != 2 || w.failingSince.Load() != 0 {
		t.Fatalf("after the sink recovered: %+v", st)
	}
}

// TestWriterFailureForgotten: a sink failure stops counting as current
// once failureMemory passes without another (no record came to fail), so an
// appliance the GWLB stopped sending to does not stay unhealthy for good; the
// next failure makes it current again.
func TestWriterFailureForgotten(t *testing.T) {
	sink := &failSink{failing: true}
	w := NewWriter(nil, sink)
	defer w.Close(context.Background())
	w.Write(&Record{})
	if err := w.Flush(ctxFor(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if st := w.Stats(); st.FailingSeconds <= 0 {
		t.Fatalf("just failed: %+v", st)
	}
	// As if the failure had happened failureMemory and a little ago.
	back := int64(failureMemory + time.Second)
	w.failingSince.Add(-back)
	w.lastFailure.Add(-back)
	if st := w.Stats(); st.FailingSeconds != 0 || st.SinkErrors != 1 || st.LastError == "" {
		t.Fatalf("after failureMemory without a failure: %+v, want FailingSeconds 0", st)
	}
	w.Write(&Record{})
	if err := w.Flush(ctxFor(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if st := w.Stats(); st.FailingSeconds < (failureMemory+time.Second).Seconds() || st.SinkErrors != 2 {
		t.Fatalf("failing again: %+v, want FailingSeconds from the first failure", st)
	}
}

// shipSink records what a Shipper is handed.
type shipSink struct {
	mu    sync.Mutex
	times []time.Time
	lines []string
	srcs  []Source
}

func (s *shipSink) Ship(t time.Time, line []byte, src Source) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.times = append(s.times, t)
	s.srcs = append(s.srcs, src)
	s.lines = append(s.lines, string(line))
}

// TestWriterShipperNotHeldByFiles: the Shipper gets each line at once, with
// the record's time, while a file is stuck: a record waits in one queue on
// its way to each destination, never in two in series.
func TestWriterShipperNotHeldByFiles(t *testing.T) {
	gate, ship := newGateSink(), &shipSink{}
	w := NewWriter(ship, gate)
	end := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	w.Write(&Record{Time: end, Packets: 1})
	<-gate.entered
	w.Write(&Record{Time: end, Packets: 2})
	ship.mu.Lock()
	got := slices.Clone(ship.times)
	lines := slices.Clone(ship.lines)
	ship.mu.Unlock()
	if len(got) != 2 || !got[0].Equal(end) || !got[1].Equal(end) {
		t.Fatalf("shipped times %v while the file was stuck, want two at %v", got, end)
	}
	if s := seqs(t, []byte(strings.Join(lines, ""))); !slices.Equal(s, []int64{1, 2}) {
		t.Fatalf("shipped records %v, want 1 and 2", s)
	}
	gate.release()
	if err := w.Close(ctxFor(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if s := seqs(t, gate.buf.Bytes()); !slices.Equal(s, []int64{1, 2}) {
		t.Fatalf("file got %v, want 1 and 2", s)
	}
}

// TestWriterShipperOnly: with no files, records go to the Shipper without
// a queue or goroutine of the Writer's, and count as written.
func TestWriterShipperOnly(t *testing.T) {
	ship := &shipSink{}
	w := NewWriter(ship)
	w.Write(&Record{Packets: 7})
	if w.q != nil {
		t.Fatal("a writer without files started a queue")
	}
	if len(ship.lines) != 1 || w.Stats().Written != 1 {
		t.Fatalf("shipped %d lines, stats %+v", len(ship.lines), w.Stats())
	}
	if err := w.Close(ctxFor(t, time.Second)); err != nil {
		t.Fatal(err)
	}
	w.Write(&Record{Packets: 8})
	if st := w.Stats(); len(ship.lines) != 1 || st.Written != 1 || st.Dropped != 1 {
		t.Fatalf("after Close: shipped %d lines, stats %+v; want the record dropped", len(ship.lines), st)
	}
}

// TestWriterNoSinks: the default writer discards records, counting them
// as dropped, and needs no goroutine and no Close.
func TestWriterNoSinks(t *testing.T) {
	w := NewWriter(nil)
	r := &Record{}
	w.Write(r)
	if r.Time.IsZero() {
		t.Error("Write left the record's time unset")
	}
	if w.q != nil {
		t.Error("a writer without sinks has a queue")
	}
	if err := w.Flush(ctxFor(t, time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(ctxFor(t, time.Second)); err != nil {
		t.Fatal(err)
	}
	if st := w.Stats(); st != (Stats{Dropped: 1}) {
		t.Fatalf("stats %+v, want the record counted as dropped, nothing else", st)
	}
}

// benchRecord is a typical record: an HTTP request inside a bumped
// connection.
func benchRecord() Record {
	return Record{
		Time: time.Now(), Kind: "http", Action: "bump", Rule: "bump-all",
		Endpoint: "vpce-0123456789abcdef0", Attachment: "1111222233334444", FlowCookie: "0badf00d",
		ClientIP: "10.0.1.23", ClientPort: 50123, DestIP: "93.184.216.34", DestPort: 443,
		BytesOut: 812, BytesIn: 48213, DurationMS: 42.317, Result: "ok",
		SNI: "www.example.com", ALPN: "h2", TLSVersion: "TLS 1.3", TLSCipher: "TLS_AES_128_GCM_SHA256", UpstreamVerify: "ok",
		Method: "GET", Scheme: "https", Host: "www.example.com", Path: "/assets/app.js", Status: 200,
		UserAgent: "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)",
	}
}

// stallSink takes 50µs over each line, like a busy disk, until it is let go.
type stallSink struct{ free atomic.Bool }

func (s *stallSink) Write(p []byte) (int, error) {
	if !s.free.Load() {
		time.Sleep(50 * time.Microsecond)
	}
	return len(p), nil
}

// BenchmarkWriter: what a record costs, to io.Discard and to a file,
// from one goroutine and in parallel, every record delivered (Close is
// inside the timing). With a slow sink it measures what the goroutine that
// writes the record pays (the relay's stall), and reports what was dropped.
func BenchmarkWriter(b *testing.B) {
	// The drop warnings would interleave with the results.
	defer slog.SetDefault(slog.Default())
	slog.SetDefault(slog.New(slog.DiscardHandler))
	type sinkFn func(b *testing.B) (sink io.Writer, release func())
	sinks := map[string]sinkFn{
		"discard": func(*testing.B) (io.Writer, func()) { return io.Discard, nil },
		"file": func(b *testing.B) (io.Writer, func()) {
			f, err := os.Create(filepath.Join(b.TempDir(), "access.log"))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { f.Close() })
			return f, nil
		},
		"slow": func(*testing.B) (io.Writer, func()) {
			s := &stallSink{}
			return s, func() { s.free.Store(true) }
		},
	}
	for _, name := range []string{"discard", "file", "slow"} {
		for _, par := range []bool{false, true} {
			sub := name
			if par {
				sub += "/parallel"
			}
			b.Run(sub, func(b *testing.B) {
				sink, release := sinks[name](b)
				w := NewWriter(nil, sink)
				b.ReportAllocs()
				b.ResetTimer()
				if par {
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							r := benchRecord()
							w.Write(&r)
						}
					})
				} else {
					for range b.N {
						r := benchRecord()
						w.Write(&r)
					}
				}
				if release != nil {
					b.StopTimer()
					release()
				}
				if err := w.Close(context.Background()); err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(w.Stats().Dropped)/float64(b.N), "drops/op")
			})
		}
	}
}

// TestWriterCountsUnencodable: a record that cannot be encoded (a NaN
// duration) reaches no sink and is counted as dropped, so that every record
// written is counted.
func TestWriterCountsUnencodable(t *testing.T) {
	var file bytes.Buffer
	ship := &shipSink{}
	w := NewWriter(ship, &file)
	w.Write(&Record{Packets: 0})
	w.Write(&Record{Packets: 1, DurationMS: math.NaN()})
	w.Write(&Record{Packets: 2})
	if err := w.Close(ctxFor(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if s := seqs(t, file.Bytes()); !slices.Equal(s, []int64{0, 2}) {
		t.Fatalf("file got %v, want 0 and 2", s)
	}
	if m := lostMarkers(t, file.Bytes()); len(m) != 1 || m[0].Lost != 1 || !strings.Contains(m[0].Error, "encoded") {
		t.Fatalf("records_lost markers %+v, want one of the unencodable record", m)
	}
	if len(ship.lines) != 2 {
		t.Fatalf("shipped %d lines, want 2", len(ship.lines))
	}
	if st := w.Stats(); st.Written != 2 || st.Dropped != 1 {
		t.Fatalf("stats %+v: want 2 written and the unencodable record dropped", st)
	}
}
