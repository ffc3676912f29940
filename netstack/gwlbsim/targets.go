package gwlbsim

// The target group: registration, the choice of a target for a new flow,
// deregistration and target failover, and what /stats and /flows show.
//
// The model follows the GWLB documentation (target groups, health checks,
// target group attributes):
//
//   - A new flow goes to a healthy registered target, chosen by a hash of
//     its stickiness tuple (rendezvous hashing: a target leaving moves only
//     its own flows' hashes). When no registered target is healthy the
//     group fails open: new flows go to every registered target, whatever
//     its health. Draining and unused targets get no new flow.
//   - An existing flow stays on its target, whatever the target's health
//     (no_rebalance), unless on_unhealthy is rebalance: when its target turns
//     unhealthy it is rehashed onto a healthy target, under a new flow
//     cookie (it stays where it is while no target is healthy).
//   - Deregistration makes a target draining at once (no new flows); its
//     flows stay for the deregistration delay. When the delay ends the
//     target is unused: its flows are dropped (no_rebalance: their packets
//     are dropped until they idle out) or rehashed onto a registered target
//     under new flow cookies (rebalance).

import (
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// Stickiness is the tuple that defines a flow.
type Stickiness string

// The GWLB's flow stickiness options. The target group attribute
// stickiness.type names the last two source_ip_dest_ip_proto and
// source_ip_dest_ip; ParseStickiness accepts those too.
const (
	FiveTuple  Stickiness = "5-tuple" // source and destination address and port, protocol (the default)
	ThreeTuple Stickiness = "3-tuple" // source and destination address, protocol
	TwoTuple   Stickiness = "2-tuple" // source and destination address
)

// ParseStickiness reads a stickiness option ("" is the default, 5-tuple).
func ParseStickiness(s string) (Stickiness, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "5-tuple", "5", "five_tuple":
		return FiveTuple, nil
	case "3-tuple", "3", "three_tuple", "source_ip_dest_ip_proto":
		return ThreeTuple, nil
	case "2-tuple", "2", "two_tuple", "source_ip_dest_ip":
		return TwoTuple, nil
	}
	return "", fmt.Errorf("gwlbsim: stickiness %q: want 5-tuple, 3-tuple or 2-tuple", s)
}

// key narrows a 5-tuple flow key to the stickiness tuple. Keys are in
// canonical order (a packet and its reply share one), and ordered by
// address first, so dropping the ports keeps that.
func (st Stickiness) key(k netstack.TupleKey) netstack.TupleKey {
	switch st {
	case ThreeTuple:
		k.LoPort, k.HiPort = 0, 0
	case TwoTuple:
		k.LoPort, k.HiPort, k.Proto = 0, 0, 0
	}
	return k
}

// Failover is what happens to a target's existing flows when it turns
// unhealthy or is deregistered (target_failover.on_unhealthy and
// target_failover.on_deregistration).
type Failover string

// The failover settings.
const (
	NoRebalance Failover = "no_rebalance" // existing flows stay on their target (the default)
	Rebalance   Failover = "rebalance"    // existing flows are rehashed onto a healthy target, with a new flow cookie
)

// ParseFailover reads a failover setting ("" is no_rebalance).
func ParseFailover(s string) (Failover, error) {
	switch Failover(strings.ToLower(strings.TrimSpace(s))) {
	case "", NoRebalance:
		return NoRebalance, nil
	case Rebalance:
		return Rebalance, nil
	}
	return "", fmt.Errorf("gwlbsim: target failover %q: want no_rebalance or rebalance", s)
}

// Attributes are the target group's attributes the simulator honours.
type Attributes struct {
	OnUnhealthy      Failover
	OnDeregistration Failover
	// DeregistrationDelay is how long a deregistered target keeps its
	// existing flows (the GWLB's default is 300 s; zero: none).
	DeregistrationDelay time.Duration
}

func (a *Attributes) normalize() error {
	var err1, err2 error
	a.OnUnhealthy, err1 = ParseFailover(string(a.OnUnhealthy))
	a.OnDeregistration, err2 = ParseFailover(string(a.OnDeregistration))
	if err := errors.Join(err1, err2); err != nil {
		return err
	}
	// The GWLB refuses a target group whose two target_failover
	// attributes differ (ValidationError); a simulator that took them
	// would let a test rely on a setting no real target group can have.
	if a.OnUnhealthy != a.OnDeregistration {
		return fmt.Errorf("gwlbsim: target failover on_deregistration %s with on_unhealthy %s: the GWLB requires both to be the same", a.OnDeregistration, a.OnUnhealthy)
	}
	if a.DeregistrationDelay < 0 {
		return fmt.Errorf("gwlbsim: deregistration delay %s: must not be negative", a.DeregistrationDelay)
	}
	return nil
}

