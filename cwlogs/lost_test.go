package cwlogs

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/cwlogs/cwlogstest"
)

// TestLossEventShipsWithAnOldFront: a quiet client's record 25 h old (queued
// through a day-long outage, or a clock stepped back) sits at the front of a
// full buffer while another client floods. The loss event, stamped now, used
// to be put in each batch first; the old record could not share its 24 h span,
// so every batch carried the event alone and nothing drained. The event now
// takes a timestamp within a day of the front record: records ship, the old
// one among them.
func TestLossEventShipsWithAnOldFront(t *testing.T) {
	srv := cwlogstest.NewServer(t)
	srv.SetLatency(50 * time.Millisecond)
	cfg := testConfig()
	cfg.BufferBytes = MinBufferBytes
	s := startShipper(t, srv, cfg)
	quiet, busy := srcOf("10.0.0.5"), srcOf("10.0.0.9")
	srv.Outage(time.Hour, cwlogstest.OutageRefuse)
	i := 0
	s.Ship(time.Now(), line(2, i, 60000), busy) // the batch in flight
	i++
	time.Sleep(200 * time.Millisecond)
	old := time.Now().Add(-25 * time.Hour)
	s.Ship(old, line(1, 0, 300), quiet)
	for s.Stats().Dropped < 10 {
		s.Ship(time.Now(), line(2, i, 60000), busy)
		i++
	}
	srv.EndOutage()
	quietIn := func(events []cwlogstest.Event) bool {
		for _, e := range events {
			if p, _, ok := parseLine(e.Message); ok && p == 1 {
				return true
			}
		}
		return false
	}
	// The flood goes on until the old record and twenty more have shipped:
	// when the service recovers depends on the shipper's retry backoff at
	// that moment, so the wait is for the event, bounded by 10 s.
	const within = 10 * time.Second
	recovered := time.Now()
	for end := recovered.Add(within); time.Now().Before(end); {
		s.Ship(time.Now(), line(2, i, 60000), busy)
		i++
		time.Sleep(time.Millisecond) // far more than CloudWatch takes, still
		if i%50 == 0 && s.Stats().Shipped >= 20 && quietIn(srv.Events(cfg.Group, cfg.Stream)) {
			break
		}
	}
	st := s.Stats()
	checkInvariant(t, st)
	events := srv.Events(cfg.Group, cfg.Stream)
	quietShipped := quietIn(events)
	t.Logf("shipped %d, dropped %d, loss events %d, batches %d, %v after the outage", st.Shipped, st.Dropped, st.LossEvents, st.Batches, time.Since(recovered).Round(time.Millisecond))
	if !quietShipped {
		t.Errorf("the 25 h old record was never shipped")
	}
	if st.Shipped < 20 {
		t.Errorf("only %d records shipped in %v of a recovered service (%d loss events)", st.Shipped, within, st.LossEvents)
	}
	// The first loss event travelled with the old record: its timestamp is
	// within a day of it, its "time" the real time it was sent.
	for _, e := range events {
		var le lossEvent
		if json.Unmarshal([]byte(e.Message), &le) != nil || le.Kind != LossKind {
			continue
		}
		if d := e.Timestamp - old.UnixMilli(); d < 0 || d >= MaxBatchSpanMillis {
			t.Errorf("first loss event stamped %d ms after the old record, want within a day", d)
		}
		if time.Since(le.Time) > time.Hour {
			t.Errorf("first loss event's time %v, want the time it was sent", le.Time)
		}
		break
	}
}

// fillDuringOutage ships records of ts from one source during an outage
// until some are dropped for room, and ends the outage.
func fillDuringOutage(t *testing.T, srv *cwlogstest.Server, s *Shipper, ts time.Time) {
	t.Helper()
	srv.Outage(time.Hour, cwlogstest.OutageRefuse)
	src := srcOf("10.0.0.9")
	for i := 0; s.Stats().Dropped < 5; i++ {
		s.Ship(ts, line(2, i, 60000), src)
	}
}

// lossesStored returns the sum of the stored loss events' counts and how
// many there are.
func lossesStored(t *testing.T, srv *cwlogstest.Server, cfg Config) (lost uint64, events int) {
	t.Helper()
	for _, e := range srv.Events(cfg.Group, cfg.Stream) {
		var le lossEvent
		if json.Unmarshal([]byte(e.Message), &le) == nil && le.Kind == LossKind {
			lost += le.Lost
			events++
		}
	}
	return lost, events
}

