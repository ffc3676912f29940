package gwlbsim

import (
	"bytes"
	"encoding/binary"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// TestHealthRun: the state machine counts consecutive results only; a new
// target needs one pass, an unhealthy one HealthyThreshold in a row, and
// UnhealthyThreshold failures in a row turn any target unhealthy.
func TestHealthRun(t *testing.T) {
	const healthyN, unhealthyN = 3, 2
	type step struct {
		pass    bool
		want    TargetState
		changed bool
	}
	P, F := true, false
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"initial passes once", []step{{P, StateHealthy, true}, {P, StateHealthy, false}}},
		{"initial fails", []step{{F, StateInitial, false}, {F, StateUnhealthy, true}, {F, StateUnhealthy, false}}},
		{"initial, one failure, then a pass", []step{{F, StateInitial, false}, {P, StateHealthy, true}}},
		{"healthy survives one failure", []step{
			{P, StateHealthy, true}, {F, StateHealthy, false}, {P, StateHealthy, false}, {F, StateHealthy, false},
			{F, StateUnhealthy, true},
		}},
		{"unhealthy needs passes in a row", []step{
			{F, StateInitial, false}, {F, StateUnhealthy, true},
			{P, StateUnhealthy, false}, {P, StateUnhealthy, false}, {F, StateUnhealthy, false},
			{P, StateUnhealthy, false}, {P, StateUnhealthy, false}, {P, StateHealthy, true},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r healthRun
			r.reset(true)
			for i, s := range tc.steps {
				changed := r.observe(s.pass, healthyN, unhealthyN)
				if r.state != s.want || changed != s.changed {
					t.Fatalf("step %d (pass %v): state %s, changed %v; want %s, %v", i, s.pass, r.state, changed, s.want, s.changed)
				}
			}
		})
	}
	var r healthRun
	r.reset(false)
	if r.state != StateHealthy {
		t.Errorf("without health checks a target starts %s, want healthy", r.state)
	}
}

// TestStickiness: under each stickiness, the packets of one flow (as that
// tuple defines it) go to one target under one cookie, and distinct flows
// spread over every target.
func TestStickiness(t *testing.T) {
	t.Run("5-tuple", func(t *testing.T) {
		g := newGroup(t, 100, 3, nil)
		seen := map[*fakeTarget]int{}
		for p := uint16(40000); p < 40060; p++ {
			ft := g.send(t, protoTCP, p, 80)
			if ft == nil {
				t.Fatalf("the packet from port %d reached no target", p)
			}
			seen[ft]++
			cookie := ft.last(t).cookie
			// The same flow again, and its other direction's key: same
			// target, same cookie.
			if again := g.send(t, protoTCP, p, 80); again != ft || again.last(t).cookie != cookie {
				t.Fatalf("the flow from port %d moved: %s then %s", p, ft.addr(), again.addr())
			}
		}
		if len(seen) != 3 {
			t.Errorf("60 flows reached %d targets, want all 3: %v", len(seen), seen)
		}
		if n := len(g.sim.Flows()); n != 60 {
			t.Errorf("%d flows in the table, want 60", n)
		}
		total := 0
		for _, ts := range g.sim.Targets() {
			total += ts.Flows
			if ts.FlowsTotal != uint64(ts.Flows) || ts.Packets != uint64(2*ts.Flows) {
				t.Errorf("target %+v: want flows_total = flows and two packets each", ts)
			}
		}
		if total != 60 {
			t.Errorf("targets hold %d flows, want 60", total)
		}
	})
	t.Run("3-tuple", func(t *testing.T) {
		g := newGroup(t, 101, 3, func(c *Config, _ int) { c.Stickiness = ThreeTuple })
		first := g.send(t, protoTCP, 40000, 80)
		cookie := first.last(t).cookie
		for p := uint16(40001); p < 40020; p++ {
			ft := g.send(t, protoTCP, p, uint16(80+p%3))
			if ft != first || ft.last(t).cookie != cookie {
				t.Fatalf("TCP from port %d: target %v cookie %08x; want every port on %s under %08x", p, ft.addr(), ft.last(t).cookie, first.addr(), cookie)
			}
		}
		g.send(t, protoUDP, 40000, 53) // another protocol: another flow
		if n := len(g.sim.Flows()); n != 2 {
			t.Errorf("%d flows, want 2 (TCP and UDP between the same addresses)", n)
		}
		// Distinct client addresses spread.
		seen := map[*fakeTarget]bool{}
		for i := range 60 {
			src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 60, byte(i + 1)}), 40000)
			seen[g.sendFrom(t, protoTCP, src, netip.AddrPortFrom(testDest, 80))] = true
		}
		if len(seen) != 3 {
			t.Errorf("60 clients reached %d targets, want 3", len(seen))
		}
	})
	t.Run("2-tuple", func(t *testing.T) {
		g := newGroup(t, 102, 3, func(c *Config, _ int) { c.Stickiness = TwoTuple })
		first := g.send(t, protoTCP, 40000, 80)
		cookie := first.last(t).cookie
		for i, proto := range []uint8{protoUDP, protoTCP, protoUDP} {
			ft := g.send(t, proto, uint16(41000+i), 53)
			if ft != first || ft.last(t).cookie != cookie {
				t.Fatalf("protocol %d: target %v; want %s under %08x", proto, ft.addr(), first.addr(), cookie)
			}
		}
		if n := len(g.sim.Flows()); n != 1 {
			t.Errorf("%d flows, want 1", n)
		}
		// Replies of either direction's packets belong to the flow.
		for _, ft := range g.targets {
			ft.reply.Store(true)
		}
		g.send(t, protoUDP, 42000, 53)
		select {
		case <-g.replies:
		case <-time.After(2 * time.Second):
			t.Fatalf("no reply delivered; stats %+v", g.sim.Stats())
		}
	})
}

