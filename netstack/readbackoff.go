package netstack

import "time"

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
