package cwlogs

import (
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/cwlogs/cwlogstest"
)

// TestDataAlreadyAcceptedCountsShipped: a PutLogEvents answered with
// DataAlreadyAcceptedException is a batch the service already stored (in
// the API's older form, a sequence token reused after an answer that never
// arrived). Its records count as shipped, not failed, and it is not sent
// again.
func TestDataAlreadyAcceptedCountsShipped(t *testing.T) {
	srv := cwlogstest.NewServer(t)
	cfg := testConfig()
	s := startShipper(t, srv, cfg)
	srv.FailWithCode(1, 400, "DataAlreadyAcceptedException", "PutLogEvents")
	s.Write(line(0, 0, 20))
	waitFor(t, 5*time.Second, "the batch's fate", func() bool { return s.Stats().QueuedRecords == 0 && srv.FaultsServed() == 1 })
	s.Write(line(0, 1, 20))
	closeShipper(t, s, 5*time.Second)
	st := s.Stats()
	if st.Shipped != 2 || st.Failed != 0 || st.Retried != 0 || st.Dropped != 0 {
		t.Errorf("stats %+v, want the record already accepted and the next one shipped, none failed or resent", st)
	}
	if got := len(srv.Events(cfg.Group, cfg.Stream)); got != 1 {
		t.Errorf("the endpoint stored %d events, want only the one after: the accepted batch is not sent again", got)
	}
	checkInvariant(t, st)
}

// TestInvalidSequenceTokenRetried: InvalidSequenceTokenException asks for the
// batch again; it is no reason to count the batch's records as failed.
func TestInvalidSequenceTokenRetried(t *testing.T) {
	srv := cwlogstest.NewServer(t)
	cfg := testConfig()
	s := startShipper(t, srv, cfg)
	srv.FailWithCode(1, 400, "InvalidSequenceTokenException", "PutLogEvents")
	s.Write(line(0, 0, 20))
	s.Write(line(0, 1, 20))
	closeShipper(t, s, 5*time.Second)
	checkExactlyOnce(t, srv.Events(cfg.Group, cfg.Stream), 2)
	st := s.Stats()
	if st.Shipped != 2 || st.Failed != 0 || st.Retried != 1 || !strings.Contains(st.LastError, "InvalidSequenceTokenException") {
		t.Errorf("stats %+v, want the batch retried once and shipped", st)
	}
	checkInvariant(t, st)
}