// TestNewFlowsOnlyToHealthy: a target failing its checks gets no new flow;
// when every target fails, new flows go to all of them (fail-open); when
// one recovers, new flows go to it alone. Existing flows stay where they
// are throughout (no_rebalance).
func TestNewFlowsOnlyToHealthy(t *testing.T) {
	g := newGroup(t, 103, 3, func(c *Config, hp int) {
		c.HealthCheck = HealthCheck{Port: hp, Interval: 50 * time.Millisecond, Timeout: 50 * time.Millisecond, HealthyThreshold: 2, UnhealthyThreshold: 2}
	})
	a, b, c := g.targets[0], g.targets[1], g.targets[2]
	g.waitState(t, map[*fakeTarget]TargetState{a: StateHealthy, b: StateHealthy, c: StateHealthy})
	onB := g.portTo(t, b, protoTCP, 40000, 80)
	if got := g.send(t, protoTCP, onB, 80); got != b {
		t.Fatalf("the flow routed to %s went to %v", b.addr(), got)
	}
	cookieB := b.last(t).cookie

	b.status.Store(http.StatusServiceUnavailable)
	g.waitState(t, map[*fakeTarget]TargetState{a: StateHealthy, b: StateUnhealthy, c: StateHealthy})
	if ts := g.target(t, b); ts.Reason != "HTTP 503" || ts.ConsecutiveFailed < 2 {
		t.Errorf("unhealthy target %+v: want reason HTTP 503 and at least 2 failures", ts)
	}
	for p := uint16(41000); p < 41030; p++ {
		if ft := g.send(t, protoTCP, p, 80); ft == b || ft == nil {
			t.Fatalf("a new flow went to %v with %s unhealthy", ft, b.addr())
		}
	}
	// The existing flow stays on b, under its cookie.
	if ft := g.send(t, protoTCP, onB, 80); ft != b || ft.last(t).cookie != cookieB {
		t.Fatalf("the flow on the unhealthy target moved to %v", ft)
	}

	// Every target unhealthy: fail-open to all of them.
	a.status.Store(http.StatusInternalServerError)
	c.status.Store(0) // hangs up
	g.waitState(t, map[*fakeTarget]TargetState{a: StateUnhealthy, b: StateUnhealthy, c: StateUnhealthy})
	seen := map[*fakeTarget]bool{}
	for p := uint16(42000); p < 42060; p++ {
		seen[g.send(t, protoTCP, p, 80)] = true
	}
	if len(seen) != 3 || seen[nil] {
		t.Errorf("with no healthy target, 60 new flows reached %d targets, want all 3 (fail-open)", len(seen))
	}

	// One recovers, after HealthyThreshold passes: new flows go to it.
	c.status.Store(http.StatusFound) // 3xx passes, unfollowed
	g.waitState(t, map[*fakeTarget]TargetState{a: StateUnhealthy, b: StateUnhealthy, c: StateHealthy})
	if ts := g.target(t, c); ts.ConsecutiveOK < 2 {
		t.Errorf("target %+v turned healthy before 2 passes", ts)
	}
	for p := uint16(43000); p < 43020; p++ {
		if ft := g.send(t, protoTCP, p, 80); ft != c {
			t.Fatalf("a new flow went to %v, want the only healthy target %s", ft, c.addr())
		}
	}
}

