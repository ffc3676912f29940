// Package cwlogs ships lines to CloudWatch Logs.
//
// A Shipper takes lines from any number of goroutines without ever blocking
// them: each line is copied into a bounded in-memory queue, and one
// goroutine per Shipper sends batches with PutLogEvents, within every limit
// of that API, retrying transient failures with capped exponential backoff
// until the batch is delivered or the Shipper is closed. When the queue is
// full the oldest records of the source (client) holding the most bytes are
// dropped, and an event of kind LossKind in the stream says how many. Every
// record ends up in exactly one of the counters reported by Stats: shipped,
// rejected by the service, failed (refused as invalid), dropped, or still
// queued.
//
// The package does not know what the lines mean, only whose they are
// (records.Source).
package cwlogs

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs/types"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// Stats is a snapshot of a Shipper's counters. Counts are records (log
// events) unless named otherwise. Every record received is, at any time,
// counted in exactly one of Shipped, Rejected, Failed, Dropped and
// QueuedRecords.
type Stats struct {
	// Group and Stream name the destination.
	Group  string `json:"group"`
	Stream string `json:"stream"`
	// Received counts records handed to Ship or Write (empty lines, which
	// carry nothing and which the service refuses, are skipped).
	Received uint64 `json:"received"`
	// QueuedRecords and QueuedBytes are what is held in memory, the batch
	// in flight included; QueuedBytes is the amount charged against
	// BufferBytes.
	QueuedRecords int   `json:"queued_records"`
	QueuedBytes   int64 `json:"queued_bytes"`
	BufferBytes   int   `json:"buffer_bytes"`
	// Shipped counts records the service accepted; ShippedBytes their
	// message bytes; Batches the successful PutLogEvents calls.
	Shipped      uint64 `json:"shipped"`
	ShippedBytes uint64 `json:"shipped_bytes"`
	Batches      uint64 `json:"batches"`
	// Retried counts API calls that failed transiently and were repeated.
	Retried uint64 `json:"retried"`
	// Rejected counts records the service refused in an accepted batch
	// (too old, too new, or older than the group's retention).
	Rejected uint64 `json:"rejected"`
	// Failed counts records in batches the service refused with a
	// non-retryable error.
	Failed uint64 `json:"failed"`
	// Dropped counts records discarded unsent: when the buffer was full
	// (the oldest of the source holding the most bytes), those still held
	// when Close gave up, and those handed over after Close.
	Dropped uint64 `json:"dropped"`
	// LossEvents counts the events of kind LossKind the service accepted,
	// each telling of records dropped for room. They are not records: they
	// are in none of the counts above.
	LossEvents uint64 `json:"loss_events"`
	// Truncated counts records cut to the largest event size (they are
	// shipped, with a marker, and also counted under their final fate).
	Truncated     uint64    `json:"truncated"`
	LastError     string    `json:"last_error,omitempty"`
	LastErrorTime time.Time `json:"last_error_time,omitzero"`
}

// Shipper ships lines to one CloudWatch Logs stream. It is safe for
// concurrent use.
type Shipper struct {
	cfg    Config
	client *cloudwatchlogs.Client

	mu             sync.Mutex
	q              fairQueue
	held           int64 // bytes charged: queue plus batch in flight, q.overhead() aside
	wireQ          int   // MaxBatchBytes-style size of the queue
	inflight       int   // records in the batch in flight
	closed         bool
	st             Stats
	lastDropWarn   time.Time
	dropsSinceWarn uint64
	closeDeadline  time.Time // the deadline of the first Close; zero: none
	// Records dropped for room since the last loss event was put in a
	// batch, and the earliest of their times (Unix milliseconds).
	lost      uint64
	lostSince int64

	kick      chan struct{} // a full batch is waiting
	closing   chan struct{} // Close was called
	done      chan struct{} // the worker has exited
	runCtx    context.Context
	cancel    context.CancelFunc
	closeOnce sync.Once
	abandoned int // records the worker gave up at shutdown; read after done

	// Worker-only state.
	batch     []entry
	batchCost int64
	batchLoss bool // the batch carries a loss event
	// What the batch's loss event tells of, for restoreLoss.
	batchLost      uint64
	batchLostSince int64
	closeLoss      bool // takeLossAtClose has taken its batch
	events         []types.InputLogEvent
	ready          bool // group and stream exist (or we cannot tell)
	groupCreated   bool
	retentionSet   bool
	failStreak     int
	failSince      time.Time
	failLog        rateLimit
	rejectLog      rateLimit
	refuseLog      rateLimit
	// Batches refused for good since the last message about them.
	refusedBatches, refusedRecords int
	refusedErr                     error
	deniedLog                      rateLimit
	ensureLog                      rateLimit
}

