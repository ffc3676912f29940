package netstack

import (
	"sync/atomic"
	"testing"
	"time"
)

// TestClosedSendTimeoutUnderPressure: memory pressure shortens the bound
// on a closed connection's unacknowledged bytes as it shortens the write
// stall timeout, and never lengthens a shorter one.
func TestClosedSendTimeoutUnderPressure(t *testing.T) {
	var p atomic.Int32
	for _, tc := range []struct {
		p    MemoryPressure
		d    time.Duration
		want time.Duration
	}{
		{MemoryAmple, 15 * time.Minute, 15 * time.Minute},
		{MemoryShort, 15 * time.Minute, 60 * time.Second},
		{MemoryCritical, 15 * time.Minute, 10 * time.Second},
		{MemoryCritical, 5 * time.Second, 5 * time.Second},
	} {
		p.Store(int32(tc.p))
		if got := closedSendTimeout(tc.d, &p); got != tc.want {
			t.Errorf("closedSendTimeout(%s) at %s = %s, want %s", tc.d, tc.p, got, tc.want)
		}
	}
	if got := closedSendTimeout(time.Minute, nil); got != time.Minute {
		t.Errorf("closedSendTimeout with no server = %s, want 1m", got)
	}
}
