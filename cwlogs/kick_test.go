package cwlogs

import (
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/cwlogs/cwlogstest"
)

// TestShipperSendsFullBatchByBytesAtOnce: once the queue holds a full batch
// by bytes (far under the event count limit), Ship wakes the worker and the
// batch is sent then, not at the next flush tick. The tick here is a minute
// away, so a batch shipped at all was sent at once; waiting for the tick
// (the default is 5 s) lets the buffer fill under a burst of large records
// and drops records a prompt batch would have shipped.
func TestShipperSendsFullBatchByBytesAtOnce(t *testing.T) {
	srv := cwlogstest.NewServer(t)
	cfg := testConfig()
	cfg.FlushInterval = time.Minute
	s := startShipper(t, srv, cfg)
	for i := range 12 { // 12 x 100 KB: over MaxBatchBytes at the 11th
		s.Write(line(0, i, 100_000))
	}
	waitFor(t, 10*time.Second, "a full batch by bytes sent before the flush tick", func() bool {
		return srv.EventCount(cfg.Group, cfg.Stream) > 0
	})
	if b := srv.Batches(); len(b) == 0 || b[0].Bytes > MaxBatchBytes || b[0].Bytes < MaxBatchBytes-100_100 {
		t.Fatalf("batches %+v, want a first one filled to the byte limit", b)
	}
}
