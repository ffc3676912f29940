package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Record is one access record: a finished flow, or one HTTP request inside a
// flow. Its JSON field names are the schema that CloudWatch Logs Insights
// queries rely on; the README documents each one. Fields that do not apply to
// a kind are omitted.
type Record struct {
	Time       time.Time `json:"time"`        // when the flow or request ended (UTC)
	Kind       string    `json:"kind"`        // tcp, udp, icmp, http, tls, dns
	Action     string    `json:"action"`      // allow, deny, bump, splice
	Rule       string    `json:"rule"`        // policy rule that decided; "default" when none matched
	Endpoint   string    `json:"endpoint"`    // GWLB endpoint, e.g. vpce-0123456789abcdef0
	Attachment string    `json:"attachment"`  // GWLB attachment ID, 16 hex digits
	FlowCookie string    `json:"flow_cookie"` // GWLB flow cookie, 8 hex digits
	ClientIP   string    `json:"client_ip"`
	ClientPort uint16    `json:"client_port,omitempty"`
	DestIP     string    `json:"dest_ip"`
	DestPort   uint16    `json:"dest_port,omitempty"`
	BytesOut   int64     `json:"bytes_out"`   // client → destination (payload bytes)
	BytesIn    int64     `json:"bytes_in"`    // destination → client (payload bytes)
	DurationMS float64   `json:"duration_ms"` // flow or request duration
	Result     string    `json:"result"`      // ok, refused, timeout, reset, error, denied
	Error      string    `json:"error,omitempty"`

	// ICMP echo.
	Packets int64 `json:"packets,omitempty"` // echo requests relayed

	// TLS (kind tls, and http requests inside a bumped connection).
	SNI            string `json:"sni,omitempty"`
	ALPN           string `json:"alpn,omitempty"`
	TLSVersion     string `json:"tls_version,omitempty"`
	TLSCipher      string `json:"tls_cipher,omitempty"`
	UpstreamVerify string `json:"upstream_verify,omitempty"` // ok, failed, skipped

	// HTTP requests (kind http).
	Method    string `json:"method,omitempty"`
	Scheme    string `json:"scheme,omitempty"`
	Host      string `json:"host,omitempty"`
	Path      string `json:"path,omitempty"` // without the query string
	Status    int    `json:"status,omitempty"`
	UserAgent string `json:"user_agent,omitempty"`
	WebSocket bool   `json:"websocket,omitempty"`

	// DNS queries (kind dns).
	QueryName string `json:"query_name,omitempty"`
	QueryType string `json:"query_type,omitempty"`
	RCode     string `json:"rcode,omitempty"`
}

// The record queue's bounds. Records are a few hundred bytes (up to about
// 64 KiB with a long URL path), and at tens of thousands of records a
// second 65,536 of them ride out a stall of a few seconds (a log rotation,
// a slow fsync, a paused reader on stdout) in some tens of MiB. A sink slower
// than that for longer is not a hiccup: records are dropped and counted, and
// the stall shows in Stats. The byte bound keeps large records from turning
// the same count into gigabytes.
const (
	recordQueueLen   = 1 << 16
	recordQueueBytes = 64 << 20
)

// RecordWriter encodes records as JSON lines and copies them to one or more
// sinks. Write never blocks: it encodes the record and queues the line, and
// one goroutine writes the queue to the sinks in order, whole lines, several
// to a Write when records come quickly. When the queue is
// full the record is dropped and counted, so a slow stdout pipe or disk can
// never stall the relays that write records. A sink that fails is logged,
// never retried here: sinks that need delivery guarantees (cwlogs) buffer
// on their own side.
//
// It is safe for concurrent use. Close delivers what is queued and stops
// the goroutine; a writer without sinks discards records, starts no
// goroutine and needs no Close.
type RecordWriter struct {
	sinks    []io.Writer
	maxBytes int64
	q        chan *recordLine
	done     chan struct{} // closed when the goroutine has written everything and stopped

	// Write sends holding mu shared, and Close closes q holding it
	// exclusively, so nothing is ever sent on a closed queue. Sends never
	// block, so neither does Close for long.
	mu     sync.RWMutex
	closed bool

	queuedBytes atomic.Int64
	written     atomic.Uint64
	dropped     atomic.Uint64
	sinkErrors  atomic.Uint64
	// Times below are monoNow values; 0 means never or none.
	head         atomic.Int64 // when the line being written was queued; 0 when idle
	failingSince atomic.Int64 // first sink error since a record every sink took
	lastFailure  atomic.Int64
	lastError    atomic.Pointer[string]
	lastDrop     atomic.Int64
	dropStreak   atomic.Int64 // when drops less than a second apart began
	lastDropLog  atomic.Int64
}

