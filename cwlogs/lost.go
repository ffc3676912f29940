package cwlogs

import (
	"log/slog"
	"strconv"
	"time"
)

// LossKind is the kind of the event the Shipper ships after it has dropped
// records because its buffer was full: a JSON object like an access
// record's,
//
//	{"time":"…","kind":"records_lost","sink":"cloudwatch","lost":N,
//	 "lost_since":"…","error":"…"}
//
// time is when the batch carrying it was taken to be sent, lost_since the
// earliest time of a record lost since the previous such event: the N
// records lost have times between the two. It is sent ahead of the records
// still queued (at its time, in the batch's time order; its CloudWatch
// timestamp, not its "time", is moved to within a day of the batch's first
// record if that is older, see withinSpan), is never dropped
// for room (it is held outside the buffer: at most one is pending, its count
// growing until it is sent) and is counted in Stats.LossEvents, not as a
// record.
const LossKind = "records_lost"

// lossMarker is the src of the loss event in a batch, which tells it apart
// from the records.
var lossMarker = new(source)

// noteLossLocked counts a record dropped for room; ts is its time.
func (s *Shipper) noteLossLocked(ts int64) {
	if s.lost == 0 || ts < s.lostSince {
		s.lostSince = ts
	}
	s.lost++
}

// lossEventLocked returns the loss event for the records dropped since the
// last one, timestamped now, and resets the count.
func (s *Shipper) lossEventLocked(now time.Time) entry {
	b := make([]byte, 0, 256)
	b = append(b, `{"time":"`...)
	b = now.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","kind":"`+LossKind+`","sink":"cloudwatch","lost":`...)
	b = strconv.AppendUint(b, s.lost, 10)
	b = append(b, `,"lost_since":"`...)
	b = time.UnixMilli(s.lostSince).UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","error":"the CloudWatch buffer was full (--cloudwatch-buffer `...)
	b = strconv.AppendInt(b, int64(s.cfg.BufferBytes), 10)
	b = append(b, ` bytes): the oldest records of the client holding the most were dropped"}`...)
	s.batchLost, s.batchLostSince = s.lost, s.lostSince
	s.lost, s.lostSince = 0, 0
	return entry{ts: now.UnixMilli(), msg: string(b), src: lossMarker}
}

// batchRecords returns how many records the batch holds: its loss event,
// if any, is not one.
func (s *Shipper) batchRecords() int {
	if s.batchLoss {
		return len(s.batch) - 1
	}
	return len(s.batch)
}

// restoreLoss puts the count of a loss event the service refused, rejected
// (too old or too new, in a batch it accepted) or that shutdown abandoned
// back into the pending one, so that the next batch tells of those losses
// still.
func (s *Shipper) restoreLoss() {
	if !s.batchLoss {
		return
	}
	s.mu.Lock()
	if s.lost == 0 || s.batchLostSince < s.lostSince {
		s.lostSince = s.batchLostSince
	}
	s.lost += s.batchLost
	s.mu.Unlock()
}

// withinSpan returns ts moved, if need be, to within MaxBatchSpanMillis of
// ref (the batch's first record): the loss event's CloudWatch timestamp,
// when the front record is a day or more old (queued through a day-long
// outage, or the wall clock stepped). Its JSON "time" stays the real time.
func withinSpan(ts, ref int64) int64 {
	return min(max(ts, ref-MaxBatchSpanMillis+1), ref+MaxBatchSpanMillis-1)
}

// abandon ends the batch in flight at shutdown: its records are dropped,
// and its loss event's count is given back for warnUnsentLoss.
func (s *Shipper) abandon(n int) {
	s.restoreLoss()
	s.release(n, func(st *Stats) { st.Dropped += uint64(n); s.abandoned += n })
}

// takeLossAtClose takes, once, a batch of the loss event alone when a count
// was given back (restoreLoss) with no record queued behind it to carry it:
// else Close would end with it unsent. It reports whether it took one.
func (s *Shipper) takeLossAtClose() bool {
	s.mu.Lock()
	pending := s.lost > 0 && !s.closeLoss
	s.mu.Unlock()
	if !pending {
		return false
	}
	s.closeLoss = true
	s.takeBatch()
	return true
}

// warnUnsentLoss says, at shutdown, how many dropped records no loss event
// in the stream tells of: they are in Stats.Dropped, not in the stream.
func (s *Shipper) warnUnsentLoss() {
	s.mu.Lock()
	lost, since := s.lost, s.lostSince
	s.mu.Unlock()
	if lost > 0 {
		slog.Warn("cwlogs: records dropped for room were never announced in the stream: its records_lost event could not be sent before exit",
			"group", s.cfg.Group, "stream", s.cfg.Stream, "lost", lost, "lost_since", time.UnixMilli(since).UTC())
	}
}
