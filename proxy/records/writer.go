package records

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// The record queue's bounds. Records are a few hundred bytes (at most
// DefaultMaxLineBytes, with a long URL path), and at tens of thousands of
// records a second 65,536 of them ride out a stall of a few seconds (a log
// rotation, a slow fsync, a paused reader on stdout) in some tens of MiB. A
// sink slower than that for longer is not a hiccup: records are dropped and
// counted, and the stall shows in Stats. The byte bound keeps large records
// from turning the same count into gigabytes.
const (
	recordQueueLen   = 1 << 16
	recordQueueBytes = 64 << 20
)

// Shipper takes each record as a JSON line the moment it is written, with
// the record's time and the client it belongs to (SourceOf). It holds the
// lines in a bounded buffer of its own, with its own drop policy (by source,
// so that one client cannot crowd out the others), and must never block: it
// is the only queue between Write and its destination. cwlogs.Shipper is
// one.
type Shipper interface {
	Ship(t time.Time, line []byte, src Source)
}

// Writer encodes records as JSON lines and hands them to their sinks.
//
// Every record goes through exactly one bounded queue on its way to each
// destination. A Shipper gets the line at once and queues it itself. Files
// (stdout, a log file) share the Writer's queue: one goroutine writes it to
// them in order, whole lines, several to a Write: it gathers what comes
// within recordLinger of a batch's first line.
// Write never blocks: when the queue is full the record is dropped for the
// files and counted, so a slow stdout pipe or disk can never stall the
// relays that write records, nor hold back what the Shipper ships. A file
// that fails is logged, never retried: the records it did not wholly take
// are counted as failed, and a line it cut short (a disk filling mid-write)
// is ended before its next write, so that only the cut record is lost.
//
// It is safe for concurrent use. Close delivers what is queued and stops
// the goroutine; a writer without files starts no goroutine.
type Writer struct {
	shipper  Shipper
	sinks    []io.Writer
	midLine  []bool // the last write to sinks[i] stopped within a line: the goroutine's own
	maxBytes int64
	maxLine  atomic.Int64 // the longest line, newline excluded: SetMaxLineBytes
	q        chan *recordLine
	done     chan struct{} // closed when the goroutine has written everything and stopped

	// Write sends holding mu shared, and Close closes q holding it
	// exclusively, so nothing is ever sent on a closed queue. Sends never
	// block, so neither does Close for long.
	mu     sync.RWMutex
	closed bool

	queuedBytes atomic.Int64
	// pending counts the records handed to the files and not yet written
	// or failed: those queued and those in the batch being written. The
	// goroutine takes its batch's records off it when it counts them
	// (settle), and Close, giving up on a stuck sink, counts what is left
	// as dropped; settleMu keeps the two from counting a record twice.
	pending     atomic.Int64
	settleMu    sync.Mutex
	abandoned   bool // under settleMu: Close gave up and counted pending as dropped
	written     atomic.Uint64
	dropped     atomic.Uint64
	failed      atomic.Uint64
	sinkErrors  atomic.Uint64
	lossMarkers atomic.Uint64 // records_lost lines the files took whole
	// Times below are monoNow values; 0 means never or none.
	head         atomic.Int64 // when the line being written was queued; 0 when idle
	failingSince atomic.Int64 // first sink error since the sinks last recovered
	lastFailure  atomic.Int64
	lastOK       atomic.Int64 // the last batch every sink took whole
	lastError    atomic.Pointer[string]
	lastDrop     atomic.Int64
	dropStreak   atomic.Int64 // when drops less than a second apart began
	lastDropLog  atomic.Int64
	// For the records_lost marker (lost.go): the wall time (UnixNano) of
	// the first loss since the last marker, and why records were dropped.
	firstLoss  atomic.Int64
	dropReason atomic.Pointer[string]
}

// clockBase anchors monoNow.
var clockBase = time.Now()

