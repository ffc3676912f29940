package procs

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"sync"
	"testing"
	"time"
)

// TestSamplerRaises: processors nearly saturated, or goroutines queueing
// for them even when the CPU time looks low (a load saturating the
// processors for part of each sample, or CPU the hypervisor steals), go to
// the ceiling on the first sample, whatever the quiet stretch before; at
// the ceiling nothing changes.
func TestSamplerRaises(t *testing.T) {
	for _, tc := range []struct {
		name    string
		current int
		used    float64
		queued  bool
		want    int
		change  bool
	}{
		{"busy", 1, 0.8, false, 8, true},
		{"queued", 1, 0.3, true, 8, true},
		{"busy at the ceiling", 8, 7, false, 8, false},
		{"queued at the ceiling", 8, 0.3, true, 8, false},
	} {
		s := newSampler(8, 10, 600)
		for range 5 {
			if _, change := s.next(tc.current, 0.1, false, unmeasured); change {
				t.Fatalf("%s: changed at a low load before the quiet stretch ended", tc.name)
			}
		}
		if n, change := s.next(tc.current, tc.used, tc.queued, unmeasured); n != tc.want || change != tc.change {
			t.Errorf("%s: %d processors, %.1f CPUs used, queued %v: got %d (change %v), want %d (change %v)",
				tc.name, tc.current, tc.used, tc.queued, n, change, tc.want, tc.change)
		}
	}
}

// TestSamplerLowersAfterQuiet: a low load lowers only once it has lasted the
// whole quiet stretch, to what the stretch's busiest sample needs; a busy
// sample in between starts the stretch again.
func TestSamplerLowersAfterQuiet(t *testing.T) {
	s := newSampler(8, 10, 600)
	for i := range 9 {
		if _, change := s.next(8, 0.3, false, unmeasured); change {
			t.Fatalf("lowered after %d quiet samples of 10", i+1)
		}
	}
	// Busy enough for all 8 (wanted(5) = 9 > 8): the stretch starts over.
	if _, change := s.next(8, 5, false, unmeasured); change {
		t.Fatal("changed on a busy sample")
	}
	for i := range 9 {
		used := 0.3
		if i == 4 {
			used = 2 // the peak: wants 4 processors
		}
		if _, change := s.next(8, used, false, unmeasured); change {
			t.Fatalf("lowered %d quiet samples after a busy one", i+1)
		}
	}
	n, change := s.next(8, 0.3, false, unmeasured)
	if !change || n != 4 {
		t.Fatalf("after the quiet stretch: got %d (change %v), want 4 (the peak of 2 CPUs at 0.6 each)", n, change)
	}
	for range 10 {
		n, change = s.next(4, 0.1, false, unmeasured)
	}
	if !change || n != 1 {
		t.Fatalf("a quiet stretch at 0.1 CPUs: got %d (change %v), want 1", n, change)
	}
}

// TestSamplerSteady: a steady load settles, and stays, at one value. The
// load is modelled as costing more CPU with more processors (the spinning
// threads this package exists to spare): 1.4 times as much with two or
// more as with one, which is what the appliance measured.
func TestSamplerSteady(t *testing.T) {
	for ceiling := 2; ceiling <= 8; ceiling *= 2 {
		for load := 0.05; load < 2.5; load += 0.05 {
			t.Run(fmt.Sprintf("ceiling%d/load%.2f", ceiling, load), func(t *testing.T) {
				s := newSampler(ceiling, 10, 600)
				current, changes := ceiling, 0
				for range 1000 {
					used := load
					if current > 1 {
						used *= 1.4
					}
					used = min(used, float64(current)+0.1) // no more than its processors, and some syscalls
					if n, change := s.next(current, used, false, unmeasured); change {
						current = n
						changes++
					}
				}
				if changes > 2 {
					t.Errorf("%d changes in 1000 samples of a steady load; ended at %d", changes, current)
				}
				// Demand beyond one processor must end with more than one.
				if load > 1 && current == 1 {
					t.Errorf("a load of %.2f CPUs left at 1 processor", load)
				}
			})
		}
	}
}

// recordingSet records the GOMAXPROCS values a Controller sets.
type recordingSet struct {
	mu  sync.Mutex
	got []int
}

