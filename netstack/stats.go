package netstack

import (
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip"
)

type counters struct {
	packetsIn, bytesIn   atomic.Uint64
	readErrors           atomic.Uint64
	packetsOut, bytesOut atomic.Uint64
	drops                [dropReasons]atomic.Uint64
	returnFallbacks      atomic.Uint64
	tcpAttempts          atomic.Uint64
	tcpSetupsRefused     atomic.Uint64
	udpFlows             atomic.Uint64
	echoRequests         atomic.Uint64
	stacksCreated        atomic.Uint64
	stacksClosed         atomic.Uint64
	memoryReclaimed      atomic.Uint64
	tapWithheld          atomic.Uint64
	lastSendError        atomic.Value // string
	// synsPastInFlight is every stack's Stats().TCP.ForwardMaxInFlightDrop
	// (newGVisorStack), one counter for all, so that it outlives the
	// stacks: shown as the drop reason tcp_setups_full.
	synsPastInFlight tcpip.StatCounter
}

func (c *counters) drop(r DropReason) { c.drops[r].Add(1) }

// Stats is a snapshot of the server's counters, as /stats shows it.
type Stats struct {
	PacketsIn    uint64            `json:"packets_in"`
	BytesIn      uint64            `json:"bytes_in"`
	PacketsOut   uint64            `json:"packets_out"`
	BytesOut     uint64            `json:"bytes_out"`
	Drops        map[string]uint64 `json:"drops"`
	Flows        int               `json:"flows"`
	FlowsCreated uint64            `json:"flows_created"`
	FlowsExpired uint64            `json:"flows_expired"`
	// FlowsEvicted counts evictable flows (TCP not live, others never
	// answered) taken out of a full table to make room for new ones.
	FlowsEvicted    uint64           `json:"flows_evicted"`
	FlowsByEndpoint map[string]int64 `json:"flows_by_endpoint"`
	Stacks          int64            `json:"stacks"`
	StacksCreated   uint64           `json:"stacks_created"`
	StacksClosed    uint64           `json:"stacks_closed"`
	TCPConnections  uint64           `json:"tcp_connection_attempts"`
	// TCPSetupsRefused counts connection attempts refused with a RST
	// because their stack's slots for connections being set up ran short
	// and their client held its fair share of them (setups.go).
	TCPSetupsRefused    uint64 `json:"tcp_setups_refused"`
	UDPFlows            uint64 `json:"udp_flows"`
	EchoRequests        uint64 `json:"echo_requests"`
	ReturnPath          string `json:"return_path"`
	ReturnPortFallbacks uint64 `json:"return_port_fallbacks"`
	LastSendError       string `json:"last_send_error,omitempty"`
	// ReadErrors counts the GENEVE sockets' failed reads (each retried,
	// after a wait that grows while they go on failing).
	ReadErrors uint64 `json:"read_errors"`
	// AcksDelayed counts the pure ACKs held for a reply to carry,
	// AcksCarried those of them a reply carried, so they never left, and
	// AcksReplaced those a later ACK of their flow took the place of.
	AcksDelayed  uint64 `json:"acks_delayed"`
	AcksCarried  uint64 `json:"acks_carried"`
	AcksReplaced uint64 `json:"acks_replaced"`
	// MemoryPressure is how short of memory new flows are admitted by:
	// ample, short or critical (MemoryPressure).
	MemoryPressure string `json:"memory_pressure"`
	// MemoryReclaimed counts the TCP connections reset while memory was
	// critical because their client's connections could hold the most
	// bytes (reclaim.go).
	MemoryReclaimed uint64 `json:"memory_reclaimed"`
	// TapWithheld counts client TCP segments with data that went to their
	// stack but not to the tap, as no connection of the stack's could take
	// them (server.go, tapWithholds).
	TapWithheld uint64 `json:"tap_withheld"`
}

// Carried is the bytes of GENEVE datagrams taken in and sent out so far: a
// measure of the work done, cheap enough to read ten times a second.
func (s *Server) Carried() uint64 {
	return s.stats.bytesIn.Load() + s.stats.bytesOut.Load()
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	c := &s.stats
	st := Stats{
		PacketsIn:           c.packetsIn.Load(),
		BytesIn:             c.bytesIn.Load(),
		PacketsOut:          c.packetsOut.Load(),
		BytesOut:            c.bytesOut.Load(),
		Drops:               make(map[string]uint64),
		Flows:               s.flows.Len(),
		FlowsCreated:        s.flows.created.Load(),
		FlowsExpired:        s.flows.expired.Load(),
		FlowsEvicted:        s.flows.evicted.Load(),
		FlowsByEndpoint:     make(map[string]int64),
		Stacks:              s.nstacks.Load(),
		StacksCreated:       c.stacksCreated.Load(),
		StacksClosed:        c.stacksClosed.Load(),
		TCPConnections:      c.tcpAttempts.Load(),
		TCPSetupsRefused:    c.tcpSetupsRefused.Load(),
		UDPFlows:            c.udpFlows.Load(),
		EchoRequests:        c.echoRequests.Load(),
		ReturnPath:          s.ret.name(),
		MemoryPressure:      MemoryPressure(s.flows.pressure.Load()).String(),
		MemoryReclaimed:     c.memoryReclaimed.Load(),
		TapWithheld:         c.tapWithheld.Load(),
		AcksDelayed:         s.acks.held.Load(),
		AcksCarried:         s.acks.carried.Load(),
		AcksReplaced:        s.acks.replaced.Load(),
		ReturnPortFallbacks: c.returnFallbacks.Load(),
		ReadErrors:          c.readErrors.Load(),
	}
	for r := DropReason(1); r < dropReasons; r++ {
		st.Drops[r.String()] = c.drops[r].Load()
	}
	st.Drops[DropTCPSetupsFull.String()] += c.synsPastInFlight.Value()
	for ep, n := range s.flows.PerEndpoint() {
		st.FlowsByEndpoint[FlowInfo{Endpoint: ep}.EndpointName()] = n
	}
	if e, ok := c.lastSendError.Load().(string); ok {
		st.LastSendError = e
	}
	return st
}