// monoNow returns nanoseconds on the monotonic clock, never 0: a step of
// the wall clock must not make a record look stuck.
func monoNow() int64 { return int64(time.Since(clockBase)) + 1 }

// recordLine is one queued line, or a Flush marker when flushed is set.
type recordLine struct {
	buf     bytes.Buffer
	queued  int64 // monoNow
	flushed chan struct{}
}

// encode makes r the line's JSON, newline included.
func (l *recordLine) encode(r *Record) error {
	l.buf.Reset()
	b, err := appendRecord(l.buf.AvailableBuffer(), r)
	if err != nil {
		return err
	}
	l.buf.Write(append(b, '\n')) // in place unless the buffer had to grow
	return nil
}

// linePool recycles lines: a record then costs no allocation of its own.
var linePool = sync.Pool{New: func() any { return new(recordLine) }}

func putLine(l *recordLine) {
	if l.buf.Cap() <= 16<<10 { // the rare huge record is not kept around
		linePool.Put(l)
	}
}

// Stats are a Writer's counters.
type Stats struct {
	// Written, Dropped and Failed count records by whether the files got
	// them (or, without files, the Shipper): the Shipper keeps counts of its
	// own. Every record ends up in one of them, or is still Queued.
	Written uint64 `json:"written"` // records every sink took whole
	Dropped uint64 `json:"dropped"` // records dropped: queue full, written after Close, not encodable, or no sink at all
	// Failed counts records some sink did not take whole: its write failed
	// (a full disk, a closed stdout) before or within the record's line.
	Failed uint64 `json:"failed"`
	// Queued counts the records waiting for the sinks, the batch being
	// written included.
	Queued     int    `json:"queued"`
	SinkErrors uint64 `json:"sink_errors"` // sink writes (of one or more records) that failed
	// LossMarkers counts the records_lost lines the files took whole.
	LossMarkers uint64 `json:"loss_markers"`
	// LagSeconds is how long the oldest record not yet written has waited:
	// it grows while a sink blocks or cannot keep up; 0 when idle.
	LagSeconds float64 `json:"lag_seconds"`
	// DroppingSeconds is how long records have been dropped without a
	// break of a second; 0 when the last drop is older than that.
	DroppingSeconds float64 `json:"dropping_seconds"`
	// FailingSeconds is how long sink writes have been failing: since the
	// first failure after the sinks last recovered. They recover when every
	// sink takes a batch whole and no write has failed for failureRecovery,
	// so a disk that takes a write now and then while refusing most keeps
	// counting. 0 when recovered, or when nothing has failed for
	// failureMemory (no records came to try: a target the GWLB stops
	// sending to would stay broken for good).
	FailingSeconds float64 `json:"failing_seconds"`
	LastError      string  `json:"last_error,omitempty"` // the last sink error
}

// NewWriter returns a writer that ships every record line to shipper (nil
// for none) and copies it to each file, in the order Write was called.
func NewWriter(shipper Shipper, files ...io.Writer) *Writer {
	return newWriter(recordQueueLen, recordQueueBytes, shipper, files...)
}

func newWriter(maxRecords int, maxBytes int64, shipper Shipper, sinks ...io.Writer) *Writer {
	w := &Writer{shipper: shipper, sinks: sinks, maxBytes: maxBytes, done: make(chan struct{})}
	w.midLine = make([]bool, len(sinks))
	w.maxLine.Store(DefaultMaxLineBytes)
	if len(sinks) == 0 {
		close(w.done)
		return w
	}
	w.q = make(chan *recordLine, maxRecords)
	go w.run()
	return w
}

