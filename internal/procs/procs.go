// Package procs fits the Go runtime's processor count (GOMAXPROCS) to the
// appliance's load.
//
// Every time a goroutine is made runnable while a processor is idle, the
// runtime wakes another thread to look for work, and puts it back to sleep
// when there is none. A lightly loaded appliance makes goroutines runnable a
// few times per packet (a GENEVE reader hands to gVisor's TCP processor,
// which wakes a connection's reader, which waits for the destination's
// socket), so with idle processors most of those wake-ups are a futex wake,
// a thread that spins and finds nothing, and a futex wait: measured on a
// 2-vCPU instance, a third of the appliance's CPU per kept-alive request,
// and more on a guest where a context switch is dear. With one processor
// there is nobody to wake.
//
// One processor cannot use a second core, though, and an appliance that
// owns its instance must scale with its cores. The Controller therefore
// samples the process's CPU time: it lowers GOMAXPROCS while the process
// needs little of its processors, and raises it to the ceiling (the value
// the runtime chose at start: the CPUs, or the cgroup's quota) as soon as
// the processors it has are nearly saturated.
package procs

import (
	"context"
	"log/slog"
	"math"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// Defaults of the Controller.
const (
	// DefaultInterval is how often the process's CPU time is sampled. A
	// load that saturates a lowered GOMAXPROCS gets the ceiling within
	// about one interval.
	DefaultInterval = 100 * time.Millisecond
	// DefaultQuiet is how long the load must have stayed low before
	// GOMAXPROCS is lowered, so that a pause in a busy stretch does not.
	DefaultQuiet = time.Second
	// raiseAt: the processors are taken as saturated when the process uses
	// more than this share of them (the process's CPU time can exceed its
	// processors' time a little: threads in system calls hold none).
	raiseAt = 0.75
	// lowerTo: lowered, the processors left should be used at most this
	// much at the load of the quiet stretch's busiest sample. It is below
	// raiseAt, and fewer processors do the same work with less CPU, so a
	// load does not make GOMAXPROCS go up and down.
	lowerTo = 0.6
)

// Controller adjusts GOMAXPROCS between 1 and a ceiling. Create it with New
// and start it with Run.
type Controller struct {
	ceiling  int
	interval time.Duration
	quiet    int // samples of low load before lowering

	// Replaceable in tests.
	cpuTime func() time.Duration // the process's user + system CPU time
	set     func(int)            // sets GOMAXPROCS

	mu      sync.Mutex // serializes changes of GOMAXPROCS
	current int
	held    int // callers inside Full
}

// New returns a Controller whose ceiling is the current GOMAXPROCS.
// interval and quiet of 0 take DefaultInterval and DefaultQuiet.
func New(interval, quiet time.Duration) *Controller {
	if interval <= 0 {
		interval = DefaultInterval
	}
	if quiet <= 0 {
		quiet = DefaultQuiet
	}
	n := runtime.GOMAXPROCS(0)
	return &Controller{
		ceiling:  n,
		current:  n,
		interval: interval,
		quiet:    max(1, int(quiet/interval)),
		cpuTime:  processCPUTime,
		set:      func(n int) { runtime.GOMAXPROCS(n) },
	}
}

// Ceiling is the most processors the Controller gives the runtime.
func (c *Controller) Ceiling() int { return c.ceiling }

// Current is the GOMAXPROCS the Controller last set.
func (c *Controller) Current() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.current
}

// Run adjusts GOMAXPROCS until ctx is done, then restores the ceiling. With
// a ceiling of 1 there is nothing to adjust and it only waits.
func (c *Controller) Run(ctx context.Context) {
	if c.ceiling <= 1 {
		<-ctx.Done()
		return
	}
	t := time.NewTicker(c.interval)
	defer t.Stop()
	s := sampler{ceiling: c.ceiling, quiet: c.quiet}
	lastCPU, lastWall := c.cpuTime(), time.Now()
	for {
		select {
		case <-ctx.Done():
			c.apply(c.ceiling)
			return
		case now := <-t.C:
			cpu := c.cpuTime()
			wall := now.Sub(lastWall)
			if wall <= 0 {
				continue
			}
			if cpu < lastCPU {
				continue // getrusage failed: no sample
			}
			used := float64(cpu-lastCPU) / float64(wall)
			lastCPU, lastWall = cpu, now
			if n, change := s.next(c.Current(), used); change {
				c.apply(n)
			}
		}
	}
}

// apply sets GOMAXPROCS to n, unless a caller of Full holds it at the
// ceiling: then n takes effect when the last one returns.
func (c *Controller) apply(n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n == c.current {
		return
	}
	slog.Debug("GOMAXPROCS adjusted to the load", "from", c.current, "to", n)
	c.current = n
	if c.held == 0 {
		c.set(n)
	}
}

// Full runs f with GOMAXPROCS at the ceiling. What sizes itself by
// GOMAXPROCS when it is made (gVisor's TCP makes one processor goroutine per
// processor for each stack) is made inside it, so that it is sized for the
// whole machine whatever the load was at that moment.
func (c *Controller) Full(f func()) {
	c.mu.Lock()
	if c.held == 0 && c.current != c.ceiling {
		c.set(c.ceiling)
	}
	c.held++
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.held--
		if c.held == 0 && c.current != c.ceiling {
			c.set(c.current)
		}
		c.mu.Unlock()
	}()
	f()
}

// sampler decides, from one CPU sample after another, what GOMAXPROCS
// should be.
type sampler struct {
	ceiling int
	quiet   int     // samples of low load before lowering
	low     int     // consecutive samples so far that would allow lowering
	peak    float64 // the busiest of them, in CPUs
}

// next takes the CPUs the process used (CPU time over wall time) during
// the last sample, at current processors, and returns the processors it
// should have, and whether that is a change.
func (s *sampler) next(current int, used float64) (int, bool) {
	if used > raiseAt*float64(current) {
		s.low, s.peak = 0, 0
		if current < s.ceiling {
			// How much more a saturated runtime would use cannot be
			// seen from here: go to the ceiling, and come down as the
			// load allows.
			return s.ceiling, true
		}
		return current, false
	}
	want := wanted(used, s.ceiling)
	if want >= current {
		s.low, s.peak = 0, 0
		return current, false
	}
	s.low++
	s.peak = max(s.peak, used)
	if s.low < s.quiet {
		return current, false
	}
	n := wanted(s.peak, s.ceiling)
	s.low, s.peak = 0, 0
	return n, n != current
}

// wanted is the fewest processors that used CPUs keep at most lowerTo busy.
func wanted(used float64, ceiling int) int {
	n := int(math.Ceil(used / lowerTo))
	return min(max(n, 1), ceiling)
}

// processCPUTime is the user and system CPU time the process has used.
func processCPUTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
