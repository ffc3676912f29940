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
//
// More processors do not always do more work: one busy flow is a chain of
// goroutines handing off to each other, and a second processor adds thread
// wake-ups to every hand-off while the chain runs no faster, or slower when
// the other core is busy with something else. Given a count of the work
// done (SetWork: the appliance counts the GENEVE bytes it carries), a raise
// is therefore a trial: kept if the work done per second rose with it, taken
// back if not, and then not tried again for a while. Likewise, at more than
// one processor under a moderate load, one fewer is tried now and then, and
// kept unless the higher count did clearly more.
package procs

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"runtime"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Defaults of the Controller, and the thresholds of its decisions.
const (
	// DefaultInterval is how often the process's CPU time is sampled. A
	// load that saturates a lowered GOMAXPROCS gets the ceiling within
	// one or two intervals (two or three with the work counted, unless a
	// raise that did not pay, or a probe of one fewer that was kept, holds
	// raises back).
	DefaultInterval = 100 * time.Millisecond
	// DefaultQuiet is how long the load must have stayed low before
	// GOMAXPROCS is lowered, so that a pause in a busy stretch does not.
	DefaultQuiet = time.Second
	// maxQuiet bounds the quiet stretch, which doubles each time a raise
	// follows soon after a lowering (a load that comes in bursts; with the
	// work counted, a raise its trial keeps), so that such a load settles
	// at the ceiling instead of going up and down.
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
	// trialSamples: with the work measured, a raise is judged over this
	// many samples after it. The first, which spans the change itself (a
	// stop of the world, emptied pools), is not counted.
	trialSamples = 5
	// trialGain: the higher of two processor counts is worth it when the
	// work done per second there is at least this much above the lower's:
	// a raise is kept, and a probe of one fewer taken back. Less is not
	// worth the CPU that more processors' hand-offs cost.
	trialGain = 0.1
	// baseBackoff, maxBackoff: after a raise that did not pay, or a probe
	// of one fewer that did as much, no raise is tried for baseBackoff,
	// doubled after each such trial up to maxBackoff. A count waits as
	// long before one fewer is tried, doubled after each probe that did
	// less. Both go back to baseBackoff once the load has been calm (low
	// enough that one processor fewer would be at most lowerTo busy, and
	// nothing queued) for baseBackoff: the next load is a new one. A
	// shorter lull, between a load's bursts, keeps them.
	baseBackoff = 10 * time.Second
	maxBackoff  = time.Minute
	// probeBaseline: a probe of one fewer is judged against the mean work
	// per second of this many moderate samples in a row before it.
	probeBaseline = 4
)

// unmeasured is the work rate of a sample when no work count is set. A
// sample whose rate is unknown although a count is set (the first, or a
// count that went backwards) has a NaN rate: it neither raises nor counts
// in a trial.
const unmeasured = -1

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

	work atomic.Pointer[func() uint64] // set by SetWork
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

// SetWork gives the Controller a count of the work done so far, which only
// grows (the appliance: GENEVE bytes in and out). From then on each raise
// is a trial, kept only if the work done per second rises by a tenth or
// more, and one processor fewer is tried now and then; a count that does
// not follow the work would keep GOMAXPROCS low. It may be called while Run
// runs; nil takes the count away.
func (c *Controller) SetWork(work func() uint64) {
	if work == nil {
		c.work.Store(nil)
		return
	}
	c.work.Store(&work)
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
	s.backoffs(max(1, int(baseBackoff/c.interval)), max(1, int(maxBackoff/c.interval)))
	var waits schedWaits
	waits.read()
	lastCPU, lastWall := c.cpuTime(), time.Now()
	var meter workMeter
	for {
		select {
		case <-ctx.Done():
			c.apply(c.ceiling, c.Current())
			return
		case <-t.C:
			// Both ends of the sample are read together: the ticker's
			// time is when the tick was due, which at a saturated
			// processor can be well before this goroutine runs.
			cpu, now := c.cpuTime(), time.Now()
			wall := now.Sub(lastWall)
			rate := meter.rate(c.work.Load(), wall)
			if wall <= 0 || cpu < lastCPU { // a clock step, or getrusage failed
				lastCPU, lastWall = cpu, now
				continue
			}
			used := float64(cpu-lastCPU) / float64(wall)
			lastCPU, lastWall = cpu, now
			queued := waits.read()
			current := c.Current()
			if n, change := s.next(current, used, queued, rate); change {
				if c.apply(n, current) {
					slog.Debug("GOMAXPROCS adjusted to the load", "from", current, "to", n,
						"cpus_used", math.Round(used*100)/100, "goroutines_queued", queued,
						"reason", s.reason)
				}
			} else if s.keptReason != "" {
				slog.Debug("GOMAXPROCS kept after a trial", "at", current, "reason", s.keptReason)
			}
			s.keptReason = ""
		}
	}
}

// workMeter turns a count of the work done into the work per second of
// each sample.
type workMeter struct {
	last uint64
	have bool // last holds a read of the count now set
}