// Write encodes r as one JSON line and queues it for the sinks. It never
// blocks: when the queue is full the record is dropped and counted. A line
// longer than the limit (SetMaxLineBytes) is shortened field by field and
// marked truncated, so that it stays valid JSON wherever it goes. r is not
// retained.
func (w *Writer) Write(r *Record) {
	if r.Time.IsZero() {
		r.Time = time.Now()
	}
	r.Time = r.Time.UTC()
	if len(w.sinks) == 0 && w.shipper == nil {
		// No sink configured: the record goes nowhere, and is counted so
		// (not as a drop streak: nothing is stuck).
		w.dropped.Add(1)
		return
	}
	l := linePool.Get().(*recordLine)
	if err := l.encode(r); err != nil {
		putLine(l)
		w.dropped.Add(1) // lost: it must still be counted
		w.noteLoss(&lostUnencoding)
		slog.Error("encoding access record", "err", err)
		return
	}
	if limit := w.maxLine.Load(); int64(l.buf.Len()-1) > limit {
		if err := shorten(l, r, int(limit)); err != nil {
			putLine(l)
			w.dropped.Add(1)
			w.noteLoss(&lostUnencoding)
			slog.Error("encoding a shortened access record", "err", err)
			return
		}
	}
	now := monoNow()
	n := int64(l.buf.Len())
	sent := false
	w.mu.RLock()
	if !w.closed {
		if w.shipper != nil {
			w.shipper.Ship(r.Time, l.buf.Bytes(), SourceOf(r)) // copies the line; never blocks
		}
		if len(w.sinks) == 0 {
			w.mu.RUnlock()
			w.written.Add(1)
			putLine(l)
			return
		}
		l.queued = now
		if w.queuedBytes.Add(n) <= w.maxBytes {
			w.pending.Add(1) // before the goroutine can take it off
			select {
			case w.q <- l:
				sent = true
			default:
				w.pending.Add(-1)
			}
		}
		if !sent {
			w.queuedBytes.Add(-n)
		}
	}
	w.mu.RUnlock()
	if sent {
		return
	}
	putLine(l)
	w.drop(now)
}

// drop counts a dropped record, and warns at most every 10 s about it.
func (w *Writer) drop(now int64) {
	n := w.dropped.Add(1)
	w.noteLoss(&lostQueueFull)
	if last := w.lastDrop.Swap(now); last == 0 || now-last > int64(time.Second) {
		w.dropStreak.Store(now)
	}
	last := w.lastDropLog.Load()
	if (last == 0 || now-last >= int64(10*time.Second)) && w.lastDropLog.CompareAndSwap(last, now) {
		slog.Warn("dropping access records: the queue is full (a sink is slow or stuck) or closed",
			"dropped_total", n, "queued", len(w.q))
	}
}

// maxBatch is how many bytes of queued lines the goroutine takes at once:
// while records come faster than single writes, one write per sink carries
// many of them, and the sinks cost a system call per batch, not per record.
const maxBatch = 64 << 10

// run writes queued lines to the sinks until Close.
func (w *Writer) run() {
	defer close(w.done)
	var batch []*recordLine
	var out []byte
	var lost lostMarker
	linger := time.NewTimer(recordLinger)
	for l := range w.q {
		linger.Reset(recordLinger)
		batch = w.gather(append(batch[:0], l), linger.C)
		linger.Stop()
		out = out[:0]
		if batch[0].flushed == nil { // records to write: any loss is told first
			out = w.appendLost(out, &lost)
		}
		lostLen := len(out)
		for _, b := range batch {
			out = append(out, b.buf.Bytes()...) // a Flush marker adds nothing
		}
		took := 0
		if len(out) > 0 {
			w.head.Store(batch[0].queued)
			took = w.deliver(out)
			w.queuedBytes.Add(-int64(len(out) - lostLen))
			if lostLen > 0 && took >= lostLen {
				w.lostWritten(&lost)
			}
			took = max(took-lostLen, 0) // of the records' bytes
		}
		// Before a Flush waiting on this batch returns: what it reads of
		// the lag must already say nothing is being written.
		if len(w.q) == 0 {
			w.head.Store(0)
		}
		end, written, failed := 0, 0, 0
		var flushed chan struct{}
		for _, b := range batch {
			if b.flushed != nil { // the last one: everything before it is written
				flushed = b.flushed
				continue
			}
			// A record is written if every sink took its whole line.
			if end += b.buf.Len(); end <= took {
				written++
			} else {
				failed++
			}
			putLine(b)
		}
		// Counted before a Flush waiting on this batch returns, so that
		// the stats it reads next include the batch.
		w.settle(written, failed)
		if failed > 0 {
			w.noteLoss(nil)
		}
		if flushed != nil {
			close(flushed)
		}
		clear(batch)
	}
}

