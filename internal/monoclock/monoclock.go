// Package monoclock stamps times on the monotonic clock.
//
// The wall clock steps (chrony's makestep at boot, an operator's date, a
// leap second, a hibernation). Times stored as wall-clock nanoseconds and
// compared later move with every step: a step back keeps flows, stacks,
// held ACKs and idle sockets for the step's length, and a step forward
// expires them all at once. A stamp from Now is the wall clock's reading at
// the process's start plus the monotonic time since, so it looks like unix
// nanoseconds (0 stays long ago) and no step moves it.
package monoclock

import (
	"sync/atomic"
	"time"
)

// start anchors the stamps on the monotonic clock.
var start = time.Now()

// anchor is Now's reading at start: the wall clock's then. Shift moves it.
var anchor atomic.Int64

func init() { anchor.Store(start.UnixNano()) }

// Now returns the time now as a stamp, in nanoseconds. time.Since reads
// only the monotonic clock, less than a time.Now.
func Now() int64 { return anchor.Load() + int64(time.Since(start)) }

// Stamp returns t, a reading of time.Now, as a stamp.
func Stamp(t time.Time) int64 { return anchor.Load() + int64(t.Sub(start)) }

// Time returns the time of stamp n, with its monotonic reading, so that
// time.Until, timers and deadlines made from it ignore wall-clock steps.
func Time(n int64) time.Time { return start.Add(time.Duration(n - anchor.Load())) }

// Shift moves every stamp from now on by d, against those taken before:
// tests use it to leave stamps as a wall-clock step would have (a step
// back of an hour is Shift(-time.Hour)), and undo it with Shift(-d).
func Shift(d time.Duration) { anchor.Add(int64(d)) }