func (r *recordingSet) set(n int) {
	r.mu.Lock()
	r.got = append(r.got, n)
	r.mu.Unlock()
}

func (r *recordingSet) values() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]int(nil), r.got...)
}

func (r *recordingSet) last() int {
	v := r.values()
	if len(v) == 0 {
		return 0
	}
	return v[len(v)-1]
}

// TestFullHoldsTheCeiling: inside Full, GOMAXPROCS is the ceiling, and no
// change the sampler decides meanwhile takes effect; afterwards it stays at
// the ceiling (each change can wait for a garbage collection, and Full is
// on the packet path) until the sampler lowers it again.
func TestFullHoldsTheCeiling(t *testing.T) {
	var rec recordingSet
	c := &Controller{ceiling: 4, current: 1, set: rec.set}
	c.Full(func() {
		if got := rec.last(); got != 4 {
			t.Fatalf("inside Full GOMAXPROCS was set to %d, want the ceiling 4", got)
		}
		c.Full(func() {}) // nested: no change
		c.apply(2, 4)     // decided while held: dropped
		if got := rec.last(); got != 4 {
			t.Fatalf("a change while held set GOMAXPROCS to %d", got)
		}
	})
	if got := rec.values(); fmt.Sprint(got) != "[4]" {
		t.Fatalf("GOMAXPROCS set to %v, want [4]: the ceiling, and nothing on the way out", got)
	}
	if c.Current() != 4 {
		t.Fatalf("Current is %d after Full, want the ceiling 4", c.Current())
	}
	c.apply(1, 4)
	if got := rec.values(); fmt.Sprint(got) != "[4 1]" {
		t.Fatalf("after Full, a lowering set %v, want [4 1]", got)
	}
}

// TestSamplerBurstsBackOff: a load that comes in bursts, each raising
// GOMAXPROCS soon after a lowering, lengthens the quiet stretch each time,
// so that the controller ends up staying at the ceiling; once the bursts
// stop, the quiet stretch shrinks back.
func TestSamplerBurstsBackOff(t *testing.T) {
	s := newSampler(8, 10, 600)
	current, changes := 8, 0
	step := func(used float64) {
		if n, change := s.next(current, used, false, unmeasured); change {
			current = n
			changes++
		}
	}
	// A one-sample burst every 11 samples, for 10,000 samples (1,000 s
	// at the default interval).
	for i := range 10000 {
		if i%11 == 0 {
			step(6)
		} else {
			step(0.1)
		}
	}
	if changes > 12 {
		t.Errorf("bursts every 11 samples: %d changes in 10,000 samples, want the quiet stretch to back off", changes)
	}
	if current != 8 {
		t.Errorf("bursts every 11 samples left GOMAXPROCS at %d, want the ceiling 8", current)
	}
	if s.quiet < 12 {
		t.Errorf("quiet stretch %d samples after the bursts, want it lengthened past their period", s.quiet)
	}
	// The bursts stop: it lowers once the (long) quiet stretch passes, and
	// the stretch halves back after each lowering that lasts.
	for range 20000 {
		step(0.1)
	}
	if current != 1 {
		t.Errorf("after the bursts stopped GOMAXPROCS is %d, want 1", current)
	}
	if s.quiet != 10 {
		t.Errorf("quiet stretch %d samples long after the bursts stopped, want back to 10", s.quiet)
	}
}

// fakeLoad is a CPU clock a test drives: the process uses load CPUs over
// the wall time between reads.
type fakeLoad struct {
	mu   sync.Mutex
	cpu  time.Duration
	load float64
	last time.Time
}

func newFakeLoad(load float64) *fakeLoad { return &fakeLoad{load: load, last: time.Now()} }

func (f *fakeLoad) cpuTime() time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	f.cpu += time.Duration(f.load * float64(now.Sub(f.last)))
	f.last = now
	return f.cpu
}

func (f *fakeLoad) set(load float64) {
	f.mu.Lock()
	f.load = load
	f.mu.Unlock()
}

// work is as much work per CPU second at any count: the CPU time so far,
// read where Run reads the work, right after the CPU time.
func (f *fakeLoad) work() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return uint64(f.cpu.Microseconds())
}

