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
	end := time.Now().Add(2 * time.Second)
	for time.Now().Before(end) {
		s.Ship(time.Now(), line(2, i, 60000), busy)
		i++
		time.Sleep(time.Millisecond) // far more than CloudWatch takes, still
	}
	st := s.Stats()
	checkInvariant(t, st)
	quietShipped := false
	var events []cwlogstest.Event
	for _, e := range srv.Events(cfg.Group, cfg.Stream) {
		events = append(events, e)
		if p, _, ok := parseLine(e.Message); ok && p == 1 {
			quietShipped = true
		}
	}
	t.Logf("shipped %d, dropped %d, loss events %d, batches %d", st.Shipped, st.Dropped, st.LossEvents, st.Batches)
	if !quietShipped {
		t.Errorf("the 25 h old record was never shipped")
	}
	if st.Shipped < 20 {
		t.Errorf("only %d records shipped in 2 s of a recovered service (%d loss events)", st.Shipped, st.LossEvents)
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