// clockBase anchors monoNow.
var clockBase = time.Now()

// monoNow returns nanoseconds on the monotonic clock, never 0: a step of
// the wall clock must not make a record look stuck.
func monoNow() int64 { return int64(time.Since(clockBase)) + 1 }

// recordLine is one queued line, or a Flush marker when flushed is set.
type recordLine struct {
	buf     bytes.Buffer
	enc     *json.Encoder // writes into buf
	queued  int64         // monoNow
	flushed chan struct{}
}

// linePool recycles lines and their encoders: a record then costs no
// allocation of its own beyond what encoding/json needs.
var linePool = sync.Pool{New: func() any {
	l := new(recordLine)
	l.enc = json.NewEncoder(&l.buf)
	return l
}}

func putLine(l *recordLine) {
	if l.buf.Cap() <= 16<<10 { // the rare huge record is not kept around
		linePool.Put(l)
	}
}

// RecordStats are a RecordWriter's counters.
type RecordStats struct {
	Written    uint64 `json:"written"`     // records handed to every sink
	Dropped    uint64 `json:"dropped"`     // records dropped: queue full, or written after Close
	Queued     int    `json:"queued"`      // records waiting for the sinks
	SinkErrors uint64 `json:"sink_errors"` // sink writes (of one or more records) that failed
	// LagSeconds is how long the oldest record not yet written has waited:
	// it grows while a sink blocks or cannot keep up; 0 when idle.
	LagSeconds float64 `json:"lag_seconds"`
	// DroppingSeconds is how long records have been dropped without a
	// break of a second; 0 when the last drop is older than that.
	DroppingSeconds float64 `json:"dropping_seconds"`
	// FailingSeconds is how long ago a sink write failed with no record
	// taken by every sink since; 0 when the last record went through, or
	// when nothing has failed for failureMemory (no records came to try:
	// a target the GWLB stops sending to would stay broken for good).
	FailingSeconds float64 `json:"failing_seconds"`
	LastError      string  `json:"last_error,omitempty"` // the last sink error
}

// NewRecordWriter returns a writer that copies every record line to each
// sink, in the order Write was called.
func NewRecordWriter(sinks ...io.Writer) *RecordWriter {
	return newRecordWriter(recordQueueLen, recordQueueBytes, sinks...)
}

func newRecordWriter(maxRecords int, maxBytes int64, sinks ...io.Writer) *RecordWriter {
	w := &RecordWriter{sinks: sinks, maxBytes: maxBytes, done: make(chan struct{})}
	if len(sinks) == 0 {
		close(w.done)
		return w
	}
	w.q = make(chan *recordLine, maxRecords)
	go w.run()
	return w
}

// Write encodes r as one JSON line and queues it for the sinks. It never
// blocks: when the queue is full the record is dropped and counted. r is not
// retained.
func (w *RecordWriter) Write(r *Record) {
	if r.Time.IsZero() {
		r.Time = time.Now()
	}
	r.Time = r.Time.UTC()
	if len(w.sinks) == 0 {
		return
	}
	l := linePool.Get().(*recordLine)
	l.buf.Reset()
	if err := l.enc.Encode(r); err != nil { // appends the newline
		putLine(l)
		slog.Error("encoding access record", "err", err)
		return
	}
	l.queued = monoNow()
	n := int64(l.buf.Len())
	if w.queuedBytes.Add(n) <= w.maxBytes {
		w.mu.RLock()
		sent := false
		if !w.closed {
			select {
			case w.q <- l:
				sent = true
			default:
			}
		}
		w.mu.RUnlock()
		if sent {
			return
		}
	}
	now := l.queued
	w.queuedBytes.Add(-n)
	putLine(l)
	w.drop(now)
}