// runController runs c's loop at a 5 ms interval with a quiet stretch of 4
// samples, GOMAXPROCS recorded in rec, until stop; waitFor waits up to 10 s
// for a condition.
func runController(t *testing.T, c *Controller, rec *recordingSet) (waitFor func(what string, cond func() bool), stop func()) {
	c.ceiling, c.current, c.interval, c.quiet, c.set = 2, 2, 5*time.Millisecond, 4, rec.set
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	waitFor = func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("waited 10s for %s; set so far: %v", what, rec.values())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return waitFor, func() { cancel(); <-done }
}

// TestRunFollowsTheLoad runs the controller's loop with a CPU clock the
// test drives: an idle process goes to one processor, a busy one back to
// the ceiling, and the ceiling is restored when the context ends.
func TestRunFollowsTheLoad(t *testing.T) {
	var rec recordingSet
	load := newFakeLoad(0.05)
	c := &Controller{cpuTime: load.cpuTime}
	waitFor, stop := runController(t, c, &rec)
	waitFor("an idle process to be lowered to 1", func() bool { return c.Current() == 1 && rec.last() == 1 })
	load.set(0.95)
	waitFor("a busy process to be raised to 2", func() bool { return c.Current() == 2 && rec.last() == 2 })
	load.set(0.05)
	waitFor("lowered again", func() bool { return c.Current() == 1 })
	stop()
	if got := rec.last(); got != 2 {
		t.Fatalf("after Run returned GOMAXPROCS was left at %d, want the ceiling 2", got)
	}
}

// TestRunTakesBackARaiseThatDoesNotPay runs the controller's loop with a
// CPU clock and a work count the test drives, the work done per second the
// same at any processor count: a busy process is raised to the ceiling,
// lowered back after the trial, and not raised again during the back-off
// (10 s) although it stays busy.
func TestRunTakesBackARaiseThatDoesNotPay(t *testing.T) {
	var rec recordingSet
	load := newFakeLoad(0.05)
	c := &Controller{cpuTime: load.cpuTime}
	c.SetWork(load.work)
	waitFor, stop := runController(t, c, &rec)
	defer stop()
	waitFor("an idle process to be lowered to 1", func() bool { return c.Current() == 1 })
	load.set(0.95)
	waitFor("a busy process to be raised to 2", func() bool { return c.Current() == 2 })
	waitFor("the raise to be taken back", func() bool { return c.Current() == 1 })
	time.Sleep(300 * time.Millisecond) // 60 busy samples, well inside the back-off
	if got := rec.values(); fmt.Sprint(got) != "[1 2 1]" {
		t.Fatalf("GOMAXPROCS set to %v, want [1 2 1]: lowered when idle, raised when busy, taken back, and no new raise", got)
	}
}

// TestWorkMeter: the work per second of each sample from a count that only
// grows; unknown (NaN) for the first read of a count, after it went
// backwards, and over no time; unmeasured while no count is set, after which
// a count set again starts afresh.
func TestWorkMeter(t *testing.T) {
	var count uint64
	work := func() uint64 { return count }
	var m workMeter
	check := func(what string, w *func() uint64, wall time.Duration, want float64) {
		t.Helper()
		got := m.rate(w, wall)
		if got != want && !(math.IsNaN(got) && math.IsNaN(want)) {
			t.Errorf("%s: rate %v, want %v", what, got, want)
		}
	}
	check("no count", nil, time.Second, unmeasured)
	count = 1000
	check("first read", &work, time.Second, math.NaN())
	count = 1500
	check("500 in half a second", &work, 500*time.Millisecond, 1000)
	count = 1200
	check("the count went backwards", &work, time.Second, math.NaN())
	count = 1300
	check("100 in a second after that", &work, time.Second, 100)
	check("no time", &work, 0, math.NaN())
	check("the count taken away", nil, time.Second, unmeasured)
	count = 2000
	check("set again: a first read", &work, time.Second, math.NaN())
}

