package netstack

import (
	"log/slog"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/monoclock"
)

// The life of a GWLB endpoint's stack: made on the endpoint's first packet,
// within --max-endpoints, entered read-locked by the readers, and closed
// and forgotten once idle, so forged endpoint IDs cannot pile stacks up.

// enterStack returns the open stack of endpoint, read-locked: it stays
// open until the caller's st.mu.RUnlock. Without one, create makes it,
// unless the endpoint cap is reached (DropEndpointLimit) or the server is
// closing (nil and DropNone); without create it returns nil and
// DropFragmentNoFlow.
func (s *Server) enterStack(endpoint uint64, create bool, noStack DropReason) (*endpointStack, DropReason) {
	for {
		v, ok := s.stacks.Load(endpoint)
		if !ok {
			if !create {
				return nil, noStack
			}
			var reason DropReason
			if v, reason = s.newStack(endpoint); v == nil {
				return nil, reason
			}
		}
		st := v.(*endpointStack)
		st.mu.RLock()
		if !st.closed {
			return st, DropNone
		}
		// Closed after the lookup, and gone from the map: look again.
		st.mu.RUnlock()
	}
}

// newStack returns the endpoint's stack, making it if there is none and the
// endpoint cap allows another.
func (s *Server) newStack(endpoint uint64) (any, DropReason) {
	s.stackMu.Lock()
	defer s.stackMu.Unlock()
	if s.shut {
		return nil, DropNone
	}
	if st, ok := s.stacks.Load(endpoint); ok {
		return st, DropNone
	}
	if s.nstacks.Load() >= int64(s.cfg.MaxEndpoints) {
		s.warnEndpointCap()
		return nil, DropEndpointLimit
	}
	st := newEndpointStack(s, endpoint)
	st.lastPacket.Store(monoclock.Now())
	s.stacks.Store(endpoint, st)
	s.nstacks.Add(1)
	s.stats.stacksCreated.Add(1)
	slog.Info("new GWLB endpoint", "endpoint", FlowInfo{Endpoint: endpoint}.EndpointName(), "stacks", s.nstacks.Load())
	return st, DropNone
}

// warnEndpointCap logs, at most once a minute, that new endpoints are
// refused.
func (s *Server) warnEndpointCap() {
	now := monoclock.Now()
	last := s.capWarned.Load()
	if now-last < int64(time.Minute) || !s.capWarned.CompareAndSwap(last, now) {
		return
	}
	slog.Warn("GWLB endpoint cap reached: datagrams for new endpoints are dropped (endpoint_limit)",
		"max_endpoints", s.cfg.MaxEndpoints)
}

// forgetStack takes st out of the server: it must hold st.mu and st must
// not be closed yet.
func (s *Server) forgetStack(st *endpointStack) {
	st.closed = true
	s.stacks.CompareAndDelete(st.endpoint, st)
	s.nstacks.Add(-1)
}

// closeIdleStacks closes the stacks of endpoints that have had no flow in
// the table and no packet for EndpointIdleTimeout, and frees them: their
// goroutines end and their memory goes. A stack busy with a packet just
// now is left for the next round.
func (s *Server) closeIdleStacks(now int64) int {
	idle := int64(s.cfg.EndpointIdleTimeout)
	var idleStacks []*endpointStack
	s.stacks.Range(func(_, v any) bool {
		st := v.(*endpointStack)
		if now-st.lastPacket.Load() < idle || s.flows.EndpointFlows(st.endpoint) > 0 || !st.mu.TryLock() {
			return true
		}
		// Under the lock no packet is being handed in, so no flow of the
		// endpoint is being made: check again, then close.
		if !st.closed && now-st.lastPacket.Load() >= idle && s.flows.EndpointFlows(st.endpoint) == 0 {
			// The endpoint's count goes while the stack is still in the
			// map: a reader then finds it and waits on its lock. Once it
			// is gone from the map, a reader makes the endpoint a new
			// stack and counts flows under that stack's lock, not this
			// one: forgetting the count then could drop a count just
			// taken, or leave a flow counted on a counter no longer in
			// the table, and the endpoint's count would be wrong for
			// good (a stack that never closes, or one closed under a
			// flow).
			s.flows.ForgetEndpoint(st.endpoint)
			s.forgetStack(st)
			idleStacks = append(idleStacks, st)
		}
		st.mu.Unlock()
		return true
	})
	for _, st := range idleStacks {
		// Nothing of the endpoint is in the flow table: whatever the stack
		// would still send (resets of what it aborts) has no flow to go
		// under.
		st.link.closed.Store(true)
		st.destroy()
		s.stats.stacksClosed.Add(1)
		slog.Info("GWLB endpoint idle: its stack is closed", "endpoint", FlowInfo{Endpoint: st.endpoint}.EndpointName(),
			"stacks", s.nstacks.Load())
	}
	return len(idleStacks)
}