// TargetState is a target's state as the GWLB reports it (TargetHealth).
type TargetState string

// The target states.
const (
	StateInitial   TargetState = "initial"   // registered, no health check passed or failed enough yet
	StateHealthy   TargetState = "healthy"   // gets new flows
	StateUnhealthy TargetState = "unhealthy" // gets new flows only when no target is healthy (fail-open)
	StateDraining  TargetState = "draining"  // deregistered, within the deregistration delay
	StateUnused    TargetState = "unused"    // deregistered: no flows at all
)

// Errors of Register and Deregister.
var (
	ErrUnknownTarget = errors.New("gwlbsim: no such target")
	ErrTargetState   = errors.New("gwlbsim: target is not in a state that allows this")
)

type registration uint8

const (
	registered registration = iota
	draining
	unused
)

// target is one appliance of the group. Its fields but the atomics are
// guarded by Sim.mu.
type target struct {
	addr          netip.AddrPort
	reg           registration
	run           healthRun
	lastErr       string
	lastChange    time.Time
	drainingSince time.Time
	drainTimer    *time.Timer
	stopChecks    func()
	checkGen      uint64
	flows         int
	flowsTotal    uint64
	rebalancedIn  uint64
	rebalancedOut uint64

	packets, replies, checks, checksFailed atomic.Uint64
}

func (t *target) state() TargetState {
	switch t.reg {
	case draining:
		return StateDraining
	case unused:
		return StateUnused
	}
	return t.run.state
}

// addTarget adds a registered target; health checks start separately.
func (s *Sim) addTarget(a netip.AddrPort) (*target, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addTargetLocked(a)
}

func (s *Sim) addTargetLocked(a netip.AddrPort) (*target, error) {
	a = netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
	if !a.Addr().Is4() || a.Addr().IsUnspecified() || a.Port() == 0 {
		return nil, fmt.Errorf("gwlbsim: target %s: want a unicast IPv4 address and a port", a)
	}
	for _, t := range s.targets {
		if t.addr.Addr() == a.Addr() {
			// Replies are told apart by their source address alone.
			return nil, fmt.Errorf("gwlbsim: target %s: the address is already a target's (%s)", a, t.addr)
		}
	}
	t := &target{addr: a, lastChange: time.Now()}
	t.run.reset(s.health != nil)
	s.targets = append(s.targets, t)
	return t, nil
}

// findLocked returns the target with GENEVE address a, or, when a has no
// port, the target with a's address.
func (s *Sim) findLocked(a netip.AddrPort) *target {
	a = netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
	for _, t := range s.targets {
		if t.addr == a || (a.Port() == 0 && t.addr.Addr() == a.Addr()) {
			return t
		}
	}
	return nil
}

// rendezvous is what a target's score for a flow is the hash of.
type rendezvous struct {
	key  netstack.TupleKey
	addr [16]byte
	port uint16
}

// pickLocked chooses the target of a new flow (or of a rebalanced one,
// excluding the target it leaves): the highest-scoring healthy registered
// target; when there is none and failOpen, the highest-scoring registered
// one whatever its health; else nil.
func (s *Sim) pickLocked(k netstack.TupleKey, exclude *target, failOpen bool) *target {
	for _, healthyOnly := range []bool{true, false} {
		if !healthyOnly && !failOpen {
			break
		}
		var best *target
		var bestScore uint64
		for _, t := range s.targets {
			if t == exclude || t.reg != registered || (healthyOnly && t.run.state != StateHealthy) {
				continue
			}
			score := maphash.Comparable(s.seed, rendezvous{key: k, addr: t.addr.Addr().As16(), port: t.addr.Port()})
			if best == nil || score > bestScore {
				best, bestScore = t, score
			}
		}
		if best != nil {
			return best
		}
	}
	return nil
}

// moveLocked puts flow f on target nt (nil: drops it) under a new cookie.
func (s *Sim) moveLocked(f *simFlow, nt *target) {
	old := f.route.Load()
	if old.target != nil {
		old.target.flows--
	}
	if nt == nil {
		f.route.Store(&flowRoute{header: old.header, cookie: old.cookie})
		return
	}
	f.route.Store(s.newRoute(f, nt, old.cookie))
	nt.flows++
	nt.flowsTotal++
	nt.rebalancedIn++
	if old.target != nil {
		old.target.rebalancedOut++
	}
	f.moves++
	s.rebalanced.Add(1)
}