// TestSchedWaitsSeesQueueing reads the runtime's own histogram: goroutines
// that outnumber a single processor (800, each busy for 0.5 ms), wait for
// it, and the read says so; a read with nothing run since says nothing. The
// runtime times one goroutine in eight, picked at random, and the read
// wants 20 timed runs: with 200 goroutines one run in eight or so fell
// short, with 800 (about 100 timed) none will.
func TestSchedWaitsSeesQueueing(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	var w schedWaits
	w.read()
	var wg sync.WaitGroup
	for range 800 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for start := time.Now(); time.Since(start) < 500*time.Microsecond; {
			}
		}()
	}
	wg.Wait()
	if !w.read() {
		t.Error("800 goroutines busy for 0.5 ms each on one processor: no queueing seen")
	}
	if w.read() {
		t.Error("a read right after another saw queueing")
	}
}

// trialSampler is a sampler with a ceiling of 2, a quiet stretch of 10
// samples and raises backed off 100 samples at first, 400 at most.
func trialSampler() sampler {
	s := newSampler(2, 10, 600)
	s.backoffs(100, 400)
	return s
}

// steady feeds s n samples of one kind and fails if any changes the count.
func steady(t *testing.T, s *sampler, n, current int, used, rate float64, what string) {
	t.Helper()
	for i := range n {
		if got, change := s.next(current, used, false, rate); change {
			t.Fatalf("%s: sample %d of %d changed to %d", what, i+1, n, got)
		}
	}
}

// endTrial feeds s the samples of a trial under way at current processors,
// all alike, and fails unless the last changes the count to want (want ==
// current: no change).
func endTrial(t *testing.T, s *sampler, current int, used, rate float64, want int) {
	t.Helper()
	steady(t, s, trialSamples-1, current, used, rate, "a trial under way")
	n, change := s.next(current, used, false, rate)
	if got := map[bool]int{true: n, false: current}[change]; got != want {
		t.Fatalf("end of a trial at %d processors (%.0f work/s): at %d, want %d", current, rate, got, want)
	}
}

// TestSamplerTakesBackARaiseThatDoesNotPay: with the work measured, a busy
// processor raises on the second busy sample in a row; when the work done
// per second over the trial is no higher, the raise is taken back, and no
// raise is tried again for the back-off, which doubles after each such
// trial up to its bound.
func TestSamplerTakesBackARaiseThatDoesNotPay(t *testing.T) {
	s := trialSampler()
	if _, change := s.next(1, 0.9, false, 1000); change {
		t.Fatal("raised on the first busy sample")
	}
	if n, change := s.next(1, 0.9, false, 1000); !change || n != 2 {
		t.Fatalf("second busy sample: got %d (change %v), want a raise to 2", n, change)
	}
	for i := range trialSamples - 1 {
		if _, change := s.next(2, 1.3, false, 1040); change {
			t.Fatalf("changed %d samples into the trial", i+1)
		}
	}
	if n, change := s.next(2, 1.3, false, 1040); !change || n != 1 {
		t.Fatalf("end of a trial at 4%% more work: got %d (change %v), want back to 1", n, change)
	}
	for _, backoff := range []int{100, 200, 400, 400} {
		waited := 0
		for {
			n, change := s.next(1, 0.95, false, 1000)
			if change {
				if n != 2 {
					t.Fatalf("changed to %d, want a raise to 2", n)
				}
				break
			}
			if waited++; waited > 1000 {
				t.Fatalf("no raise tried within 1000 busy samples (back-off %d)", backoff)
			}
		}
		if waited < backoff || waited > backoff+1 {
			t.Errorf("raise tried again after %d busy samples, want the back-off of %d", waited, backoff)
		}
		endTrial(t, &s, 2, 1.3, 1000, 1)
	}
	// The load goes away for as long as the first back-off, then comes
	// back: a new load, tried at once.
	for range 100 {
		s.next(1, 0.2, false, 100)
	}
	s.next(1, 0.95, false, 1000)
	if n, change := s.next(1, 0.95, false, 1000); !change || n != 2 {
		t.Fatalf("a load back after a calm stretch: got %d (change %v), want a raise tried at once", n, change)
	}
}

