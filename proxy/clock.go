package proxy

import (
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/monoclock"
)

// The relays' idle clock.
//
// A UDP flow's, an echo flow's and a held denied UDP flow's last datagram
// are stamped with monoclock.Now, and their deadlines made with
// monoclock.Time, which keeps the monotonic reading: time.Until, timers
// and socket deadlines then ignore wall-clock steps (chrony's makestep at
// boot, an operator's date, a leap second). A deadline made from a
// wall-clock stamp (time.Unix) moved with every step: one back kept every
// flow idle at the step, its host socket and its client's share, for the
// step's length.

// idleLeft returns how much is left of idle after stamp last: 0 or less
// once it has run out.
func idleLeft(last int64, idle time.Duration) time.Duration {
	return time.Until(monoclock.Time(last).Add(idle))
}
