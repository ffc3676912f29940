package procs

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// TestSamplerRaisesAtOnce: processors nearly saturated go to the ceiling on
// the first sample, whatever the quiet stretch before.
func TestSamplerRaisesAtOnce(t *testing.T) {
	s := sampler{ceiling: 8, quiet: 10}
	for range 5 {
		if _, change := s.next(1, 0.2); change {
			t.Fatal("changed at a low load before the quiet stretch ended")
		}
	}
	if n, change := s.next(1, 0.8); !change || n != 8 {
		t.Fatalf("1 processor used 0.8: got %d (change %v), want the ceiling 8", n, change)
	}
	if n, change := s.next(8, 7); change || n != 8 {
		t.Fatalf("at the ceiling: got %d (change %v), want 8 and no change", n, change)
	}
}

// TestSamplerLowersAfterQuiet: a low load lowers only once it has lasted the
// whole quiet stretch, to what the stretch's busiest sample needs; a busy
// sample in between starts the stretch again.
func TestSamplerLowersAfterQuiet(t *testing.T) {
	s := sampler{ceiling: 8, quiet: 10}
	for i := range 9 {
		if _, change := s.next(8, 0.3); change {
			t.Fatalf("lowered after %d quiet samples of 10", i+1)
		}
	}
	// Busy enough for all 8 (wanted(5) = 9 > 8): the stretch starts over.
	if _, change := s.next(8, 5); change {
		t.Fatal("changed on a busy sample")
	}
	for i := range 9 {
		used := 0.3
		if i == 4 {
			used = 2 // the peak: wants 4 processors
		}
		if _, change := s.next(8, used); change {
			t.Fatalf("lowered %d quiet samples after a busy one", i+1)
		}
	}
	n, change := s.next(8, 0.3)
	if !change || n != 4 {
		t.Fatalf("after the quiet stretch: got %d (change %v), want 4 (the peak of 2 CPUs at 0.6 each)", n, change)
	}
	for range 10 {
		n, change = s.next(4, 0.1)
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
				s := sampler{ceiling: ceiling, quiet: 10}
				current, changes := ceiling, 0
				for range 1000 {
					used := load
					if current > 1 {
						used *= 1.4
					}
					used = min(used, float64(current)+0.1) // no more than its processors, and some syscalls
					if n, change := s.next(current, used); change {
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

// TestFullHoldsTheCeiling: inside Full, GOMAXPROCS is the ceiling; after the
// last caller leaves it is what the controller wants, including a change it
// decided while held.
func TestFullHoldsTheCeiling(t *testing.T) {
	var rec recordingSet
	c := &Controller{ceiling: 4, current: 1, set: rec.set}
	c.Full(func() {
		if got := rec.last(); got != 4 {
			t.Fatalf("inside Full GOMAXPROCS was set to %d, want the ceiling 4", got)
		}
		c.Full(func() {}) // nested: no change
		c.apply(2)        // decided while held: waits
		if got := rec.last(); got != 4 {
			t.Fatalf("a change while held set GOMAXPROCS to %d", got)
		}
	})
	if got := rec.values(); fmt.Sprint(got) != "[4 2]" {
		t.Fatalf("GOMAXPROCS set to %v, want [4 2]: the ceiling, then the change made while held", got)
	}
	c.apply(4)
	c.Full(func() {})
	if got := rec.values(); fmt.Sprint(got) != "[4 2 4]" {
		t.Fatalf("at the ceiling, Full set GOMAXPROCS: %v", got)
	}
}

// TestRunFollowsTheLoad runs the controller's loop with a CPU clock the
// test drives: an idle process goes to one processor, a busy one back to
// the ceiling, and the ceiling is restored when the context ends.
func TestRunFollowsTheLoad(t *testing.T) {
	var rec recordingSet
	var mu sync.Mutex
	var cpu time.Duration
	load := 0.05 // CPUs used, applied to wall time between samples
	last := time.Now()
	c := &Controller{
		ceiling:  2,
		current:  2,
		interval: 5 * time.Millisecond,
		quiet:    4,
		set:      rec.set,
		cpuTime: func() time.Duration {
			mu.Lock()
			defer mu.Unlock()
			now := time.Now()
			cpu += time.Duration(load * float64(now.Sub(last)))
			last = now
			return cpu
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("waited 10s for %s; set so far: %v", what, rec.values())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor("an idle process to be lowered to 1", func() bool { return c.Current() == 1 && rec.last() == 1 })
	mu.Lock()
	load = 0.95
	mu.Unlock()
	waitFor("a busy process to be raised to 2", func() bool { return c.Current() == 2 && rec.last() == 2 })
	mu.Lock()
	load = 0.05
	mu.Unlock()
	waitFor("lowered again", func() bool { return c.Current() == 1 })
	cancel()
	<-done
	if got := rec.last(); got != 2 {
		t.Fatalf("after Run returned GOMAXPROCS was left at %d, want the ceiling 2", got)
	}
}