// New returns a Shipper for cfg using the default AWS credential chain,
// cfg.Region and cfg.Endpoint. ctx bounds only the set-up (configuration and
// the instance-ID lookup for the default stream name); the Shipper runs until
// Close. The log group and stream are created, if missing, before the first
// batch is sent, so New succeeds even while CloudWatch Logs is unreachable.
func New(ctx context.Context, cfg Config) (*Shipper, error) {
	if cfg.Group == "" {
		return nil, fmt.Errorf("cwlogs: log group is required")
	}
	client, err := NewClient(ctx, cfg.Region, cfg.Endpoint)
	if err != nil {
		return nil, err
	}
	return NewWithClient(ctx, client, cfg)
}

// NewWithClient returns a Shipper that uses client; cfg.Region and
// cfg.Endpoint are ignored. Whatever retryer the client has, the Shipper
// makes each call a single attempt and applies its own backoff.
func NewWithClient(ctx context.Context, client *cloudwatchlogs.Client, cfg Config) (*Shipper, error) {
	if cfg.Stream == "" && cfg.Group != "" {
		cfg.Stream = DefaultStream(ctx)
	}
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	s := &Shipper{
		cfg:     cfg,
		client:  client,
		kick:    make(chan struct{}, 1),
		closing: make(chan struct{}),
		done:    make(chan struct{}),
		runCtx:  runCtx,
		cancel:  cancel,
		batch:   make([]entry, 0, 1024),
	}
	s.st.Group, s.st.Stream, s.st.BufferBytes = cfg.Group, cfg.Stream, cfg.BufferBytes
	go s.run()
	return s, nil
}

// Write ships p as one log event timestamped now; a trailing newline is
// stripped. It never blocks on the network and always reports len(p), nil:
// a record that cannot be shipped is counted in Stats, not returned as an
// error, so that a logging path never fails because CloudWatch does.
func (s *Shipper) Write(p []byte) (int, error) {
	s.Ship(time.Now(), p, records.Source{})
	return len(p), nil
}