// drop counts a dropped record, and warns at most every 10 s about it.
func (w *RecordWriter) drop(now int64) {
	n := w.dropped.Add(1)
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
func (w *RecordWriter) run() {
	defer close(w.done)
	var batch []*recordLine
	var out []byte
	for l := range w.q {
		batch = w.gather(append(batch[:0], l))
		out = out[:0]
		for _, b := range batch {
			out = append(out, b.buf.Bytes()...) // a marker adds nothing
		}
		if len(out) > 0 {
			w.head.Store(batch[0].queued)
			w.deliver(batch, out)
			w.queuedBytes.Add(-int64(len(out)))
		}
		for _, b := range batch {
			if b.flushed != nil { // the last one: everything before it is written
				close(b.flushed)
			} else {
				w.written.Add(1)
				putLine(b)
			}
		}
		clear(batch)
		if len(w.q) == 0 {
			w.head.Store(0)
		}
	}
}

// gather adds the lines already queued to batch, without waiting, until
// maxBatch bytes or a Flush marker.
func (w *RecordWriter) gather(batch []*recordLine) []*recordLine {
	size := batch[0].buf.Len()
	for size < maxBatch && batch[len(batch)-1].flushed == nil {
		select {
		case l, ok := <-w.q:
			if !ok {
				return batch
			}
			batch = append(batch, l)
			size += l.buf.Len()
		default:
			return batch
		}
	}
	return batch
}

// timedSink is a sink that takes a timestamp with each line (the cwlogs
// shipper): it gets the time the line was queued, so that time spent in the
// queue does not shift the log event.
type timedSink interface {
	Ship(t time.Time, line []byte)
}

// deliver hands a batch to every sink: out, the batch's lines end to end,
// in one write to a plain sink; line by line to a timedSink.
func (w *RecordWriter) deliver(batch []*recordLine, out []byte) {
	var failed error
	for _, s := range w.sinks {
		if ts, ok := s.(timedSink); ok {
			for _, l := range batch {
				if l.flushed == nil {
					ts.Ship(clockBase.Add(time.Duration(l.queued)), l.buf.Bytes())
				}
			}
			continue
		}
		if _, err := s.Write(out); err != nil {
			w.sinkErrors.Add(1)
			failed = fmt.Errorf("access record sink %T: %w", s, err)
		}
	}
	// Log when a sink starts failing and when it recovers, not once per
	// record: a full disk would flood the log with the same line.
	if failed != nil {
		msg := failed.Error()
		w.lastError.Store(&msg)
		w.lastFailure.Store(monoNow())
		if w.failingSince.CompareAndSwap(0, monoNow()) {
			slog.Error("writing access records", "err", failed)
		}
	} else if w.failingSince.Swap(0) != 0 {
		slog.Info("writing access records again")
	}
}

// Flush waits until every record queued before the call has been handed to
// the sinks, or ctx is done.
func (w *RecordWriter) Flush(ctx context.Context) error {
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
			return fmt.Errorf("flushing access records: %d queued: %w", len(w.q), ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
	// Lines are written in queue order: the marker's turn comes after
	// every record queued before it.
	select {
	case <-mark.flushed:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("flushing access records: %d queued: %w", len(w.q), ctx.Err())
	}
}

// Close stops accepting records (later ones are dropped and counted), hands
// what is queued to the sinks and stops the goroutine. If ctx ends first it
// returns an error; the goroutine still finishes once the sinks unblock. The
// sinks themselves are not closed. Close may be called more than once.
func (w *RecordWriter) Close(ctx context.Context) error {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		if w.q != nil {
			close(w.q)
		}
	}
	w.mu.Unlock()
	return w.wait(ctx)
}

func (w *RecordWriter) wait(ctx context.Context) error {
	select {
	case <-w.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("closing access records: %d queued: %w", len(w.q), ctx.Err())
	}
}

// failureMemory is how long a sink failure counts as current without
// another record failing.
const failureMemory = 10 * time.Second

// Stats returns a snapshot of the writer's counters.
func (w *RecordWriter) Stats() RecordStats {
	now := monoNow()
	st := RecordStats{
		Written:    w.written.Load(),
		Dropped:    w.dropped.Load(),
		Queued:     len(w.q),
		SinkErrors: w.sinkErrors.Load(),
	}
	if h := w.head.Load(); h != 0 {
		st.LagSeconds = max(time.Duration(now-h).Seconds(), 0)
	}
	if last := w.lastDrop.Load(); last != 0 && now-last <= int64(time.Second) {
		st.DroppingSeconds = max(time.Duration(now-w.dropStreak.Load()).Seconds(), 0)
	}
	if f := w.failingSince.Load(); f != 0 && now-w.lastFailure.Load() <= int64(failureMemory) {
		st.FailingSeconds = max(time.Duration(now-f).Seconds(), 0)
	}
	if e := w.lastError.Load(); e != nil {
		st.LastError = *e
	}
	return st
}
