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
// samples the process's CPU time and how long runnable goroutines waited
// for a processor: it lowers GOMAXPROCS while the process needs little of
// its processors, and raises it to the ceiling (the value the runtime chose
// at start: the CPUs, or the cgroup's quota) as soon as the processors it
// has are nearly saturated or goroutines queue for them.
package procs

import (
	"context"
	"log/slog"
	"math"
	"runtime"
	"runtime/metrics"
	"sync"
	"syscall"
	"time"
)

// Defaults of the Controller, and the thresholds of its decisions.
const (
	// DefaultInterval is how often the process's CPU time is sampled. A
	// load that saturates a lowered GOMAXPROCS gets the ceiling within
	// one or two intervals.
	DefaultInterval = 100 * time.Millisecond
	// DefaultQuiet is how long the load must have stayed low before
	// GOMAXPROCS is lowered, so that a pause in a busy stretch does not.
	DefaultQuiet = time.Second
	// maxQuiet bounds the quiet stretch, which doubles each time a raise
	// follows soon after a lowering (a load that comes in bursts), so that
	// such a load settles at the ceiling instead of going up and down.
	maxQuiet = time.Minute
	// raiseAt: the processors are taken as saturated when the process uses
	// more than this share of them (the process's CPU time can exceed its
	// processors' time a little: threads in system calls hold none).
	raiseAt = 0.75
	// lowerTo: lowered, the processors left should be used at most this
	// much at the load of the quiet stretch's busiest sample. It is below
	// raiseAt, and fewer processors do the same work with less CPU, so a
	// steady load does not make GOMAXPROCS go up and down.
	lowerTo = 0.6
	// slowWait, slowShare: goroutines queue for the processors when more
	// than slowShare of those that became runnable during a sample waited
	// slowWait or longer to run. CPU time alone misses a load that
	// saturates the processors for part of each sample, and CPU time the
	// hypervisor steals.
	slowWait  = time.Millisecond
	slowShare = 0.01
	// minRuns, minSlow: a sample with fewer goroutine runs than minRuns, or
	// fewer slow ones than minSlow, says nothing about queueing. The
	// runtime times one run in eight, and these count those it timed.
	minRuns = 20
	minSlow = 2
)

// Controller adjusts GOMAXPROCS between 1 and a ceiling. Create it with New
// and start it with Run.
type Controller struct {
	ceiling  int
	interval time.Duration
	quiet    int // samples of low load before lowering, at first

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

// Current is the GOMAXPROCS in force, as the Controller last set it.
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
	s := newSampler(c.ceiling, c.quiet, int(maxQuiet/c.interval))
	var waits schedWaits
	waits.read()
	lastCPU, lastWall := c.cpuTime(), time.Now()
	for {
		select {
		case <-ctx.Done():
			c.apply(c.ceiling)
			return
		case <-t.C:
			// Both ends of the sample are read together: the ticker's
			// time is when the tick was due, which at a saturated
			// processor can be well before this goroutine runs.
			cpu, now := c.cpuTime(), time.Now()
			wall := now.Sub(lastWall)
			if wall <= 0 || cpu < lastCPU { // a clock step, or getrusage failed
				lastCPU, lastWall = cpu, now
				continue
			}
			used := float64(cpu-lastCPU) / float64(wall)
			lastCPU, lastWall = cpu, now
			queued := waits.read()
			current := c.Current()
			if n, change := s.next(current, used, queued); change {
				slog.Debug("GOMAXPROCS adjusted to the load", "from", current, "to", n,
					"cpus_used", math.Round(used*100)/100, "goroutines_queued", queued)
				c.apply(n)
			}
		}
	}
}

// apply sets GOMAXPROCS to n, unless a caller of Full holds it at the
// ceiling: then the change is dropped, and the sampler decides again.
func (c *Controller) apply(n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n == c.current || c.held > 0 {
		return
	}
	c.current = n
	c.set(n)
}

