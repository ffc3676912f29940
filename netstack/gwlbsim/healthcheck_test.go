package gwlbsim

import (
	"net/http"
	"testing"
	"time"
)

// TestHealthCheck4xxFails holds that a health check answered 404 fails:
// the GWLB's matcher is 200-399, so an appliance whose health endpoint is
// on the wrong path must turn unhealthy in the simulator as it would
// behind a real GWLB.
func TestHealthCheck4xxFails(t *testing.T) {
	g := newGroup(t, 183, 1, func(c *Config, hp int) {
		c.HealthCheck = HealthCheck{Port: hp, Interval: time.Second, Timeout: time.Second, HealthyThreshold: 2, UnhealthyThreshold: 1}
	})
	a := g.targets[0]
	a.status.Store(http.StatusNotFound)
	g.waitState(t, map[*fakeTarget]TargetState{a: StateUnhealthy})
}

// TestHealthThresholdsWired holds that the configured thresholds reach the
// health state machine the right way round: with an unhealthy threshold
// of 1 and a healthy one of 10, a failing target is unhealthy after its
// first failure. Swapped, the simulator would detect a dead target later
// than the GWLB and hide an appliance whose drain is too short.
func TestHealthThresholdsWired(t *testing.T) {
	g := newGroup(t, 184, 1, func(c *Config, hp int) {
		c.HealthCheck = HealthCheck{Port: hp, Interval: 300 * time.Millisecond, Timeout: 100 * time.Millisecond, HealthyThreshold: 10, UnhealthyThreshold: 1}
	})
	a := g.targets[0]
	a.status.Store(http.StatusServiceUnavailable)
	g.waitState(t, map[*fakeTarget]TargetState{a: StateUnhealthy})
	// The state is read after the failed check that made it: a check may
	// have run between, hence 2.
	if ts := g.target(t, a); ts.ChecksFailed > 2 {
		t.Fatalf("unhealthy only after %d failed checks, want 1 (unhealthy threshold 1)", ts.ChecksFailed)
	}
}

// TestRegisterAgainStartsInitial holds that a target registered again
// starts in state initial, whatever its health was before: like the GWLB,
// the simulator gives it new flows only once a check has passed.
func TestRegisterAgainStartsInitial(t *testing.T) {
	g := newGroup(t, 186, 2, func(c *Config, hp int) {
		c.HealthCheck = HealthCheck{Port: hp, Interval: 2 * time.Second, Timeout: time.Second, HealthyThreshold: 2, UnhealthyThreshold: 2}
	})
	a, b := g.targets[0], g.targets[1]
	g.waitState(t, map[*fakeTarget]TargetState{a: StateHealthy, b: StateHealthy})
	if err := g.sim.Deregister(b.addr()); err != nil { // no delay: unused at once
		t.Fatal(err)
	}
	g.waitState(t, map[*fakeTarget]TargetState{b: StateUnused})
	// Its checks now fail (hang up): one failure is below the unhealthy
	// threshold, so initial is all it can be.
	b.status.Store(0)
	if err := g.sim.Register(b.addr()); err != nil {
		t.Fatal(err)
	}
	if ts := g.target(t, b); ts.State != StateInitial && ts.Health != StateInitial {
		t.Fatalf("target registered again: %+v, want state initial", ts)
	}
}

// TestRebalanceNeedsAHealthyTarget holds that on_unhealthy=rebalance moves
// a flow only to a healthy target: while no target is healthy, the flow
// stays on its target under its cookie (targets.go), as the GWLB keeps it.
// Moving it to another unhealthy target would change the cookie the
// appliance sees mid-flow.
func TestRebalanceNeedsAHealthyTarget(t *testing.T) {
	g := newGroup(t, 185, 2, func(c *Config, hp int) {
		c.HealthCheck = HealthCheck{Port: hp, Interval: 30 * time.Millisecond, Timeout: 30 * time.Millisecond, HealthyThreshold: 2, UnhealthyThreshold: 1}
		c.Attributes.OnUnhealthy, c.Attributes.OnDeregistration = Rebalance, Rebalance
	})
	a, b := g.targets[0], g.targets[1]
	g.waitState(t, map[*fakeTarget]TargetState{a: StateHealthy, b: StateHealthy})
	a.status.Store(http.StatusServiceUnavailable)
	g.waitState(t, map[*fakeTarget]TargetState{a: StateUnhealthy, b: StateHealthy})
	// A flow on b, then b turns unhealthy too: no healthy target is left.
	port := g.portTo(t, b, protoTCP, 40000, 80)
	if g.send(t, protoTCP, port, 80) != b {
		t.Fatal("the flow did not reach b")
	}
	before := g.flowOf(t, port)
	b.status.Store(http.StatusServiceUnavailable)
	g.waitState(t, map[*fakeTarget]TargetState{a: StateUnhealthy, b: StateUnhealthy})
	// The move, if any, happens when b turns unhealthy; a further failed
	// check of b proves that transition is behind us.
	failed := g.target(t, b).ChecksFailed
	deadline := time.Now().Add(5 * time.Second)
	for g.target(t, b).ChecksFailed <= failed {
		if time.Now().After(deadline) {
			t.Fatal("no further health check of b")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if f := g.flowOf(t, port); f.Target != b.addr() || f.Moves != 0 || f.Cookie != before.Cookie {
		t.Fatalf("flow %+v after every target turned unhealthy; want it still on %s under cookie %s", f, b.addr(), before.Cookie)
	}
}