// TestSamplerKeepsARaiseThatPays: a trial whose work per second rose by a
// tenth or more keeps the ceiling. The first sample of the trial, which
// spans the change, is not judged: here it carried nothing, and counted it
// would have sunk the average below the bar. Kept, the count is probed
// again (one fewer) after the probe wait, and a probe that does less is
// taken back; once the load has been calm for as long as the first
// back-off (not before) the waits that earlier trials lengthened are back
// at their start.
func TestSamplerKeepsARaiseThatPays(t *testing.T) {
	s := trialSampler()
	raise := func() {
		t.Helper()
		for range 2 {
			if n, change := s.next(1, 0.9, false, 1000); change {
				if n != 2 {
					t.Fatalf("got %d, want a raise to 2", n)
				}
				return
			}
		}
		t.Fatal("two busy samples in a row did not raise")
	}
	raise()
	for range trialSamples {
		s.next(2, 1.3, false, 1000) // no gain: taken back, back-off 100
	}
	for range 100 {
		s.next(1, 0.9, false, 1000)
	}
	raise()
	s.next(2, 1.3, false, 0) // the change itself
	steady(t, &s, trialSamples-1, 2, 1.3, 1200, "a trial at 20% more work")
	steady(t, &s, 99, 2, 1.3, 1200, "after a trial that paid")
	if n, change := s.next(2, 1.3, false, 1200); !change || n != 1 {
		t.Fatalf("after the probe wait at a moderate load: got %d (change %v), want a probe of 1", n, change)
	}
	for range trialSamples - 1 {
		s.next(1, 0.95, false, 900)
	}
	if n, change := s.next(1, 0.95, false, 900); !change || n != 2 {
		t.Fatalf("a probe that did 25%% less: got %d (change %v), want back to 2", n, change)
	}
	if s.backoff != 200 || s.probeWait != 200 {
		t.Fatalf("back-off %d, probe wait %d; want both doubled to 200", s.backoff, s.probeWait)
	}
	current := 2
	for i := range 100 {
		if n, change := s.next(current, 0.1, false, 10); change {
			current = n
		}
		if i == 98 && (s.backoff != 200 || s.probeWait != 200) {
			t.Fatalf("a calm load of 99 samples reset the back-off (%d) or probe wait (%d): a lull between bursts should not", s.backoff, s.probeWait)
		}
	}
	if current != 1 || s.backoff != 100 || s.probeWait != 100 || s.backoffLeft != 0 {
		t.Errorf("after a calm load of 100 samples: at %d, back-off %d (%d left), probe wait %d; want 1, 100 (0 left) and 100",
			current, s.backoff, s.backoffLeft, s.probeWait)
	}
}

// TestSamplerRaiseNeedsBusySamplesInARow: a calm sample between two busy
// ones starts the count again, and a sample whose work is unknown (NaN: the
// first after SetWork, or a count that went backwards) neither raises nor
// counts in a trial.
func TestSamplerRaiseNeedsBusySamplesInARow(t *testing.T) {
	s := trialSampler()
	for i, used := range []float64{0.9, 0.5, 0.9} {
		if n, change := s.next(1, used, false, 1000); change {
			t.Fatalf("sample %d (busy, calm, busy) changed to %d", i+1, n)
		}
	}
	s = trialSampler()
	for i := range 3 {
		if n, change := s.next(1, 0.9, false, math.NaN()); change {
			t.Fatalf("busy sample %d of unknown work changed to %d", i+1, n)
		}
	}
	s.next(1, 0.9, false, 1000)
	if n, change := s.next(1, 0.9, false, 1000); !change || n != 2 {
		t.Fatalf("got %d (change %v), want a raise to 2", n, change)
	}
	s.next(2, 1.3, false, 0) // the change itself
	s.next(2, 1.3, false, 1500)
	for range trialSamples - 2 {
		s.next(2, 1.3, false, math.NaN()) // counted as 0, these would sink the mean to 375
	}
	if s.trialLeft != 0 || s.lastCurrent != 2 {
		t.Fatalf("trial not over (%d left) or taken back (at %d)", s.trialLeft, s.lastCurrent)
	}
}