// onUnhealthyLocked applies on_unhealthy to the flows of t, which has just
// turned unhealthy: with rebalance, each moves to a healthy target, if
// there is one.
func (s *Sim) onUnhealthyLocked(t *target) {
	if s.attrs.OnUnhealthy != Rebalance {
		return
	}
	moved := 0
	for _, f := range s.flows {
		if f.route.Load().target != t {
			continue
		}
		if nt := s.pickLocked(f.key, t, false); nt != nil {
			s.moveLocked(f, nt)
			moved++
		}
	}
	if moved > 0 {
		slog.Info("gwlbsim: flows of an unhealthy target rebalanced", "target", t.addr, "flows", moved)
	}
}

// Register registers a target: a new one, or one deregistered before
// (unused). It starts in state initial, or healthy without health checks.
// A port of 0 names an existing target by its address, or a new one on
// port 6081.
func (s *Sim) Register(a netip.AddrPort) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return errors.New("gwlbsim: closed")
	}
	t := s.findLocked(a)
	switch {
	case t == nil:
		if a.Port() == 0 {
			a = netip.AddrPortFrom(a.Addr(), netstack.GenevePort)
		}
		var err error
		if t, err = s.addTargetLocked(a); err != nil {
			return err
		}
	case t.reg != unused:
		return fmt.Errorf("%w: %s is %s", ErrTargetState, t.addr, t.state())
	default:
		t.reg = registered
		t.run.reset(s.health != nil)
		t.lastChange, t.drainingSince, t.lastErr = time.Now(), time.Time{}, ""
	}
	slog.Info("gwlbsim: target registered", "target", t.addr, "state", t.state())
	s.startChecksLocked(t)
	return nil
}

// Deregister deregisters a target: it gets no new flow from now on, and
// its existing flows stay for the deregistration delay, after which they
// are dropped or rebalanced (on_deregistration). A port of 0 names the
// target by its address.
func (s *Sim) Deregister(a netip.AddrPort) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.findLocked(a)
	if t == nil {
		return fmt.Errorf("%w: %s", ErrUnknownTarget, a)
	}
	if t.reg != registered {
		return fmt.Errorf("%w: %s is already %s", ErrTargetState, t.addr, t.state())
	}
	t.reg = draining
	t.drainingSince = time.Now()
	t.lastChange = t.drainingSince
	delay := s.attrs.DeregistrationDelay
	slog.Info("gwlbsim: target draining", "target", t.addr, "flows", t.flows, "deregistration_delay", delay)
	if delay <= 0 {
		s.completeDeregistrationLocked(t)
		return nil
	}
	t.drainTimer = time.AfterFunc(delay, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if t.reg == draining && !s.closed.Load() {
			s.completeDeregistrationLocked(t)
		}
	})
	return nil
}

// completeDeregistrationLocked ends a target's deregistration delay: it
// becomes unused, its health checks stop, and its flows are dropped or
// rebalanced.
func (s *Sim) completeDeregistrationLocked(t *target) {
	t.reg = unused
	t.lastChange = time.Now()
	t.drainTimer = nil
	s.stopChecksLocked(t)
	moved, dropped := 0, 0
	for _, f := range s.flows {
		if f.route.Load().target != t {
			continue
		}
		var nt *target
		if s.attrs.OnDeregistration == Rebalance {
			nt = s.pickLocked(f.key, t, true)
		}
		s.moveLocked(f, nt)
		if nt != nil {
			moved++
		} else {
			dropped++
		}
	}
	slog.Info("gwlbsim: target deregistered", "target", t.addr, "flows_rebalanced", moved, "flows_dropped", dropped)
}

// Attributes returns the target group's attributes.
func (s *Sim) Attributes() Attributes {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.attrs
}

