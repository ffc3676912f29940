package cwlogs

import (
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// PutLogEvents limits, as documented for the service.
const (
	// EventOverhead is what the service adds to each message's UTF-8 length
	// when it sizes a batch or an event.
	EventOverhead = 26
	// MaxBatchEvents is the most events one PutLogEvents call may carry.
	MaxBatchEvents = 10000
	// MaxBatchBytes is the largest batch: messages plus EventOverhead each.
	MaxBatchBytes = 1048576
	// MaxEventBytes is the largest event, EventOverhead included.
	MaxEventBytes = 256 * 1024
	// MaxMessageBytes is the longest message that fits in one event.
	MaxMessageBytes = MaxEventBytes - EventOverhead
	// MaxBatchSpanMillis is the widest time span of one batch (24 hours).
	MaxBatchSpanMillis = 24 * 60 * 60 * 1000
)

// RecordOverhead is charged against Config.BufferBytes for each record on
// top of its message length: the queue slot (40 bytes) plus an allowance for
// the allocator rounding the message up to its size class. The queue's
// bookkeeping by source is charged on top (fairQueue.overhead).
const RecordOverhead = 64

// cost is what a record is charged against the buffer.
func cost(msg string) int64 { return int64(len(msg)) + RecordOverhead }

// wire is what a record counts towards MaxBatchBytes.
func wire(msg string) int { return len(msg) + EventOverhead }

// prepare turns a caller's line into the message to queue: the trailing
// newline is stripped, invalid UTF-8 is replaced (the service would store
// U+FFFD anyway, but after the SDK's JSON encoding an invalid byte can grow
// to three, breaking our size accounting), and a message longer than
// MaxMessageBytes is truncated with a marker naming how much was cut. The
// result never aliases line. truncated reports whether it was cut.
func prepare(line []byte) (msg string, truncated bool) {
	if n := len(line); n > 0 && line[n-1] == '\n' {
		line = line[:n-1]
		if n := len(line); n > 0 && line[n-1] == '\r' {
			line = line[:n-1]
		}
	}
	if len(line) == 0 {
		return "", false
	}
	var s string
	if utf8.Valid(line) {
		if len(line) <= MaxMessageBytes {
			return string(line), false
		}
		s = string(line)
	} else {
		s = strings.ToValidUTF8(string(line), "\uFFFD")
		if len(s) <= MaxMessageBytes {
			return s, false
		}
	}
	return truncate(s, MaxMessageBytes), true
}

// truncate cuts s (valid UTF-8, longer than limit) at a rune boundary so that
// s[:keep] plus the marker "…[truncated N bytes]" fits in limit bytes, N
// being the number of bytes removed.
func truncate(s string, limit int) string {
	keep := limit
	for {
		k := keep
		for k > 0 && !utf8.RuneStart(s[k]) {
			k--
		}
		m := marker(len(s) - k)
		if k+len(m) <= limit {
			return s[:k] + m
		}
		// The marker grew (more digits, or the cut moved back): shorten
		// by what is missing and try again.
		keep = limit - len(m)
	}
}

func marker(removed int) string {
	return "…[truncated " + strconv.Itoa(removed) + " bytes]"
}

// batchLimits decides how many queued entries the next batch takes.
type batchLimits struct {
	n, bytes      int
	minTS, maxTS  int64
	full          bool // a limit stopped the batch (more could not fit)
	maxEvents     int
	maxBytes      int
	maxSpanMillis int64
}

func newBatchLimits() batchLimits {
	return batchLimits{maxEvents: MaxBatchEvents, maxBytes: MaxBatchBytes, maxSpanMillis: MaxBatchSpanMillis}
}

// add reports whether e fits in the batch and, if so, counts it.
func (b *batchLimits) add(e *entry) bool {
	if b.n >= b.maxEvents {
		b.full = true
		return false
	}
	w := wire(e.msg)
	if b.bytes+w > b.maxBytes {
		b.full = true
		return false
	}
	lo, hi := e.ts, e.ts
	if b.n > 0 {
		lo, hi = min(b.minTS, e.ts), max(b.maxTS, e.ts)
		if hi-lo >= b.maxSpanMillis {
			b.full = true
			return false
		}
	}
	b.n++
	b.bytes += w
	b.minTS, b.maxTS = lo, hi
	return true
}

// sortBatch orders a batch by timestamp as the service requires, keeping the
// queue order among equal timestamps.
func sortBatch(b []entry) {
	cmp := func(x, y entry) int {
		switch {
		case x.ts < y.ts:
			return -1
		case x.ts > y.ts:
			return 1
		}
		return 0
	}
	if !slices.IsSortedFunc(b, cmp) {
		slices.SortStableFunc(b, cmp)
	}
}