// rate reads the count work points at (nil: none is set) and returns the
// work per second over a sample of wall time since the last read:
// unmeasured without a count, NaN when it cannot be known (the first read
// of a count, one that went backwards, a sample of no time).
func (m *workMeter) rate(work *func() uint64, wall time.Duration) float64 {
	if work == nil {
		m.have = false
		return unmeasured
	}
	n := (*work)()
	last, have := m.last, m.have
	m.last, m.have = n, true
	if !have || n < last || wall <= 0 {
		return math.NaN()
	}
	return float64(n-last) / wall.Seconds()
}

// apply sets GOMAXPROCS to n, decided at the count from, unless Full holds it
// or has changed it since from (a raise decided at 1 would lower a new stack's
// ceiling): then the change is dropped, and the sampler decides again.
func (c *Controller) apply(n, from int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n == c.current || c.held > 0 || c.current != from {
		return false
	}
	c.current = n
	c.set(n)
	return true
}

// Full runs f with GOMAXPROCS at the ceiling. What sizes itself by
// GOMAXPROCS when it is made (gVisor's TCP makes one processor goroutine per
// processor for each stack) is made inside it, so that it is sized for the
// whole machine whatever the load was at that moment. GOMAXPROCS stays at
// the ceiling afterwards until the sampler decides otherwise (a quiet
// stretch of low load, or, with the work counted, a probe of one fewer): a
// change waits for a garbage collection under way, so Full, called on the
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
	// samples of a lowering (with the work counted, one its trial keeps),
	// and halved back for every flapWindow samples a lowering lasts.
	baseQuiet, quiet, maxQuiet int
	flapWindow                 int
	sinceLower                 int     // samples since the last lowering; -1: none yet
	low                        int     // consecutive samples so far that would allow lowering
	peak                       float64 // the busiest of them, in CPUs

	// Trials, with the work measured. A raise needs two busy samples in a
	// row (pending after the first), so that the rate it is judged
	// against is that of a whole busy sample, not of one in which the
	// load began.
	pending      bool
	sinceBefore  int     // sinceLower when the raise on trial was made, restored if it is taken back
	trialLeft    int     // samples of the trial still to come; 0: none under way
	trialFrom    int     // the processors before the change on trial
	baseRate     float64 // work per second before it
	trialSum     float64 // work per second summed over the trial's judged samples
	trialCounted int
	backoff      int // samples without raises after the next raise that does not pay, or probe kept
	minBackoff   int
	maxBackoff   int
	backoffLeft  int // samples before a raise may be tried again
	calm         int // samples in a row of a calm load
	// Probes of one processor fewer, while the load is moderate: too
	// high to lower by CPU time alone, short of saturating. After
	// probeWait moderate samples at a count (probeLeft left), doubled
	// after each probe that did less work.
	probeWait, probeLeft int
	rates                [probeBaseline]float64 // work per second of the moderate samples in a row before a probe
	nRates               int
	lastCurrent          int    // the processors of the last sample
	reason               string // why the last change was made, for the log
	keptReason           string // why a trial just ended without a change, for the log
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

// backoffs sets how many samples raises wait after a trial that did not
// pay, and a count waits before one processor fewer is tried: at first,
// and at most.
func (s *sampler) backoffs(first, most int) {
	s.minBackoff, s.backoff, s.maxBackoff = first, first, max(first, most)
	s.probeWait, s.probeLeft = first, first
}

// next takes the CPUs the process used (CPU time over wall time) during
// the last sample, at current processors, whether goroutines queued for
// them, and the work done per second (unmeasured: no count, no trials; NaN:
// unknown this time), and returns the processors it should have, and
// whether that is a change.
func (s *sampler) next(current int, used float64, queued bool, rate float64) (int, bool) {
	if current != s.lastCurrent {
		// Changed from outside (Full), or a change was dropped: what was
		// measured at the old count says nothing of this one, nor can a
		// trial under way be judged.
		if s.trialLeft > 0 {
			s.trialLeft = 0
			s.keptReason = "changed from outside during a trial"
		}
		s.lastCurrent = current
		s.pending = false
		s.restart()
	}
	if s.trialLeft > 0 {
		return s.judge(current, rate)
	}
	if s.backoffLeft > 0 {
		s.backoffLeft--
	}
	if s.sinceLower >= 0 {
		s.sinceLower++
		if s.sinceLower%s.flapWindow == 0 && s.quiet > s.baseQuiet {
			s.quiet = max(s.baseQuiet, s.quiet/2)
		}
	}
	// A load that has been calm for as long as the first back-off is gone:
	// whatever comes next is a new load, with its own trials. Calm is low
	// enough to neither raise nor probe: one processor fewer would be at
	// most lowerTo busy.
	if used <= lowerTo*float64(max(current-1, 1)) && !queued {
		if s.calm++; s.calm == s.minBackoff {
			s.backoff, s.backoffLeft, s.probeWait = s.minBackoff, 0, s.minBackoff
			s.probeLeft = min(s.probeLeft, s.probeWait)
		}
	} else {
		s.calm = 0
	}
	measured := rate != unmeasured
	if used > raiseAt*float64(current) || (queued && current < s.ceiling) {
		s.low, s.peak, s.nRates = 0, 0, 0
		if current >= s.ceiling {
			return current, false
		}
		if measured {
			if math.IsNaN(rate) || s.backoffLeft > 0 {
				return current, false // unknown, or the last trial showed no gain
			}
			if !s.pending {
				s.pending = true
				return current, false
			}
			s.startTrial(current, rate)
			s.sinceBefore = s.sinceLower
		} else if s.soonAfterLowering(s.sinceLower) {
			s.quiet = min(2*s.quiet, s.maxQuiet)
		}
		s.sinceLower = -1
		// How much more a saturated runtime would use cannot be seen
		// from here: go to the ceiling, and come down as the load allows.
		s.reason = "busy"
		return s.change(s.ceiling)
	}
	s.pending = false
	want := wanted(used, s.ceiling)
	if want >= current {
		s.low, s.peak = 0, 0
		if measured && current > 1 && !math.IsNaN(rate) {
			return s.probe(current, rate)
		}
		s.nRates = 0
		return current, false
	}
	s.nRates = 0
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
	s.reason = "quiet"
	return s.change(n)
}