// TestLossGivenBackSentAtClose: records are dropped for room during an
// outage, then every batch is refused for good, the ones carrying the loss
// event too, which gives its count back each time; when the queue is empty
// the count waits for a record to carry it. None comes before Close: Close
// sends it in a batch of its own. It used to end unsent.
func TestLossGivenBackSentAtClose(t *testing.T) {
	srv := cwlogstest.NewServer(t)
	cfg := testConfig()
	cfg.BufferBytes = MinBufferBytes
	s := startShipper(t, srv, cfg)
	fillDuringOutage(t, srv, s, time.Now())
	srv.Fail(1<<20, 400, "PutLogEvents")
	srv.EndOutage()
	waitFor(t, 10*time.Second, "every record refused or dropped", func() bool {
		st := s.Stats()
		return st.QueuedRecords == 0 && st.Failed+st.Dropped == st.Received
	})
	srv.ClearFaults()
	closeShipper(t, s, 5*time.Second)
	st := s.Stats()
	lost, events := lossesStored(t, srv, cfg)
	t.Logf("received %d, failed %d, dropped %d; loss events stored %d telling of %d", st.Received, st.Failed, st.Dropped, events, lost)
	if events != 1 || lost != st.Dropped || st.LossEvents != 1 {
		t.Errorf("%d loss events stored telling of %d lost (LossEvents %d), want one telling of the %d dropped", events, lost, st.LossEvents, st.Dropped)
	}
}

// TestRejectedLossEventGivenBack: the service's clock is 3 h behind, so the
// loss event, stamped now, is too new and rejected inside a batch it
// accepts (the records are stamped 4 h ago). Its count is given back, not
// lost: once the clock is right, the next batch's loss event tells of every
// record dropped. It used to be neither counted nor given back.
func TestRejectedLossEventGivenBack(t *testing.T) {
	srv := cwlogstest.NewServer(t)
	srv.SetNow(func() time.Time { return time.Now().Add(-3 * time.Hour) })
	cfg := testConfig()
	cfg.BufferBytes = MinBufferBytes
	s := startShipper(t, srv, cfg)
	fillDuringOutage(t, srv, s, time.Now().Add(-4*time.Hour))
	srv.EndOutage()
	waitFor(t, 10*time.Second, "the queue shipped", func() bool {
		st := s.Stats()
		return st.QueuedRecords == 0 && st.Shipped+st.Dropped+st.Rejected == st.Received
	})
	if st := s.Stats(); st.Rejected != 0 || st.LossEvents != 0 {
		t.Fatalf("rejected %d records, %d loss events accepted; want the loss event alone rejected", st.Rejected, st.LossEvents)
	}
	srv.SetNow(time.Now)
	s.Ship(time.Now(), line(3, 0, 100), srcOf("10.0.0.7"))
	waitFor(t, 10*time.Second, "the last record shipped", func() bool { return s.Stats().LossEvents > 0 })
	st := s.Stats()
	lost, events := lossesStored(t, srv, cfg)
	t.Logf("shipped %d, dropped %d; loss events stored %d telling of %d", st.Shipped, st.Dropped, events, lost)
	if lost != st.Dropped {
		t.Errorf("loss events tell of %d lost, %d were dropped", lost, st.Dropped)
	}
}

// TestLostSinceIsEarliest: lost_since is the time of the oldest record lost
// since the last loss event, whatever order they were dropped in
// (evictions take the oldest record of the largest source, so another
// source's older record can go after a newer one).
func TestLostSinceIsEarliest(t *testing.T) {
	var s Shipper
	s.noteLossLocked(2000)
	s.noteLossLocked(1000)
	s.noteLossLocked(3000)
	if s.lost != 3 || s.lostSince != 1000 {
		t.Fatalf("lost %d since %d, want 3 since 1000 (the oldest lost record)", s.lost, s.lostSince)
	}
}

// TestRestoredLossKeepsEarliest: a loss event's count given back (refused,
// rejected, or abandoned at shutdown) while newer losses are pending
// merges into one count whose lost_since is the earlier of the two.
func TestRestoredLossKeepsEarliest(t *testing.T) {
	var s Shipper
	s.noteLossLocked(900) // a loss after the batch was taken
	s.batchLoss, s.batchLost, s.batchLostSince = true, 2, 500
	s.restoreLoss()
	if s.lost != 3 || s.lostSince != 500 {
		t.Fatalf("lost %d since %d, want 3 since 500", s.lost, s.lostSince)
	}
}
