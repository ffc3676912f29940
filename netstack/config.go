package netstack

import (
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"time"
)

// Config configures a Server. The zero value of every field but Handler
// selects the documented default.
type Config struct {
	// ListenAddr is the UDP address GENEVE arrives on (default ":6081").
	ListenAddr string
	// Readers is the number of sockets and goroutines reading GENEVE, bound
	// with SO_REUSEPORT so the kernel spreads flows over them (default: one
	// per CPU).
	Readers int
	// ReplyPort is the GWLB's GENEVE port replies go to (default 6081).
	ReplyPort uint16
	// ReturnPath is auto (raw if permitted, else bound), raw or bound.
	ReturnPath string
	// TCPIdleTimeout and IdleTimeout expire flows without packets (default
	// 350 s and 120 s, the GWLB's own).
	TCPIdleTimeout time.Duration
	IdleTimeout    time.Duration
	// TransitoryTimeout expires, sooner, the flows of TCP connections
	// that are not established (a SYN not answered or not completed, a
	// segment the stack refused, a connection reset or closed both ways),
	// and other flows the stack has sent nothing on yet (default
	// DefaultTransitoryTimeout; at most the flows' own idle timeouts).
	TransitoryTimeout time.Duration
	// MaxFlows caps the flow table (default 1,000,000). A new flow in a
	// full table takes the place of an evictable one, its own client's
	// first, else the client's holding the most (flowevict.go).
	MaxFlows int
	// MaxFlowsPerClient caps the flows of one client (inner source address
	// behind one endpoint) (default: a tenth of MaxFlows; MaxFlows or
	// more: no cap of its own). It bounds what one address holds; that an
	// instance with many addresses cannot lock the others out of a full
	// table is eviction's doing.
	MaxFlowsPerClient int
	// MaxEndpoints caps the GWLB endpoints served at once, each with a
	// gVisor stack of its own (default DefaultMaxEndpoints). A datagram for
	// a new endpoint beyond it is dropped and counted (endpoint_limit).
	MaxEndpoints int
	// EndpointIdleTimeout closes the stack of an endpoint that has had no
	// flow in the table and no packet for this long, freeing its memory
	// and goroutines; the endpoint's next packet makes a new one (default
	// DefaultEndpointIdleTimeout). A stack with flows is never closed: its
	// flows expire first, after their own idle timeouts.
	EndpointIdleTimeout time.Duration
	// MTU is the inner MTU (default DefaultMTU).
	MTU int
	// TCP tunes the stacks' TCP.
	TCP TCPOptions
	// AckDelay is how long a pure ACK of a flow that answers quickly may
	// wait for a reply to carry it (delayack.go); 0 sends every ACK at once.
	AckDelay time.Duration
	// AllowLoopback lets the stacks accept inner packets to or from
	// loopback addresses. Only in-process tests want this.
	AllowLoopback bool
	// Senders, when set, are the only outer source addresses GENEVE is
	// accepted from: the GWLB's. Anything else could forge endpoints and
	// flows (a client reaching this port through a peer appliance, say).
	// nil accepts every sender, for in-process tests; the appliance never
	// passes nil or an empty list, and spells "every sender" out as
	// 0.0.0.0/0 and ::/0.
	Senders []netip.Prefix
	// Handler receives every accepted flow.
	Handler Handler
	// Tap, when set, sees every inner packet received from the GWLB and
	// taken in for a stack, and every one sent back to it (package
	// capture: pcap files, a mirror device).
	Tap Tap
	// NewStacksAtFullProcs, when set, wraps the making of each endpoint's
	// stack: gVisor gives every stack one TCP processor goroutine per
	// GOMAXPROCS at that moment, so a process that lowers GOMAXPROCS while
	// idle (package procs) raises it here for the stack to fit the machine.
	NewStacksAtFullProcs func(newStack func())
}