// TestSamplerChangeFromOutside: a count changed behind the sampler's back
// ends any trial under way without a verdict (nothing was measured at the
// counts it compares) and restarts the probe wait: a probe whose change
// Full dropped, and one that Full undid mid-trial by raising to the
// ceiling for a new stack.
func TestSamplerChangeFromOutside(t *testing.T) {
	s := trialSampler()
	for i := range 99 {
		if n, change := s.next(2, 1.3, false, 1000); change {
			t.Fatalf("changed to %d after %d moderate samples", n, i+1)
		}
	}
	if n, change := s.next(2, 1.3, false, 1000); !change || n != 1 {
		t.Fatalf("got %d (change %v), want a probe of 1", n, change)
	}
	// Full held the count: the probe's change was dropped.
	for i := range 100 {
		if n, change := s.next(2, 1.3, false, 500); change {
			if i == 99 && n == 1 {
				break // the next probe, after a whole new wait
			}
			t.Fatalf("%d samples after a dropped probe, changed to %d", i+1, n)
		}
		if i == 99 {
			t.Fatal("no new probe after a whole probe wait")
		}
	}
	if s.backoffLeft != 0 || s.probeWait != 100 {
		t.Errorf("a dropped probe was judged: back-off %d, probe wait %d", s.backoffLeft, s.probeWait)
	}
	// This probe took effect; two samples in, Full raises to the ceiling.
	s.next(1, 0.9, false, 1000)
	s.next(1, 0.9, false, 1000)
	if n, change := s.next(2, 1.3, false, 500); change {
		t.Fatalf("a sample after Full undid the probe changed to %d", n)
	}
	if s.trialLeft != 0 || s.keptReason == "" || s.backoffLeft != 0 || s.probeWait != 100 {
		t.Errorf("trial %d left, reason %q, back-off %d, probe wait %d: want the trial ended unjudged",
			s.trialLeft, s.keptReason, s.backoffLeft, s.probeWait)
	}
}

// TestSamplerCalmIsBelowTheProbeBand: a moderate load at two processors (1.1
// CPUs: under lowerTo of both, but one fewer would be busier than that) is
// not calm, so it does not reset the probe wait that earlier probes
// lengthened; a load one processor fewer would carry at lowerTo is.
func TestSamplerCalmIsBelowTheProbeBand(t *testing.T) {
	s := trialSampler()
	s.probeWait, s.probeLeft = 200, 200
	for range 150 {
		s.next(2, 1.1, false, 1000)
	}
	if s.probeWait != 200 {
		t.Fatalf("150 moderate samples reset the probe wait to %d", s.probeWait)
	}
	for range 100 {
		s.next(2, 0.5, false, 100)
	}
	if s.probeWait != 100 {
		t.Fatalf("100 calm samples left the probe wait at %d, want 100", s.probeWait)
	}
}

// TestSamplerProbeBaseline: a probe is judged against the mean of the four
// moderate samples in a row before it, not the last alone, and waits for
// four such samples after a busy one broke the row.
func TestSamplerProbeBaseline(t *testing.T) {
	s := trialSampler()
	for range 99 {
		s.next(2, 1.3, false, 1000)
	}
	s.next(2, 1.6, false, 1000) // busy at the ceiling: the row starts over
	for i, r := range []float64{1000, 1000, 1000, 1300} {
		n, change := s.next(2, 1.3, false, r)
		if i < 3 && change {
			t.Fatalf("probed to %d after %d moderate samples in a row", n, i+1)
		}
		if i == 3 && (!change || n != 1) {
			t.Fatalf("got %d (change %v), want a probe of 1 after four in a row", n, change)
		}
	}
	// 1,000 at one against a mean of 1,075: kept (against the last
	// sample's 1,300 it would have been taken back).
	steady(t, &s, trialSamples, 1, 0.9, 1000, "a probe that did 7% less than the mean")
}

// TestSamplerBurstsBackOffMeasured: bursts that two processors carry twice
// as much of, each 12 samples long every 40: the raises are kept, and come
// soon after each lowering, so the quiet stretch lengthens until the count
// stays at the ceiling, as without a work count.
func TestSamplerBurstsBackOffMeasured(t *testing.T) {
	s := trialSampler()
	current, changes := 2, 0
	for i := range 6000 {
		used, rate := 0.1, 10.0
		if i%40 < 12 {
			used, rate = 0.9, 1000
			if current == 2 {
				used, rate = 1.3, 2000
			}
		}
		if n, change := s.next(current, used, false, rate); change {
			current = n
			changes++
		}
	}
	if changes > 20 || current != 2 {
		t.Errorf("%d changes in 6,000 samples of bursts, ended at %d; want few, at the ceiling", changes, current)
	}
}