// TestRebalanceOnUnhealthy: with on_unhealthy rebalance, the flows of a
// target that turns unhealthy move to a healthy one under a new cookie;
// the old target's replies are refused from then on, the new one's
// accepted.
func TestRebalanceOnUnhealthy(t *testing.T) {
	g := newGroup(t, 104, 2, func(c *Config, hp int) {
		c.HealthCheck = HealthCheck{Port: hp, Interval: 50 * time.Millisecond, Timeout: 50 * time.Millisecond, HealthyThreshold: 2, UnhealthyThreshold: 2}
		c.Attributes.OnUnhealthy, c.Attributes.OnDeregistration = Rebalance, Rebalance
	})
	a, b := g.targets[0], g.targets[1]
	g.waitState(t, map[*fakeTarget]TargetState{a: StateHealthy, b: StateHealthy})
	port := g.portTo(t, b, protoTCP, 40000, 80)
	g.send(t, protoTCP, port, 80)
	old := b.last(t)

	b.status.Store(http.StatusServiceUnavailable)
	g.waitState(t, map[*fakeTarget]TargetState{a: StateHealthy, b: StateUnhealthy})
	f := g.flowOf(t, port)
	if f.Target != a.addr() || f.Moves != 1 {
		t.Fatalf("flow after its target turned unhealthy: %+v; want it on %s, moved once", f, a.addr())
	}
	if ft := g.send(t, protoTCP, port, 80); ft != a {
		t.Fatalf("the rebalanced flow's next packet went to %v, want %s", ft, a.addr())
	}
	moved := a.last(t)
	if moved.cookie == old.cookie || bytes.Equal(moved.header, old.header) {
		t.Errorf("rebalanced under the same cookie %08x: want a new one", old.cookie)
	}
	if ts := g.target(t, a); ts.RebalancedIn != 1 || ts.Flows != 1 {
		t.Errorf("new target %+v: want one flow, rebalanced in", ts)
	}
	if ts := g.target(t, b); ts.RebalancedOut != 1 || ts.Flows != 0 {
		t.Errorf("old target %+v: want no flow, one rebalanced out", ts)
	}

	// The old target answers under the old header: refused as from the
	// wrong target. The new one's answer is delivered.
	b.send(old.from.Port(), old.header, reflectPacket(old.inner))
	g.waitStats(t, "the old target's reply refused", func(s Stats) bool { return s.WrongTarget == 1 })
	a.send(moved.from.Port(), moved.header, reflectPacket(moved.inner))
	select {
	case r := <-g.replies:
		if !bytes.Equal(r, reflectPacket(moved.inner)) {
			t.Errorf("delivered %x, want the new target's reply", r)
		}
	case <-time.After(2 * time.Second):
		t.Fatalf("the new target's reply was not delivered; stats %+v", g.sim.Stats())
	}
	if st := g.sim.Stats(); st.Received != 1 || st.Rebalanced != 1 || st.HeaderMismatch != 0 {
		t.Errorf("stats %+v: want one reply delivered, one flow rebalanced", st)
	}
}

