package proxy

import (
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// TestBreakBeforeFINCountsOnlySent: a client uploads to a destination
// that reads nothing until the windows close, and resets before its FIN.
// The relay resets the destination at once, throwing its send buffer
// away: bytes_out counted the MBs written into that buffer (2.8 MB for
// the 4 KiB the destination had). It counts what was sent: never less
// than the destination read (it counted only what the destination had
// acknowledged, 2,048 bytes of the 4,096 it read, in 4 runs of 5: the
// reset followed bytes in flight, whose acknowledgement the destination
// held back).
func TestBreakBeforeFINCountsOnlySent(t *testing.T) {
	r := newShareRig(t, 4, 300*time.Millisecond, Config{MaxLingeringPerClient: 3})
	r.p.SetWriteStallTimeout(5 * time.Minute)
	dst, drain := heldDest(t)
	c := r.dialWithinShare(t, dst, 20*time.Second)
	_ = c.SetWriteDeadline(time.Now().Add(700 * time.Millisecond))
	_, _ = c.Write(make([]byte, 8<<20)) // until the windows close
	waitRelayWriteWaiting(t, r.p)
	c.reset()
	rec, ok := r.firstRecord(t, 3*time.Second)
	if !ok {
		t.Fatal("no record 3s after the client's reset")
	}
	ends := drain()
	if len(ends) != 1 {
		t.Fatalf("destination ends %v", ends)
	}
	t.Logf("record %s bytes_out %d; the destination read %d", rec.Result, rec.BytesOut, ends[0].n)
	if !strings.Contains(rec.Error, "the client's connection broke before its FIN, its upload waiting on the destination") {
		t.Errorf("record %s %q, want the client's break before its FIN, its upload waiting", rec.Result, rec.Error)
	}
	if rec.BytesOut > ends[0].n+64<<10 {
		t.Errorf("bytes_out %d, the destination read %d: the reset threw away in the appliance's own send buffer what it counts more", rec.BytesOut, ends[0].n)
	}
	if rec.BytesOut < ends[0].n {
		t.Errorf("bytes_out %d, less than the %d bytes the destination read", rec.BytesOut, ends[0].n)
	}
}

// firstRecord waits up to within for r's first record.
func (r *shareRig) firstRecord(t *testing.T, within time.Duration) (records.Record, bool) {
	t.Helper()
	for end := time.Now().Add(within); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if recs := r.sink.parse(t); len(recs) > 0 {
			return recs[0], true
		}
	}
	return records.Record{}, false
}