// TestSamplerCeilingEight: an open-loop load of 4 CPUs' worth of work (the
// same at any count that carries it, 1.4 times the CPU at more than one
// processor) under a ceiling of 8. Probes walk the count down while fewer
// carry as much; it never stays below the count that carries the load, and
// the changes are bounded by the back-offs.
func TestSamplerCeilingEight(t *testing.T) {
	s := newSampler(8, 10, 600)
	s.backoffs(100, 600)
	current, changes, low := 8, 0, 8
	const load = 4.0
	for range 6000 { // 10 minutes at the default interval
		used := load * 1.4
		done := min(load, float64(current)/1.4)
		used = min(used, float64(current)+0.1)
		if n, change := s.next(current, used, false, 1000*done); change {
			current = n
			changes++
			low = min(low, current)
		}
	}
	carries := int(math.Ceil(load * 1.4))
	if current < carries {
		t.Errorf("ended at %d processors, which do not carry the load (%d do)", current, carries)
	}
	if low < carries-1 {
		t.Errorf("went down to %d: a probe of one below the %d that carry the load should be its lowest", low, carries)
	}
	if changes > 40 {
		t.Errorf("%d changes in 6,000 samples", changes)
	}
	if low == 8 {
		t.Error("never tried fewer than 8 processors")
	}
	t.Logf("ended at %d processors after %d changes, lowest %d", current, changes, low)
}

// TestSamplerRaisesAtOnceUnmeasured: without a work count a busy sample
// raises at once and the raise stays, as it always did.
func TestSamplerRaisesAtOnceUnmeasured(t *testing.T) {
	s := trialSampler()
	if n, change := s.next(1, 0.9, false, unmeasured); !change || n != 2 {
		t.Fatalf("got %d (change %v), want a raise to 2 on the first busy sample", n, change)
	}
	for range 100 {
		if n, change := s.next(2, 1.3, false, unmeasured); change {
			t.Fatalf("an unmeasured raise changed to %d", n)
		}
	}
}

// TestSamplerSteadyTrials: a steady load with the work measured, modelled
// as TestSamplerSteady's (1.4 times the CPU at two processors), carrying
// 1,000 units per second per CPU of work it gets done: two processors do
// at most 2/1.4 of one's work. A load one processor carries settles at one,
// with a few trials at the back-off's pace; a load that two carry
// noticeably more of settles at two.
func TestSamplerSteadyTrials(t *testing.T) {
	for load := 0.05; load < 2.5; load += 0.05 {
		t.Run(fmt.Sprintf("load%.2f", load), func(t *testing.T) {
			s := trialSampler()
			current, changes := 2, 0
			for range 1000 {
				used, done := min(load, 1.05), min(load, 1)
				if current > 1 {
					used, done = min(load*1.4, 2.1), min(load, 2/1.4)
				}
				if n, change := s.next(current, used, false, 1000*done); change {
					current = n
					changes++
				}
			}
			// The lowering at the start, then at most four trials in
			// 1,000 samples (back-offs of 100, 200 and 400), two changes
			// each.
			if changes > 9 {
				t.Errorf("%d changes in 1000 samples of a steady load; ended at %d", changes, current)
			}
			if load >= 1.15 && current != 2 {
				t.Errorf("a load of %.2f CPUs, which two processors carry more of, left at %d", load, current)
			}
			if load <= 1 && current != 1 {
				t.Errorf("a load of %.2f CPUs, which one processor carries, left at %d", load, current)
			}
		})
	}
}

