package proxy

import (
	"sync/atomic"
	"time"
)

// The relays' idle clock.
//
// A UDP flow's, an echo flow's and a held denied UDP flow's last datagram
// are stamped with monoNow, and their deadlines made with monoTime, which
// keeps the monotonic reading: time.Until, timers and socket deadlines
// then ignore wall-clock steps (chrony's makestep at boot, an operator's
// date, a leap second). A deadline made from a wall-clock stamp
// (time.Unix) moved with every step: one back kept every flow idle at
// the step, its host socket and its client's share, for the step's length.

// clockStart anchors monoNow on the monotonic clock.
var clockStart = time.Now()

// clockAnchor is monoNow's reading at clockStart: the wall clock's then,
// so that stamps look like unix nanoseconds and 0 stays long ago. Tests
// move it to stand for a wall-clock step.
var clockAnchor atomic.Int64

func init() { clockAnchor.Store(clockStart.UnixNano()) }

// monoNow returns the time now as a stamp: time.Since reads only the
// monotonic clock, less than a time.Now.
func monoNow() int64 { return clockAnchor.Load() + int64(time.Since(clockStart)) }

// monoStamp returns t, a reading of time.Now, as a stamp: nanoseconds on
// the monotonic clock.
func monoStamp(t time.Time) int64 { return clockAnchor.Load() + int64(t.Sub(clockStart)) }

// monoTime returns the time of stamp n, with its monotonic reading.
func monoTime(n int64) time.Time { return clockStart.Add(time.Duration(n - clockAnchor.Load())) }

// idleLeft returns how much is left of idle after stamp last: 0 or less
// once it has run out.
func idleLeft(last int64, idle time.Duration) time.Duration {
	return time.Until(monoTime(last).Add(idle))
}