// settle counts a batch's records as written or failed and takes them off
// pending, unless Close gave up on them and counted them as dropped.
func (w *Writer) settle(written, failed int) {
	w.settleMu.Lock()
	defer w.settleMu.Unlock()
	if w.abandoned {
		return
	}
	w.written.Add(uint64(written))
	w.failed.Add(uint64(failed))
	w.pending.Add(-int64(written + failed))
}

// gather adds lines to batch as they are queued, until maxBatch bytes, a
// Flush marker, or linger fires.
func (w *Writer) gather(batch []*recordLine, linger <-chan time.Time) []*recordLine {
	size := batch[0].buf.Len()
	for size < maxBatch && batch[len(batch)-1].flushed == nil {
		select {
		case l, ok := <-w.q:
			if !ok {
				return batch
			}
			batch = append(batch, l)
			size += l.buf.Len()
		case <-linger:
			return batch
		}
	}
	return batch
}

// recordLinger is how long the goroutine waits for more lines after the
// first of a batch before it writes them. Under load it turns a write and a
// wake-up per record (one per request) into one per batch; a record reaches
// the files at most this much later, and Flush and Close do not wait for it.
const recordLinger = 10 * time.Millisecond

// deliver hands a batch to every file: out, the batch's lines end to end,
// in one write each. It returns how many bytes of out every sink took: the
// records wholly within them are written, the others failed.
func (w *Writer) deliver(out []byte) int {
	took := len(out)
	var failed error
	for i, s := range w.sinks {
		n, err := w.writeSink(i, out)
		if err != nil {
			w.sinkErrors.Add(1)
			failed = fmt.Errorf("access record sink %T: %w", s, err)
		}
		took = min(took, n)
	}
	// Log when a sink starts failing and when it recovers, not once per
	// record: a full disk would flood the log with the same line.
	now := monoNow()
	if failed != nil {
		msg := failed.Error()
		w.lastError.Store(&msg)
		if w.failingSince.Load() == 0 || w.recovered(now) {
			w.failingSince.Store(now)
			slog.Error("writing access records", "err", failed)
		}
		w.lastFailure.Store(now)
		return took
	}
	w.lastOK.Store(now)
	// A write that partly failed counts as failing, and so does one that
	// succeeds between failures: only a second without a failure ends the
	// failing time, or a disk that takes a small write now and then while
	// refusing most records would never fail the health check.
	if w.failingSince.Load() != 0 && w.recovered(now) {
		w.failingSince.Store(0)
		slog.Info("writing access records again", "failed_total", w.failed.Load())
	}
	return took
}

// failureRecovery is how long the sinks must go without a failed write,
// having taken a batch whole since, before they count as recovered.
const failureRecovery = time.Second

// recovered says whether a batch went whole to every sink after the last
// failure, and that failure is failureRecovery old.
func (w *Writer) recovered(now int64) bool {
	last, ok := w.lastFailure.Load(), w.lastOK.Load()
	return ok != 0 && ok > last && now-last >= int64(failureRecovery)
}

// newline ends a line a failed write cut short.
var newline = []byte{'\n'}