// TestDeregistration: a deregistered target gets no new flow at once and
// keeps its flows for the delay; then (no_rebalance) their packets are
// dropped, or (rebalance) they move under new cookies. A target
// registered again takes new flows.
func TestDeregistration(t *testing.T) {
	for _, fo := range []Failover{NoRebalance, Rebalance} {
		t.Run(string(fo), func(t *testing.T) {
			const delay = time.Second
			n := 105
			if fo == Rebalance {
				n = 106
			}
			g := newGroup(t, n, 3, func(c *Config, _ int) {
				c.Attributes = Attributes{OnDeregistration: fo, OnUnhealthy: fo, DeregistrationDelay: delay}
			})
			b := g.targets[1]
			port := g.portTo(t, b, protoUDP, 40000, 53)
			g.send(t, protoUDP, port, 53)
			old := b.last(t)

			began := time.Now()
			if err := g.sim.Deregister(netip.AddrPortFrom(b.addr().Addr(), 0)); err != nil {
				t.Fatal(err)
			}
			if err := g.sim.Deregister(b.addr()); err == nil || !strings.Contains(err.Error(), "draining") {
				t.Errorf("deregistering a draining target: %v, want an error naming its state", err)
			}
			if ts := g.target(t, b); ts.State != StateDraining || ts.Health != StateHealthy {
				t.Fatalf("deregistered target %+v: want draining", ts)
			}
			if ft := g.send(t, protoUDP, port, 53); ft != b {
				if time.Since(began) < delay {
					t.Fatalf("within the delay, the draining target's flow went to %v", ft)
				}
				t.Skip("the machine is too slow for the delay")
			}
			for p := uint16(41000); p < 41030; p++ {
				if ft := g.send(t, protoUDP, p, 53); ft == b {
					t.Fatalf("a new flow went to the draining target")
				}
			}
			g.waitState(t, map[*fakeTarget]TargetState{b: StateUnused})
			if d := time.Since(began); d < delay {
				t.Errorf("unused after %s, before the %s delay", d, delay)
			}
			f := g.flowOf(t, port)
			switch fo {
			case NoRebalance:
				if f.Target.IsValid() {
					t.Errorf("flow %+v after the delay: want dropped", f)
				}
				before := g.sim.Stats().FlowDropped
				if ft := g.send(t, protoUDP, port, 53); ft != nil {
					t.Errorf("a packet of a dropped flow reached %s", ft.addr())
				}
				if st := g.sim.Stats(); st.FlowDropped != before+1 {
					t.Errorf("stats %+v: want the packet counted as flow_dropped", st)
				}
			case Rebalance:
				ft := g.send(t, protoUDP, port, 53)
				if ft == nil || ft == b || f.Target != ft.addr() || f.Moves != 1 {
					t.Fatalf("flow %+v after the delay went to %v: want moved to another target", f, ft)
				}
				if ft.last(t).cookie == old.cookie {
					t.Errorf("moved under its old cookie")
				}
			}
			if ts := g.target(t, b); ts.Flows != 0 {
				t.Errorf("unused target still holds %d flows", ts.Flows)
			}

			// Registered again: it takes new flows (no health checks here:
			// healthy at once).
			if err := g.sim.Register(b.addr()); err != nil {
				t.Fatal(err)
			}
			if ts := g.target(t, b); ts.State != StateHealthy {
				t.Fatalf("registered again: %+v, want healthy", ts)
			}
			p := g.portTo(t, b, protoUDP, 45000, 53)
			if ft := g.send(t, protoUDP, p, 53); ft != b {
				t.Errorf("a new flow routed to the registered target went to %v", ft)
			}
		})
	}
}