// Full runs f with GOMAXPROCS at the ceiling. What sizes itself by
// GOMAXPROCS when it is made (gVisor's TCP makes one processor goroutine per
// processor for each stack) is made inside it, so that it is sized for the
// whole machine whatever the load was at that moment. GOMAXPROCS stays at
// the ceiling afterwards until the load has been low for a quiet stretch:
// a change waits for a garbage collection under way, so Full, called on the
// packet path, makes at most one.
func (c *Controller) Full(f func()) {
	c.mu.Lock()
	if c.current != c.ceiling {
		slog.Debug("GOMAXPROCS raised to make a stack", "from", c.current, "to", c.ceiling)
		c.current = c.ceiling
		c.set(c.ceiling)
	}
	c.held++
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.held--
		c.mu.Unlock()
	}()
	f()
}

// sampler decides, from one sample after another, what GOMAXPROCS should
// be.
type sampler struct {
	ceiling int
	// quiet is the samples of low load needed before lowering: baseQuiet,
	// doubled (up to maxQuiet) whenever a raise comes within flapWindow
	// samples of a lowering, and halved back for every flapWindow samples
	// a lowering lasts.
	baseQuiet, quiet, maxQuiet int
	flapWindow                 int
	sinceLower                 int     // samples since the last lowering; -1: none yet
	low                        int     // consecutive samples so far that would allow lowering
	peak                       float64 // the busiest of them, in CPUs
}

// newSampler returns a sampler for processors up to ceiling that lowers
// after quiet samples of low load, or up to maxQuiet for a load that comes
// in bursts.
func newSampler(ceiling, quiet, maxQuiet int) sampler {
	return sampler{
		ceiling:    ceiling,
		baseQuiet:  quiet,
		quiet:      quiet,
		maxQuiet:   max(quiet, maxQuiet),
		flapWindow: 10 * quiet,
		sinceLower: -1,
	}
}

// next takes the CPUs the process used (CPU time over wall time) during
// the last sample, at current processors, and whether goroutines queued
// for them, and returns the processors it should have, and whether that is
// a change.
func (s *sampler) next(current int, used float64, queued bool) (int, bool) {
	if s.sinceLower >= 0 {
		s.sinceLower++
		if s.sinceLower%s.flapWindow == 0 && s.quiet > s.baseQuiet {
			s.quiet = max(s.baseQuiet, s.quiet/2)
		}
	}
	if used > raiseAt*float64(current) || (queued && current < s.ceiling) {
		s.low, s.peak = 0, 0
		if current < s.ceiling {
			if s.sinceLower >= 0 && s.sinceLower < s.flapWindow {
				s.quiet = min(2*s.quiet, s.maxQuiet)
			}
			s.sinceLower = -1
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
	if n == current {
		return current, false
	}
	s.sinceLower = 0
	return n, true
}

// wanted is the fewest processors that used CPUs keep at most lowerTo busy.
func wanted(used float64, ceiling int) int {
	n := int(math.Ceil(used / lowerTo))
	return min(max(n, 1), ceiling)
}

// schedWaits reads the runtime's histogram of how long runnable goroutines
// waited for a processor, and tells from one read to the next whether they
// queued.
type schedWaits struct {
	sample [1]metrics.Sample
	last   []uint64
}

// read reports whether, since the last read, more than slowShare of the
// goroutine runs the runtime timed waited slowWait or longer (with at least
// minRuns timed, minSlow of them slow).
func (w *schedWaits) read() bool {
	w.sample[0].Name = "/sched/latencies:seconds"
	metrics.Read(w.sample[:])
	if w.sample[0].Value.Kind() != metrics.KindFloat64Histogram {
		return false // not in this runtime
	}
	h := w.sample[0].Value.Float64Histogram()
	if len(w.last) != len(h.Counts) {
		w.last = make([]uint64, len(h.Counts))
		copy(w.last, h.Counts)
		return false
	}
	var runs, slow uint64
	for i, n := range h.Counts {
		d := n - w.last[i]
		runs += d
		if h.Buckets[i] >= slowWait.Seconds() {
			slow += d
		}
	}
	copy(w.last, h.Counts)
	return runs >= minRuns && slow >= minSlow && float64(slow) > slowShare*float64(runs)
}

// processCPUTime is the user and system CPU time the process has used.
func processCPUTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
