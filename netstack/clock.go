package netstack

import (
	"sync/atomic"
	"time"
)

// The netstack's clock.
//
// Every time the packet path stores and compares (a flow's lastSeen, an
// endpoint's lastPacket, a held ACK's deadline, a flow's last path MTU
// error, the fragment tables) is a monoNow reading: the wall clock steps
// (chrony's makestep at boot, an operator's date, a leap second, a
// hibernation), and a step back would keep flows, stacks and held ACKs for
// the step's length, while a step forward would expire every flow at once
// and close its endpoint's stack. The capture tap alone takes the wall
// clock: its timestamps are for people.

// clockStart anchors monoNow on the monotonic clock.
var clockStart = time.Now()

// clockAnchor is monoNow's reading at clockStart: the wall clock's then,
// so that readings look like unix nanoseconds and 0 stays long ago.
// Tests move it to stand for a wall-clock step (wallStepped).
var clockAnchor atomic.Int64

func init() { clockAnchor.Store(clockStart.UnixNano()) }

// monoNow returns the netstack's time in nanoseconds: the wall clock's at
// start, plus the monotonic time since, so that no wall-clock step moves
// it. A time.Since costs less than a time.Now (one clock read, not two).
func monoNow() int64 { return clockAnchor.Load() + int64(time.Since(clockStart)) }