// TestDeregisterWithoutDelay: a zero delay drops the flows at once, and
// with no target left, packets of new flows are dropped and counted.
func TestDeregisterWithoutDelay(t *testing.T) {
	g := newGroup(t, 107, 1, nil)
	g.send(t, protoUDP, 40000, 53)
	if err := g.sim.Deregister(g.targets[0].addr()); err != nil {
		t.Fatal(err)
	}
	if ts := g.target(t, g.targets[0]); ts.State != StateUnused {
		t.Fatalf("%+v, want unused at once", ts)
	}
	if ft := g.send(t, protoUDP, 40001, 53); ft != nil {
		t.Fatalf("a new flow reached %s with no registered target", ft.addr())
	}
	if st := g.sim.Stats(); st.NoTarget != 1 {
		t.Errorf("stats %+v: want one no_target", st)
	}
	if err := g.sim.Deregister(netip.MustParseAddrPort("127.0.0.9:6081")); err == nil {
		t.Error("deregistering an unknown target succeeded")
	}
	if err := g.sim.Register(netip.MustParseAddrPort("0.0.0.0:6081")); err == nil {
		t.Error("registering 0.0.0.0 succeeded")
	}
}

// TestRepliesOnlyFromTheFlowsTarget: a reply under the right header from
// another target's address is refused, and so is one from the flow's
// target but not from the port the flow is sent from (replies keep the
// outer ports); from the flow's target and port it is delivered.
func TestRepliesOnlyFromTheFlowsTarget(t *testing.T) {
	g := newGroup(t, 108, 2, nil)
	a, b := g.targets[0], g.targets[1]
	port := g.portTo(t, a, protoUDP, 40000, 53)
	g.send(t, protoUDP, port, 53)
	r := a.last(t)
	b.send(r.from.Port(), r.header, reflectPacket(r.inner))
	g.waitStats(t, "a reply from the wrong target", func(s Stats) bool { return s.WrongTarget == 1 })
	a.send(0, r.header, reflectPacket(r.inner)) // from a's GENEVE port
	g.waitStats(t, "a reply from the wrong source port", func(s Stats) bool { return s.WrongSourcePort == 1 })
	a.send(r.from.Port(), r.header, reflectPacket(r.inner))
	select {
	case <-g.replies:
	case <-time.After(2 * time.Second):
		t.Fatalf("the flow's target's reply was not delivered; stats %+v", g.sim.Stats())
	}
	if st := g.sim.Stats(); st.Received != 1 || st.WrongTarget != 1 || st.WrongSourcePort != 1 {
		t.Errorf("stats %+v", st)
	}
	if ts := g.target(t, a); ts.Replies != 1 {
		t.Errorf("target %+v: want one reply counted", ts)
	}
}

// TestIdleFlowsExpire: a flow without packets for its idle timeout is
// forgotten; its next packet is a new flow under a new cookie.
func TestIdleFlowsExpire(t *testing.T) {
	g := newGroup(t, 109, 1, func(c *Config, _ int) { c.IdleTimeout = 100 * time.Millisecond })
	ft := g.send(t, protoUDP, 40000, 53)
	cookie := ft.last(t).cookie
	tcp := g.send(t, protoTCP, 40001, 80) // TCP idles out after 350 s
	g.waitStats(t, "the UDP flow to expire", func(s Stats) bool { return s.FlowsExpired == 1 })
	if st := g.sim.Stats(); st.Flows != 1 {
		t.Errorf("stats %+v: want the TCP flow left", st)
	}
	if ts := g.target(t, ft); ts.Flows != 1 {
		t.Errorf("target %+v: want one flow left", ts)
	}
	if g.send(t, protoUDP, 40000, 53); ft.last(t).cookie == cookie {
		t.Errorf("the flow after its expiry kept cookie %08x", cookie)
	}
	_ = tcp
}