// writeSink writes out to sinks[i] and returns how many bytes of it the
// sink took. When the sink's last write stopped within a line (a disk that
// filled mid-write keeps the part it took), it first ends that line: the
// next record would otherwise run on from the cut one and be unreadable too.
func (w *Writer) writeSink(i int, out []byte) (int, error) {
	s := w.sinks[i]
	if w.midLine[i] {
		if n, err := s.Write(newline); n != 1 {
			if err == nil {
				err = io.ErrShortWrite
			}
			return 0, fmt.Errorf("ending a line cut short: %w", err)
		}
		w.midLine[i] = false
	}
	n, err := s.Write(out)
	n = min(max(n, 0), len(out))
	if err == nil && n < len(out) {
		err = io.ErrShortWrite
	}
	if n > 0 && out[n-1] != '\n' {
		w.midLine[i] = true
	}
	return n, err
}

// Flush waits until every record queued before the call has been handed to
// the sinks, or ctx is done.
func (w *Writer) Flush(ctx context.Context) error {
	if len(w.sinks) == 0 {
		return nil
	}
	mark := &recordLine{flushed: make(chan struct{})}
	// The marker takes a place in the queue like a record, but must not be
	// dropped: while the queue is full, try again.
	for {
		w.mu.RLock()
		closed, sent := w.closed, false
		if !closed {
			select {
			case w.q <- mark:
				sent = true
			default:
			}
		}
		w.mu.RUnlock()
		if closed {
			return w.wait(ctx) // Close delivers everything queued
		}
		if sent {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("flushing access records: %d queued: %w", w.pending.Load(), ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
	// Lines are written in queue order: the marker's turn comes after
	// every record queued before it.
	select {
	case <-mark.flushed:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("flushing access records: %d queued: %w", w.pending.Load(), ctx.Err())
	}
}

// Close stops accepting records (later ones are dropped and counted), hands
// what is queued to the sinks and stops the goroutine. If ctx ends first it
// returns an error and counts every record not yet written (queued, or in
// the batch a stuck sink holds) as dropped: the process is about to exit
// without them. The goroutine still finishes once the sinks unblock,
// counting nothing more. The sinks themselves are not closed. Close may be
// called more than once.
func (w *Writer) Close(ctx context.Context) error {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		if w.q != nil {
			close(w.q)
		}
	}
	w.mu.Unlock()
	if err := w.wait(ctx); err != nil {
		w.settleMu.Lock()
		defer w.settleMu.Unlock()
		if !w.abandoned {
			w.abandoned = true
			n := w.pending.Swap(0)
			w.dropped.Add(uint64(n))
			return fmt.Errorf("closing access records: %d not written, counted as dropped: %w", n, ctx.Err())
		}
		return err
	}
	return nil
}

func (w *Writer) wait(ctx context.Context) error {
	select {
	case <-w.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("closing access records: %d queued: %w", w.pending.Load(), ctx.Err())
	}
}

// failureMemory is how long a sink failure counts as current without
// another record failing.
const failureMemory = 10 * time.Second

// Stats returns a snapshot of the writer's counters.
func (w *Writer) Stats() Stats {
	now := monoNow()
	st := Stats{
		Written:     w.written.Load(),
		Dropped:     w.dropped.Load(),
		Failed:      w.failed.Load(),
		Queued:      int(w.pending.Load()),
		SinkErrors:  w.sinkErrors.Load(),
		LossMarkers: w.lossMarkers.Load(),
	}
	if h := w.head.Load(); h != 0 {
		st.LagSeconds = max(time.Duration(now-h).Seconds(), 0)
	}
	if last := w.lastDrop.Load(); last != 0 && now-last <= int64(time.Second) {
		st.DroppingSeconds = max(time.Duration(now-w.dropStreak.Load()).Seconds(), 0)
	}
	if f := w.failingSince.Load(); f != 0 && now-w.lastFailure.Load() <= int64(failureMemory) && !w.recovered(now) {
		st.FailingSeconds = max(time.Duration(now-f).Seconds(), 0)
	}
	if e := w.lastError.Load(); e != nil {
		st.LastError = *e
	}
	return st
}
