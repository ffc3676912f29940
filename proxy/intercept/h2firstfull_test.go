package intercept_test

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// TestH2FullFirstConnectionHoldsNoStream: streams opened together against
// an origin whose first connection is full at once (it allows one or two
// streams a connection). A stream that came while the first connection
// was taken up is handed it, finds it full, and net/http dials again for
// it; that dial goes ahead at once. It waited for the take-up's bound
// (firstTakeUpWait, 1 s), which nothing else ended: net/http reports no
// connection got for a stream it hands a full one.
func TestH2FullFirstConnectionHoldsNoStream(t *testing.T) {
	defer intercept.SetUpstreamH2PingTimeouts(shortPingInterval, 10*time.Second)()
	var bounded atomic.Int64
	defer intercept.OnTakeUpBound(func() { bounded.Add(1) })()
	runs, slow := 0, 0
	for _, c := range []struct {
		mcs     uint32
		n, runs int
	}{{1, 2, 20}, {1, 3, 10}, {2, 4, 10}} {
		for run := 0; run < c.runs; run++ {
			t.Run(fmt.Sprintf("mcs%d-n%d-run%d", c.mcs, c.n, run), func(t *testing.T) {
				before := bounded.Load()
				o, r := startStreamsOrigin(t, c.mcs, 20*time.Millisecond)
				statuses, slowest := streamsTogether(t, r, o, c.n, 20*time.Second)
				if bad := notAll200(statuses); bad != "" {
					t.Errorf("streams not all answered 200: %s", bad)
				}
				if n := bounded.Load() - before; n > 0 {
					t.Errorf("%d dials waited the first connection's take-up out (1 s); slowest stream %v", n, slowest.Round(time.Millisecond))
				}
				runs++
				if slowest >= 300*time.Millisecond {
					slow++
					t.Logf("slowest stream %v (%d further dials)", slowest.Round(time.Millisecond), o.dialled.Load())
				}
			})
		}
	}
	// A stream the origin refused (REFUSED_STREAM, sent before the origin's
	// SETTINGS reached net/http) twice is retried after net/http's own
	// 1 s backoff: about 1 run in 100 under load, with or without the wait.
	if slow > 2 {
		t.Errorf("%d of %d runs had a stream take 300 ms or more, want at most 2", slow, runs)
	}
}