// TestHealthCheckRequests: checks are GETs of the path on the health port,
// from the simulator's address, one connection each, with the load
// balancer's User-Agent; an answer slower than the timeout fails.
func TestHealthCheckRequests(t *testing.T) {
	g := newGroup(t, 110, 1, func(c *Config, hp int) {
		c.HealthCheck = HealthCheck{Port: hp, Path: "/healthz?x=1", Interval: 100 * time.Millisecond, Timeout: 80 * time.Millisecond, UnhealthyThreshold: 2}
	})
	ft := g.targets[0]
	g.waitState(t, map[*fakeTarget]TargetState{ft: StateHealthy})
	ft.mu.Lock()
	r := ft.checks[0]
	ft.mu.Unlock()
	simAddr, _ := testNet(110)
	if r.Method != http.MethodGet || r.URL.Path != "/healthz" || r.URL.RawQuery != "x=1" || r.UserAgent() != healthUserAgent ||
		!strings.HasPrefix(r.RemoteAddr, simAddr.String()+":") || !r.Close {
		t.Errorf("health check %s %s from %s, UA %q, close %v: want GET /healthz?x=1 from %s, %s, Connection: close",
			r.Method, r.URL, r.RemoteAddr, r.UserAgent(), r.Close, simAddr, healthUserAgent)
	}
	ft.delay.Store(int64(time.Second))
	g.waitState(t, map[*fakeTarget]TargetState{ft: StateUnhealthy})
	if ts := g.target(t, ft); ts.Reason != "no answer within 80ms" {
		t.Errorf("reason %q: want a timeout", ts.Reason)
	}
}