// Ship implements records.Shipper: it queues line as one log event with
// timestamp t (zero means now), charged to src. line is copied; a trailing
// newline is stripped; an empty line is skipped; a line longer than
// MaxMessageBytes is truncated with a marker. When the buffer is full, the
// oldest queued records of the source holding the most bytes are dropped to
// make room (src's own when it holds the most), so that one client whose
// records come faster than they can be shipped loses its own, and the next
// batch carries an event saying how many were lost (see LossKind).
func (s *Shipper) Ship(t time.Time, line []byte, src records.Source) {
	msg, truncated := prepare(line)
	if msg == "" {
		return
	}
	var ts int64
	if t.IsZero() {
		ts = time.Now().UnixMilli()
	} else {
		ts = t.UnixMilli()
	}
	c := cost(msg)

	s.mu.Lock()
	s.st.Received++
	if truncated {
		s.st.Truncated++
	}
	if s.closed {
		s.st.Dropped++
		s.dropsSinceWarn++
		s.mu.Unlock()
		return
	}
	limit := int64(s.cfg.BufferBytes)
	// Evicting leaves a tombstone, but frees more than the tombstone holds:
	// the loop ends.
	for s.held+s.q.overhead()+s.q.charge(src, c) > limit && s.q.len() > 0 {
		e := s.q.evict()
		s.held -= cost(e.msg)
		s.wireQ -= wire(e.msg)
		s.st.Dropped++
		s.dropsSinceWarn++
		s.noteLossLocked(e.ts)
	}
	s.q.push(entry{ts: ts, msg: msg}, src, c)
	s.held += c
	s.wireQ += wire(msg)
	full := s.q.len() >= MaxBatchEvents || s.wireQ >= MaxBatchBytes
	warn := s.dropWarningLocked(time.Now())
	s.mu.Unlock()

	if full {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
	if warn != nil {
		// Logging may block on its sink; the caller must not.
		go warn()
	}
}

// dropWarningLocked returns a function logging the drops since the last
// warning, if there are any and a minute has passed since that warning.
func (s *Shipper) dropWarningLocked(now time.Time) func() {
	if s.dropsSinceWarn == 0 || now.Sub(s.lastDropWarn) < time.Minute {
		return nil
	}
	n, total := s.dropsSinceWarn, s.st.Dropped
	s.dropsSinceWarn = 0
	s.lastDropWarn = now
	group, stream, limit := s.cfg.Group, s.cfg.Stream, s.cfg.BufferBytes
	return func() {
		slog.Warn("cwlogs: buffer full or closed, dropped records (when full, the oldest of the client holding the most)",
			"group", group, "stream", stream, "dropped", n, "dropped_total", total, "buffer_bytes", limit)
	}
}

// Stats returns a snapshot of the counters.
func (s *Shipper) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.st
	st.QueuedRecords = s.q.len() + s.inflight
	st.QueuedBytes = s.held + s.q.overhead()
	return st
}

// Close stops accepting records and flushes what the Shipper holds, retrying
// as usual (but with shorter waits, and each call, the one under way too,
// bounded by a share of the time ctx leaves, see closingCallMin), until
// everything is delivered or ctx is done; then whatever is
// left (including a batch whose delivery was interrupted) is counted as
// dropped and an error says how many. Records handed over after Close are
// dropped. Close may be called more than once.
func (s *Shipper) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		// The worker fits its calls into the time left.
		s.closeDeadline, _ = ctx.Deadline()
		s.mu.Unlock()
		close(s.closing)
	})
	select {
	case <-s.done:
	case <-ctx.Done():
		s.cancel()
		<-s.done
	}
	s.cancel()
	s.mu.Lock()
	warn := s.dropWarningLocked(time.Now())
	s.mu.Unlock()
	if warn != nil {
		warn()
	}
	if s.abandoned > 0 {
		err := ctx.Err()
		if err == nil {
			err = context.Canceled
		}
		return fmt.Errorf("cwlogs: %d records not known to be shipped at close (a call given up may have been stored): %w", s.abandoned, err)
	}
	return nil
}

// run is the worker: it sends batches in queue order, one at a time, so that
// a stream receives records in the order they were queued.
func (s *Shipper) run() {
	defer close(s.done)
	ticker := time.NewTicker(s.cfg.FlushInterval)
	defer ticker.Stop()
	due, closing := false, false
	for s.runCtx.Err() == nil {
		s.mu.Lock()
		n := s.q.len()
		full := n >= MaxBatchEvents || s.wireQ >= MaxBatchBytes
		s.mu.Unlock()
		if n == 0 && closing {
			if !s.takeLossAtClose() {
				break
			}
			s.deliver()
			continue
		}
		if n == 0 || !(full || due || closing) {
			due = false
			select {
			case <-s.kick:
			case <-ticker.C:
				due = true
				s.mu.Lock()
				warn := s.dropWarningLocked(time.Now())
				s.mu.Unlock()
				if warn != nil {
					warn()
				}
			case <-s.closing:
				closing = true
			case <-s.runCtx.Done():
			}
			continue
		}
		if !s.takeBatch() {
			// The batch took everything that was queued: the flush this
			// tick asked for is done.
			due = false
		}
		s.deliver()
	}

	// Shut down: nothing more will be sent.
	if s.refusedBatches > 0 {
		s.logRefused() // what the rate limit held back
	}
	s.warnUnsentLoss()
	s.mu.Lock()
	for s.q.len() > 0 {
		s.q.pop()
		s.st.Dropped++
		s.abandoned++
	}
	s.held, s.wireQ = 0, 0
	s.mu.Unlock()
}

