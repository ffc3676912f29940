package netstack

import (
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/monoclock"
)

// The wait after each of a run of read errors but the first: readBackoffMin
// doubled per error, up to readBackoffMax. A transient error is retried at
// once; one that persists (every read failing at once) would otherwise spin
// a core per reader, and still gets a try ten times a second.
const (
	readBackoffMin = time.Millisecond
	readBackoffMax = 100 * time.Millisecond
)

// readBackoff waits before the read after the failed-th error in a row;
// false: the server is closing.
func (s *Server) readBackoff(failed int) bool {
	if failed < 2 {
		return true
	}
	d := readBackoffMax
	if failed-2 < 7 { // 1ms << 7 > 100ms
		d = min(readBackoffMin<<(failed-2), readBackoffMax)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.done:
		return false
	}
}

// ReadFailingFor returns how long the reader failing the longest has read
// nothing but errors, 0 when every reader reads. A reader retries for ever
// (readBackoff), so one whose socket broke would otherwise stop taking
// datagrams while the health check said the appliance served: the GWLB
// would keep sending it flows that are never read.
func (s *Server) ReadFailingFor() time.Duration {
	now, worst := monoclock.Now(), time.Duration(0)
	for i := range s.readFailing {
		if since := s.readFailing[i].Load(); since != 0 {
			worst = max(worst, time.Duration(now-since))
		}
	}
	return worst
}