// TestConfigErrors: what New refuses.
func TestConfigErrors(t *testing.T) {
	simAddr, tgt := testNet(111)
	a, b := netip.AddrPortFrom(tgt(0), 6081), netip.AddrPortFrom(tgt(1), 6081)
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no target", Config{Addr: simAddr}, "no target"},
		{"same address twice", Config{Addr: simAddr, Appliance: a, Targets: []netip.AddrPort{netip.AddrPortFrom(tgt(0), 7000)}}, "already a target"},
		{"IPv6 target", Config{Addr: simAddr, Targets: []netip.AddrPort{netip.MustParseAddrPort("[::1]:6081")}}, "IPv4"},
		{"stickiness", Config{Addr: simAddr, Targets: []netip.AddrPort{a}, Stickiness: "4-tuple"}, "stickiness"},
		{"failover", Config{Addr: simAddr, Targets: []netip.AddrPort{a}, Attributes: Attributes{OnUnhealthy: "sometimes"}}, "no_rebalance or rebalance"},
		{"mixed failover", Config{Addr: simAddr, Targets: []netip.AddrPort{a}, Attributes: Attributes{OnDeregistration: Rebalance}}, "requires both to be the same"},
		{"negative delay", Config{Addr: simAddr, Targets: []netip.AddrPort{a}, Attributes: Attributes{DeregistrationDelay: -time.Second}}, "negative"},
		{"timeout over interval", Config{Addr: simAddr, Targets: []netip.AddrPort{a, b}, HealthCheck: HealthCheck{Port: 80, Interval: time.Second, Timeout: 2 * time.Second}}, "at most the interval"},
		{"threshold", Config{Addr: simAddr, Targets: []netip.AddrPort{a}, HealthCheck: HealthCheck{Port: 80, HealthyThreshold: 11}}, "healthy threshold"},
		{"path", Config{Addr: simAddr, Targets: []netip.AddrPort{a}, HealthCheck: HealthCheck{Port: 80, Path: "healthz"}}, "path"},
		{"VNI over 24 bits", Config{Addr: simAddr, Targets: []netip.AddrPort{a}, VNI: 1 << 24}, "24 bits"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(tc.cfg)
			if err == nil {
				s.Close()
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want one mentioning %q", err, tc.want)
			}
		})
	}
	s, err := New(Config{Addr: simAddr, Targets: []netip.AddrPort{a}, HealthCheck: HealthCheck{Port: 80}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	want := HealthCheck{Port: 80, Path: "/", Interval: 10 * time.Second, Timeout: 5 * time.Second, HealthyThreshold: 5, UnhealthyThreshold: 2}
	if got := s.Config().HealthCheck; got != want {
		t.Errorf("health check defaults %+v, want the GWLB's %+v", got, want)
	}
	if s.Config().Stickiness != FiveTuple || s.Attributes().OnUnhealthy != NoRebalance || s.Attributes().OnDeregistration != NoRebalance {
		t.Errorf("defaults: %+v %+v", s.Config(), s.Attributes())
	}
}

// TestFlowHeaderFollowsStickiness: FlowHeader takes a 5-tuple key and
// finds the flow it belongs to.
func TestFlowHeaderFollowsStickiness(t *testing.T) {
	g := newGroup(t, 112, 1, func(c *Config, _ int) { c.Stickiness = ThreeTuple })
	ft := g.send(t, protoTCP, 40000, 80)
	p, reason := netstack.ParsePacket(ipPacket(protoTCP, netip.AddrPortFrom(testClient, 40123), netip.AddrPortFrom(testDest, 443), nil), netstack.EtherTypeIPv4)
	if reason != netstack.DropNone {
		t.Fatal(reason)
	}
	if h := g.sim.FlowHeader(p.Tuple(testEndpoint)); !bytes.Equal(h, ft.last(t).header) {
		t.Errorf("FlowHeader of another 5-tuple of the same 3-tuple: %x, want %x", h, ft.last(t).header)
	}
}

// TestLaterFragmentsFollowTheirFlow: under 5-tuple stickiness a later
// fragment, which carries no ports, goes to the target of the newest flow
// between the same addresses, not wherever its own portless key hashes.
func TestLaterFragmentsFollowTheirFlow(t *testing.T) {
	g := newGroup(t, 113, 3, nil)
	src, dst := netip.AddrPortFrom(testClient, 0), netip.AddrPortFrom(testDest, 0)
	portless, _, _ := g.sim.Route(testEndpoint, protoUDP, src, dst)
	var port uint16
	for p := uint16(40000); p < 41000; p++ {
		if to, _, _ := g.sim.Route(testEndpoint, protoUDP, netip.AddrPortFrom(testClient, p), netip.AddrPortFrom(testDest, 53)); to != portless {
			port = p
			break
		}
	}
	first := ipPacket(protoUDP, netip.AddrPortFrom(testClient, port), netip.AddrPortFrom(testDest, 53), make([]byte, 16))
	binary.BigEndian.PutUint16(first[4:], 0x1234) // IP ID
	binary.BigEndian.PutUint16(first[6:], 0x2000) // more fragments, offset 0
	first[10], first[11] = 0, 0
	binary.BigEndian.PutUint16(first[10:], ipChecksum(first[:20]))
	later := ipPacket(protoUDP, src, dst, nil)[:20]
	later = append(later, make([]byte, 8)...)
	binary.BigEndian.PutUint16(later[2:], uint16(len(later)))
	binary.BigEndian.PutUint16(later[4:], 0x1234)
	binary.BigEndian.PutUint16(later[6:], 3) // offset 24 bytes, last fragment
	later[10], later[11] = 0, 0
	binary.BigEndian.PutUint16(later[10:], ipChecksum(later[:20]))
	if p, reason := netstack.ParsePacket(later, netstack.EtherTypeIPv4); reason != netstack.DropNone || !p.Fragment {
		t.Fatalf("the later fragment parses as %+v, %v", p, reason)
	}

	send := func(pkt []byte) *fakeTarget {
		t.Helper()
		before := make([]int, len(g.targets))
		for i, ft := range g.targets {
			before[i] = len(ft.received())
		}
		if err := g.ep.Send(pkt); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			for i, ft := range g.targets {
				if len(ft.received()) > before[i] {
					return ft
				}
			}
		}
		return nil
	}
	owner := send(first)
	if owner == nil || owner.addr() == portless {
		t.Fatalf("the first fragment went to %v; the portless key hashes to %s", owner, portless)
	}
	if got := send(later); got != owner {
		t.Errorf("the later fragment went to %v, want %s with its first fragment", got, owner.addr())
	}
}