// takeBatch moves the next batch from the queue into s.batch. The records
// stay charged against the buffer until delivery ends. It reports whether a
// batch limit stopped it before the queue was empty.
func (s *Shipper) takeBatch() (full bool) {
	lim := newBatchLimits()
	s.batch = s.batch[:0]
	s.batchCost = 0
	s.mu.Lock()
	s.batchLoss = s.lost > 0
	if s.batchLoss {
		// Ahead of the records: under a flood, batches are full, and one
		// taken after them would never fit.
		e := s.lossEventLocked(time.Now())
		if s.q.len() > 0 {
			// Within a day of the front record, or the two could never
			// share a batch: the batch would be the event alone, the
			// records would never drain, and every batch after it would
			// again carry only an event.
			e.ts = withinSpan(e.ts, s.q.front().ts)
		}
		lim.add(&e)
		s.batch = append(s.batch, e)
	}
	for s.q.len() > 0 && lim.add(s.q.front()) {
		e := s.q.pop()
		s.wireQ -= wire(e.msg)
		s.batchCost += cost(e.msg)
		s.batch = append(s.batch, e)
	}
	s.inflight = s.batchRecords()
	more := s.q.len() > 0
	s.mu.Unlock()
	return lim.full && more
}

// deliver sends s.batch until it is delivered, refused as invalid, or the
// Shipper is shut down, and then releases it.
func (s *Shipper) deliver() {
	sortBatch(s.batch)
	// The SDK input points into s.batch: no per-record allocation.
	s.events = s.events[:0]
	for i := range s.batch {
		s.events = append(s.events, types.InputLogEvent{Message: &s.batch[i].msg, Timestamp: &s.batch[i].ts})
	}
	in := &cloudwatchlogs.PutLogEventsInput{
		LogGroupName:  aws.String(s.cfg.Group),
		LogStreamName: aws.String(s.cfg.Stream),
		LogEvents:     s.events,
	}
	n := s.batchRecords() // the loss event is not a record
	for attempt := 0; ; attempt++ {
		if !s.ready && !s.ensure() {
			s.abandon(n)
			return
		}
		ctx, cancel := s.callContext()
		out, err := s.client.PutLogEvents(ctx, in, noSDKRetries)
		cancel()
		if err == nil {
			if err = checkServiceSuccess(out); err == nil {
				s.delivered(out, n)
				return
			}
		}
		if s.runCtx.Err() != nil {
			s.abandon(n)
			return
		}
		class := classify(err)
		if class == classAccepted {
			slog.Info("cwlogs: CloudWatch Logs took a batch, or had it already, with no answer to read; its records count as shipped",
				"group", s.cfg.Group, "stream", s.cfg.Stream, "records", n, "error", err)
			s.delivered(&cloudwatchlogs.PutLogEventsOutput{}, n)
			return
		}
		s.noteFailure("PutLogEvents", err, class)
		if class == classPermanent {
			s.refused(n, err)
			s.restoreLoss()
			s.release(n, func(st *Stats) { st.Failed += uint64(n) })
			return
		}
		if class == classMissing {
			s.ready = false
		}
		if !s.retryWait(attempt) {
			s.abandon(n)
			return
		}
		s.mu.Lock()
		s.st.Retried++
		s.mu.Unlock()
	}
}

// refused logs a batch of n records the service refused for good: the first
// at once, later ones at most once a minute (every batch could be refused,
// and each is counted in Failed anyway), each message with what was refused
// since the last one.
func (s *Shipper) refused(n int, err error) {
	s.refusedBatches++
	s.refusedRecords += n
	s.refusedErr = err
	if s.refuseLog.allow(time.Now()) {
		s.logRefused()
	}
}

// logRefused logs the batches refused since the last such message, with
// the latest error.
func (s *Shipper) logRefused() {
	slog.Error("cwlogs: PutLogEvents refused batches; their records are lost",
		"group", s.cfg.Group, "stream", s.cfg.Stream, "batches", s.refusedBatches,
		"records", s.refusedRecords, "err", s.refusedErr)
	s.refusedBatches, s.refusedRecords, s.refusedErr = 0, 0, nil
}