// SetAttributes changes the target group's attributes, as
// modify-target-group-attributes does. They apply from now on: a
// deregistration under way keeps the delay it started with.
func (s *Sim) SetAttributes(a Attributes) error {
	if err := a.normalize(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.attrs = a
	return nil
}

// TargetStats is one target as /stats shows it.
type TargetStats struct {
	Addr  netip.AddrPort `json:"addr"`
	State TargetState    `json:"state"` // as the GWLB reports it
	// Health is the health checks' verdict, which goes on while draining.
	Health            TargetState `json:"health"`
	Reason            string      `json:"reason,omitempty"` // the last failed check's error
	ConsecutiveOK     int         `json:"consecutive_ok"`
	ConsecutiveFailed int         `json:"consecutive_failed"`
	Checks            uint64      `json:"checks"`
	ChecksFailed      uint64      `json:"checks_failed"`
	LastChange        time.Time   `json:"last_change"`
	DrainingSince     time.Time   `json:"draining_since,omitzero"`
	Flows             int         `json:"flows"`          // flows on the target now
	FlowsTotal        uint64      `json:"flows_total"`    // flows ever given to it, rebalanced ones included
	RebalancedIn      uint64      `json:"rebalanced_in"`  // flows moved onto it
	RebalancedOut     uint64      `json:"rebalanced_out"` // flows moved off it
	Packets           uint64      `json:"packets"`        // datagrams sent to it
	Replies           uint64      `json:"replies"`        // replies from it accepted
}

// Targets returns the target group's targets, in registration order.
func (s *Sim) Targets() []TargetStats {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]TargetStats, 0, len(s.targets))
	for _, t := range s.targets {
		out = append(out, TargetStats{
			Addr: t.addr, State: t.state(), Health: t.run.state, Reason: t.lastErr,
			ConsecutiveOK: t.run.ok, ConsecutiveFailed: t.run.fail,
			Checks: t.checks.Load(), ChecksFailed: t.checksFailed.Load(),
			LastChange: t.lastChange, DrainingSince: t.drainingSince,
			Flows: t.flows, FlowsTotal: t.flowsTotal, RebalancedIn: t.rebalancedIn, RebalancedOut: t.rebalancedOut,
			Packets: t.packets.Load(), Replies: t.replies.Load(),
		})
	}
	return out
}

// FlowInfo is one flow as /flows shows it.
type FlowInfo struct {
	Endpoint string         `json:"endpoint"`
	Proto    string         `json:"proto"`
	Src      netip.AddrPort `json:"src"` // the first packet's source: the client
	Dst      netip.AddrPort `json:"dst"`
	Target   netip.AddrPort `json:"target,omitzero"` // unset: dropped (its target left)
	Cookie   string         `json:"cookie"`
	Moves    int            `json:"rebalanced"` // times moved to another target
	Created  time.Time      `json:"created"`    // when its first packet arrived
	IdleMS   int64          `json:"idle_ms"`
}

// Flows returns every flow in the table, ordered by source and destination.
func (s *Sim) Flows() []FlowInfo {
	now := time.Now().UnixNano()
	s.mu.RLock()
	out := make([]FlowInfo, 0, len(s.flows))
	for _, f := range s.flows {
		r := f.route.Load()
		fi := FlowInfo{
			Endpoint: netstack.FlowInfo{Endpoint: f.ep.id}.EndpointName(), Proto: protoName(f.proto),
			Src: f.src, Dst: f.dst, Cookie: fmt.Sprintf("%08x", r.cookie), Moves: f.moves, Created: f.created,
			IdleMS: (now - f.last.Load()) / int64(time.Millisecond),
		}
		if r.target != nil {
			fi.Target = r.target.addr
		}
		out = append(out, fi)
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b FlowInfo) int {
		if c := a.Src.Compare(b.Src); c != 0 {
			return c
		}
		if c := a.Dst.Compare(b.Dst); c != 0 {
			return c
		}
		return strings.Compare(a.Proto, b.Proto)
	})
	return out
}

// Route reports the target a packet from src to dst (protocol proto,
// through endpoint ep) goes to now: its flow's, or, for a new flow, the
// one the GWLB would choose. ok is false when it would be dropped.
func (s *Sim) Route(ep uint64, proto uint8, src, dst netip.AddrPort) (to netip.AddrPort, existing, ok bool) {
	p := netstack.Packet{
		IPv6: src.Addr().Is6() && !src.Addr().Is4In6(), Proto: proto,
		Src: src.Addr().As16(), Dst: dst.Addr().As16(), SrcPort: src.Port(), DstPort: dst.Port(),
	}
	k := s.flowKey(p.Tuple(ep))
	s.mu.RLock()
	defer s.mu.RUnlock()
	if f := s.flows[k]; f != nil {
		if t := f.route.Load().target; t != nil {
			return t.addr, true, true
		}
		return netip.AddrPort{}, true, false
	}
	if t := s.pickLocked(k, nil, true); t != nil {
		return t.addr, false, true
	}
	return netip.AddrPort{}, false, false
}

func protoName(p uint8) string {
	switch p {
	case protoTCP:
		return "tcp"
	case protoUDP:
		return "udp"
	case protoICMP:
		return "icmp"
	case protoICMPv6:
		return "icmpv6"
	case 0:
		return "any" // 2-tuple stickiness: the flow is every protocol's
	}
	return fmt.Sprint(p)
}