// probe takes a moderate sample (too busy to lower by CPU time alone, short
// of saturating the processors) and, once the count has waited probeWait
// such samples and has probeBaseline of them in a row, tries one processor
// fewer: the same work may take less CPU on fewer processors.
func (s *sampler) probe(current int, rate float64) (int, bool) {
	s.rates[s.nRates%probeBaseline] = rate
	s.nRates++
	if s.probeLeft > 0 {
		s.probeLeft--
	}
	if s.probeLeft > 0 || s.nRates < probeBaseline {
		return current, false
	}
	var sum float64
	for _, r := range s.rates {
		sum += r
	}
	s.startTrial(current, sum/probeBaseline)
	s.reason = "a probe of one processor fewer"
	return s.change(current - 1)
}

// change returns n as the processors to set, and starts measuring afresh.
func (s *sampler) change(n int) (int, bool) {
	s.lastCurrent = n
	s.restart()
	return n, true
}

// soonAfterLowering reports whether a raise since samples after a lowering
// (-1: none) is part of a load in bursts, which lengthens the quiet stretch.
func (s *sampler) soonAfterLowering(since int) bool {
	return since >= 0 && since < s.flapWindow
}

// startTrial starts the trial of a change from processors from, whose work
// per second was rate.
func (s *sampler) startTrial(from int, rate float64) {
	s.pending = false
	s.trialLeft, s.trialFrom, s.baseRate = trialSamples, from, rate
	s.trialSum, s.trialCounted = 0, 0
}

// restart restarts what is measured at one processor count.
func (s *sampler) restart() {
	s.nRates = 0
	s.probeLeft = s.probeWait
}

// judge takes one sample of a trial: a raise, or a probe of one processor
// fewer. At its end it compares the work done per second at the two
// counts: when the higher does at least trialGain more, a raise is kept and
// a probe taken back (and the next probe waits longer); when it does not,
// a raise is taken back and a probe kept, and raises back off.
func (s *sampler) judge(current int, rate float64) (int, bool) {
	s.trialLeft--
	// The first sample spans the change itself; one whose rate is unknown
	// says nothing.
	if s.trialLeft < trialSamples-1 && rate >= 0 {
		s.trialSum += rate
		s.trialCounted++
	}
	if s.trialLeft > 0 {
		return current, false
	}
	from := s.trialFrom
	if s.trialCounted == 0 {
		s.keptReason = "nothing was measured"
		return current, false
	}
	got := s.trialSum / float64(s.trialCounted)
	higher, lower := got, s.baseRate
	if current < from {
		higher, lower = s.baseRate, got
	}
	// Samples that carried nothing say nothing of what the count does for
	// the work: keep what is, as without a count.
	if higher == 0 {
		s.keptReason = "nothing was carried"
		return current, false
	}
	if higher >= (1+trialGain)*lower {
		if current > from {
			if s.soonAfterLowering(s.sinceBefore) {
				s.quiet = min(2*s.quiet, s.maxQuiet)
			}
			s.keptReason = fmt.Sprintf("the raise paid: %.0f work/s against %.0f", higher, lower)
			return current, false
		}
		s.probeWait = min(2*s.probeWait, s.maxBackoff)
		s.reason = fmt.Sprintf("one processor fewer did less: %.0f work/s against %.0f", lower, higher)
		return s.change(from)
	}
	s.backoffLeft = s.backoff
	s.backoff = min(2*s.backoff, s.maxBackoff)
	if current < from {
		s.keptReason = fmt.Sprintf("one processor fewer did as much: %.0f work/s against %.0f", lower, higher)
		return current, false
	}
	// Taken back, the raise never happened as far as the quiet stretch
	// goes: a lowering before it keeps counting.
	s.sinceLower = s.sinceBefore
	s.reason = fmt.Sprintf("the raise did not pay: %.0f work/s against %.0f", higher, lower)
	return s.change(from)
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