// TestSamplerProbesOneFewer: at two processors with a load too high to
// lower by CPU time alone but short of saturating them, one processor
// fewer is tried after the back-off; kept when it does as much work (and
// raises then wait), taken back when it does less, and then tried again
// only after twice as long.
func TestSamplerProbesOneFewer(t *testing.T) {
	probe := func(s *sampler, rate float64) (waited, end int) {
		t.Helper()
		for {
			n, change := s.next(2, 1.3, false, 1000)
			waited++
			if change {
				if n != 1 {
					t.Fatalf("changed to %d, want a probe of 1", n)
				}
				break
			}
			if waited > 1000 {
				t.Fatal("no probe within 1000 samples")
			}
		}
		end = 1
		for range trialSamples {
			if n, change := s.next(1, 0.95, false, rate); change {
				end = n
			}
		}
		return waited, end
	}

	s := trialSampler()
	if waited, end := probe(&s, 980); waited < 100 || waited > 101 || end != 1 {
		t.Fatalf("probe after %d samples ended at %d; want after the back-off of 100, kept at 1 (as much work)", waited, end)
	}
	for i := range 99 {
		if n, change := s.next(1, 0.95, false, 1000); change {
			t.Fatalf("%d samples after a probe that was kept, changed to %d: raises should wait", i+1, n)
		}
	}

	s = trialSampler()
	if waited, end := probe(&s, 700); waited < 100 || waited > 101 || end != 2 {
		t.Fatalf("probe after %d samples ended at %d; want after 100, back at 2 (30%% less work at 1)", waited, end)
	}
	if waited, end := probe(&s, 700); waited < 200 || waited > 201 || end != 2 {
		t.Fatalf("second probe after %d samples ended at %d; want after twice the wait, 200, back at 2", waited, end)
	}
	for _, want := range []int{400, 400} { // the bound
		if waited, end := probe(&s, 700); waited < want || waited > want+1 || end != 2 {
			t.Fatalf("probe after %d samples ended at %d; want after %d, back at 2", waited, end, want)
		}
	}

	// CPU busy without traffic (nothing carried at either count): the
	// count says nothing, and the probe stays.
	s = trialSampler()
	steady(t, &s, 99, 2, 1.3, 0, "a moderate load carrying nothing, before the probe wait")
	if n, change := s.next(2, 1.3, false, 0); !change || n != 1 {
		t.Fatalf("got %d (change %v), want a probe of 1", n, change)
	}
	steady(t, &s, trialSamples, 1, 0.7, 0, "a probe where nothing was carried")
}

// TestSamplerRaiseTakenBackKeepsTheLowering: a raise taken back after its
// trial does not count as the end of the lowering before it, so a quiet
// stretch that bursts had lengthened still halves back as that lowering
// lasts.
func TestSamplerRaiseTakenBackKeepsTheLowering(t *testing.T) {
	s := trialSampler()
	s.quiet, s.sinceLower, s.lastCurrent = 40, 0, 1 // just lowered to 1
	s.next(1, 0.9, false, 1000)
	if n, change := s.next(1, 0.9, false, 1000); !change || n != 2 {
		t.Fatalf("got %d (change %v), want a raise to 2", n, change)
	}
	endTrial(t, &s, 2, 1.3, 1000, 1)
	for range 100 {
		s.next(1, 0.3, false, 100)
	}
	if s.quiet != 20 {
		t.Errorf("quiet stretch %d samples after the lowering lasted its flap window, want halved to 20", s.quiet)
	}
}

// TestApplyAfterFullDropped: Run reads Current, the sampler decides from
// it, then apply sets the count. A Full in between (a new stack made at the
// ceiling) must not be undone by a decision made for the old count: a
// raise decided at 1 would lower GOMAXPROCS from 8 to 2 right after the
// stack was sized for 8.
func TestApplyAfterFullDropped(t *testing.T) {
	var rec recordingSet
	c := &Controller{ceiling: 8, current: 1, set: rec.set}
	from := c.Current() // Run's read: 1
	c.Full(func() {})   // the packet path makes a stack: GOMAXPROCS 8
	if c.apply(from+1, from) {
		t.Fatalf("a raise decided at %d was applied after Full set the ceiling", from)
	}
	if got := rec.values(); fmt.Sprint(got) != "[8]" || c.Current() != 8 {
		t.Fatalf("GOMAXPROCS set to %v, now %d; want [8] and the ceiling kept", got, c.Current())
	}
	if !c.apply(7, 8) || c.Current() != 7 {
		t.Fatalf("a change decided at the count in force was dropped (now %d)", c.Current())
	}
}