// Tap sees the inner packets on the packet path. Packet is called for each
// inner packet received from the GWLB that the flow table takes in (out
// false: after the flow and fragment tables, before the stack and the
// policy decide on it; a packet dropped before the stack, counted in the
// drops, is not shown: an IDS shown it would rebuild bytes no one
// received) and each one sent back to it (out true: as it is handed to the
// return path, before the send, so that it comes before the client's
// answer to it; a send that then fails is counted as send_error), with its
// GWLB endpoint, the flow cookie of its GENEVE header, the time (unix
// nanoseconds), and what ParsePacket found. It is called
// from many goroutines at once, must not block, and must not keep pkt.
type Tap interface {
	Packet(endpoint uint64, cookie uint32, out bool, now int64, p Packet, pkt []byte)
}

// DefaultMaxEndpoints is the default of Config.MaxEndpoints. A GWLB
// endpoint service has at most one endpoint per Availability Zone of each
// consumer VPC, so real deployments serve tens of endpoints, a few hundred
// at most. An idle stack costs about 100 KiB and a goroutine per CPU
// (gVisor's TCP processors), so 1,024 of them stay around 100 MiB and
// 1,024 goroutines per CPU, while forged endpoint IDs can no longer grow
// memory without bound.
const DefaultMaxEndpoints = 1024

// DefaultEndpointIdleTimeout is the default of Config.EndpointIdleTimeout.
// It matters for stacks that never held a flow (their packets were dropped:
// a full flow table, a client at its share): an endpoint with traffic
// keeps flows, and once its last flow expires it has been idle for at least
// the flow idle timeout already.
const DefaultEndpointIdleTimeout = 30 * time.Second

// DefaultTransitoryTimeout is how long a TCP flow that is not established,
// or another flow never replied to, lives without a packet. It outlasts a
// dial to a slow destination (the stack answers a SYN once the dial is
// done), the gaps between a client's first SYN retransmissions (1, 2, 4, 8
// and 16 s), and the wait for a UDP answer.
const DefaultTransitoryTimeout = 30 * time.Second

func (c *Config) setDefaults() {
	if c.ListenAddr == "" {
		c.ListenAddr = fmt.Sprintf(":%d", GenevePort)
	}
	if c.Readers <= 0 {
		c.Readers = runtime.NumCPU()
	}
	if c.ReplyPort == 0 {
		c.ReplyPort = GenevePort
	}
	if c.TCPIdleTimeout <= 0 {
		c.TCPIdleTimeout = 350 * time.Second
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 120 * time.Second
	}
	if c.TransitoryTimeout <= 0 {
		c.TransitoryTimeout = DefaultTransitoryTimeout
	}
	c.TransitoryTimeout = min(c.TransitoryTimeout, c.TCPIdleTimeout)
	if c.MaxFlows <= 0 {
		c.MaxFlows = 1_000_000
	}
	if c.MaxFlowsPerClient <= 0 {
		c.MaxFlowsPerClient = max(c.MaxFlows/10, 1)
	}
	if c.MaxEndpoints <= 0 {
		c.MaxEndpoints = DefaultMaxEndpoints
	}
	if c.EndpointIdleTimeout <= 0 {
		c.EndpointIdleTimeout = DefaultEndpointIdleTimeout
	}
	if c.MTU <= 0 || c.MTU > DefaultMTU {
		c.MTU = DefaultMTU
	}
	c.TCP.setDefaults(c.TCPIdleTimeout)
}

// Handler decides what happens to the flows the stacks accept.
type Handler interface {
	// HandleTCP is called in a goroutine of its own for each new TCP
	// connection; it must end by calling Accept or Reject on the request.
	HandleTCP(req *TCPRequest)
	// HandleUDP is called in a goroutine of its own for each new UDP flow
	// with the stack's end already connected; it owns conn.
	HandleUDP(flow FlowInfo, conn net.Conn)
	// HandleEcho is called on the packet path for each ICMP echo request;
	// it must not block. reply sends an echo reply with the given payload.
	HandleEcho(req EchoRequest)
}

// FlowInfo describes a flow to the handler.
type FlowInfo struct {
	Endpoint   uint64 // GWLB endpoint ID
	Attachment uint64 // GWLB attachment ID
	FlowCookie uint32
	Client     netip.AddrPort
	Dest       netip.AddrPort
}

// EndpointName formats the GWLB endpoint ID as AWS names it (vpce-…).
func (f FlowInfo) EndpointName() string { return fmt.Sprintf("vpce-%017x", f.Endpoint) }