// release ends the batch in flight, applying fate to the counters.
func (s *Shipper) release(n int, fate func(*Stats)) {
	s.mu.Lock()
	fate(&s.st)
	s.held -= s.batchCost
	s.inflight = 0
	s.mu.Unlock()
	s.batchLoss = false
	clear(s.batch) // drop the strings now rather than at the next batch
	s.batch = s.batch[:0]
	clear(s.events)
	s.batchCost = 0
}

// delivered accounts for an accepted batch, of which the service may have
// rejected some events.
func (s *Shipper) delivered(out *cloudwatchlogs.PutLogEventsOutput, n int) {
	lo, hi := acceptedRange(out.RejectedLogEventsInfo, len(s.batch))
	var msgBytes uint64
	shipped, losses := 0, 0
	for i := lo; i < hi; i++ {
		if s.batch[i].src == lossMarker {
			losses++
			continue
		}
		shipped++
		msgBytes += uint64(len(s.batch[i].msg))
	}
	if s.batchLoss && losses == 0 {
		s.restoreLoss() // the service rejected the loss event (too old or too new)
	}
	rejected := n - shipped
	if rejected > 0 && s.rejectLog.allow(time.Now()) {
		// Rejected events are not retried: the service would refuse them
		// again.
		info := out.RejectedLogEventsInfo
		slog.Warn("cwlogs: CloudWatch Logs rejected events (too old, too new or expired; check the clock)",
			"group", s.cfg.Group, "stream", s.cfg.Stream, "rejected", rejected, "batch", n,
			"too_old_end", deref(info.TooOldLogEventEndIndex), "too_new_start", deref(info.TooNewLogEventStartIndex),
			"expired_end", deref(info.ExpiredLogEventEndIndex))
	}
	if s.failStreak > 0 {
		slog.Info("cwlogs: delivery resumed", "group", s.cfg.Group, "stream", s.cfg.Stream,
			"failed_attempts", s.failStreak, "after", time.Since(s.failSince).Round(time.Millisecond))
		s.failStreak = 0
	}
	s.release(n, func(st *Stats) {
		st.Shipped += uint64(shipped)
		st.LossEvents += uint64(losses)
		st.Rejected += uint64(rejected)
		st.ShippedBytes += msgBytes
		st.Batches++
	})
}

func deref(p *int32) int32 {
	if p == nil {
		return -1
	}
	return *p
}

// acceptedRange returns the events [lo, hi) of a sorted batch of n that the
// service accepted according to info: too-old and expired events form a
// prefix (their end indices are exclusive), too-new ones a suffix (its start
// index is inclusive).
func acceptedRange(info *types.RejectedLogEventsInfo, n int) (lo, hi int) {
	if info == nil {
		return 0, n
	}
	if p := info.TooOldLogEventEndIndex; p != nil {
		lo = max(lo, int(*p))
	}
	if p := info.ExpiredLogEventEndIndex; p != nil {
		lo = max(lo, int(*p))
	}
	lo = min(max(lo, 0), n)
	hi = n
	if p := info.TooNewLogEventStartIndex; p != nil {
		hi = min(max(int(*p), lo), n)
	}
	return lo, hi
}

// noteFailure records a failed call for Stats and logs it: the first failure
// of a streak at once, later ones at most once a minute.
func (s *Shipper) noteFailure(op string, err error, class errClass) {
	now := time.Now()
	s.mu.Lock()
	s.st.LastError = fmt.Sprintf("%s: %v", op, err)
	s.st.LastErrorTime = now
	s.mu.Unlock()
	if s.failStreak == 0 {
		s.failSince = now
		s.failLog = rateLimit{}
	}
	s.failStreak++
	if class != classPermanent && s.failLog.allow(now) {
		slog.Warn("cwlogs: call failed, retrying with backoff", "op", op, "group", s.cfg.Group,
			"stream", s.cfg.Stream, "class", class.String(), "failed_attempts", s.failStreak, "err", err)
	}
}
