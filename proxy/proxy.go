// Package proxy decides what happens to each flow the netstack accepts and
// carries it out: it refuses forbidden destinations, classifies a TCP
// connection by its first bytes, asks the policy, dials the destination from
// the host's own sockets (SNAT), relays TCP, UDP and ICMP echo, and writes
// one access record per flow (and per DNS query). HTTP and bumped TLS are
// handed to package intercept.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/hostconn"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// Config configures a Proxy.
type Config struct {
	// DialTimeout bounds connecting to a destination (default 10 s). When
	// it passes, the client gets a RST.
	DialTimeout time.Duration
	// UDPIdleTimeout and EchoIdleTimeout end relays without traffic
	// (default 120 s each, the GWLB's idle timeout for non-TCP flows).
	UDPIdleTimeout  time.Duration
	EchoIdleTimeout time.Duration
	// UDPUnansweredTimeout ends, sooner, a UDP or echo relay the
	// destination has not answered yet (default netstack.DefaultTransitoryTimeout, at most
	// UDPIdleTimeout): the packet stack forgets such a flow then too, and
	// an answer after it could not reach the client.
	UDPUnansweredTimeout time.Duration
	// Records receives the access records.
	Records *records.Writer
	// AllowLoopback permits destinations on the loopback network. Clients
	// could otherwise reach the appliance's own services through it, so
	// only in-process tests set it.
	AllowLoopback bool
	// Policy holds the egress rules (default: allow everything, decrypt
	// nothing).
	Policy *policy.Holder
	// Intercept configures the interception of HTTP and TLS: the CA's
	// minter, upstream roots, the trust page, the request head limit. Its
	// Records, Dial, DialFailed, HandshakeTimeout, DestinationCheck,
	// DNSGeneration, DestinationLookedUp and Policy are the proxy's own.
	Intercept intercept.Config
	// DestinationCheck, when set, ties decisions made on a name to the
	// destination (policy destination_check: dns): before a flow that a
	// rule with domains let through goes on, it is asked whether dest is an
	// address name resolves to, as seen from GWLB endpoint endpoint. It
	// returns nil if so, and an error saying why not otherwise (a mismatch,
	// or a lookup that failed). It may block on a lookup, bounded by ctx.
	// Nil: names are trusted.
	DestinationCheck func(ctx context.Context, endpoint, name string, dest netip.Addr) error
	// DestinationLookedUp, when set with DNSGeneration, says of a
	// destination that passed DestinationCheck whether it would pass
	// without the observed DNS answers (DNSAnswer's): the appliance's own
	// lookup vouches for it, or the name is the address. One it does not
	// vouch for passed on an observed answer, and is checked again after a
	// reload that forgot them (DNSGeneration advanced). It must not block.
	// Nil: every pass is taken to rest on an observed answer.
	DestinationLookedUp func(name string, dest netip.Addr) bool
	// DNSAnswer, when set, sees every DNS response relayed back to a
	// client, with the GWLB endpoint it goes through and the client as
	// the per-client shares count it (its address; an IPv6 client's prefix, clientkey.Of):
	// the answers clients act on, which DestinationCheck can then accept.
	// It must not keep msg. gen is what DNSGeneration returned before the
	// proxy checked that the policy which let the flow out is still the
	// one in force.
	DNSAnswer func(gen uint64, endpoint string, client netip.Addr, msg []byte)
	// DNSGeneration, when set, is read before that check, for DNSAnswer:
	// a reload that lands between the check and DNSAnswer's store, and
	// advances it, can so make DNSAnswer drop an answer the new policy
	// might not have let through. Nil: gen is 0. It is also read before
	// each destination check (DestinationLookedUp). It must not block.
	DNSGeneration func() uint64
	// MaxWaitingTCPPerClient bounds the TCP connections one client may
	// have waiting to be classified (default DefaultMaxWaitingTCPPerClient).
	MaxWaitingTCPPerClient int
	// MaxLingeringPerClient bounds the connections one client may have
	// lingering after its flow ended (default
	// DefaultMaxLingeringPerClient; lingershare.go).
	MaxLingeringPerClient int
	// DNSPorts are the UDP destination ports whose traffic is read as DNS
	// (one record per query, answers passed to DNSAnswer). Default: 53.
	DNSPorts []uint16
	// MaxUDPFlowsPerClient bounds the UDP flows (host sockets, each with
	// an ephemeral port) one client, an address (IPv6: its prefix, clientkey.Of) behind one
	// GWLB endpoint, holds at once; beyond it new flows are dropped.
	// Default: DefaultMaxUDPFlowsPerClient.
	MaxUDPFlowsPerClient int
	// MaxEchoFlowsPerClient bounds the allowed ICMP echo flows (host ping
	// sockets) one client holds at once, counted as MaxUDPFlowsPerClient
	// counts; beyond it requests of new echo flows are dropped. Default:
	// DefaultMaxEchoFlowsPerClient.
	MaxEchoFlowsPerClient int
	// SenderPrefixes are the prefixes GENEVE is accepted from (the
	// appliance's --gwlb-cidrs, or its VPC's CIDR blocks): the GWLB's
	// nodes and, where they share its subnets, sibling appliances. UDP to
	// GenevePorts and TCP to AdminPort at an address inside them (or
	// embedded in a NAT64 or 6to4 one) are refused (forbiddenSenderPort).
	// Nil: none are.
	SenderPrefixes []netip.Prefix
	// GenevePorts are the UDP ports GENEVE is taken on (default
	// netstack.GenevePort, the GWLB's). AdminPort is the admin listener's
	// TCP port (0: no TCP port is refused).
	GenevePorts []uint16
	AdminPort   uint16
	// VPCCIDRs are the CIDR blocks of the appliance's own VPC, as instance
	// metadata names them. Base + 2 of each IPv4 block is refused as a
	// destination, as the appliance's other AWS services are: at the
	// primary block's, the Amazon DNS server (Route 53 Resolver) answers
	// with the VPC's private hosted zones and Resolver rules, as the
	// appliance (AWS reserves base + 2 in every block). IPv6 blocks have
	// no such address (fd00:ec2::253 is refused anyway). Nil: unknown,
	// none is refused.
	VPCCIDRs []netip.Prefix
	// WriteStallTimeout aborts a relayed TCP flow one of whose writes, to
	// the client or to the destination, has been accepted nothing of for
	// that long, so that a stalled flow does not hold its buffers for good
	// (default DefaultWriteStallTimeout; shorter under memory pressure:
	// SetMemoryPressure).
	WriteStallTimeout time.Duration
}

// Proxy implements netstack.Handler.
type Proxy struct {
	cfg       Config
	intercept *intercept.Interceptor
	dialer    *hostconn.Dialer
	own       *ownAddrs // the host's own addresses, followed: never a destination
	echo      echoRelay
	udp       udpState
	tcp       tcpState
	denies    denyLimiter
	text      textBudget // request text recorded whole, per client
	stats     proxyCounters
	stalls    *stallWatch
	// vpcResolvers are base + 2 of the VPC's IPv4 blocks (vpcdns.go):
	// never a destination.
	vpcResolvers []netip.Addr
	// stacksClosing is set once the packet stacks are closing (the end of
	// the drain): a client connection that breaks from then on broke
	// because of it, and its record says so, not that the client did.
	stacksClosing atomic.Bool
}

// StacksClosing tells the proxy that the packet stacks are about to be
// closed (the drain's end): the flows that closing ends are recorded as
// ended by the appliance's shutdown, not by their clients. Lingers under
// way are woken to see it (their polls back off to a second): their flows'
// records must be written within the drain's wait. So are relays whose
// write to the destination waits: the stacks' close reaches only those
// whose client's connection has not ended.
func (p *Proxy) StacksClosing() {
	p.stacksClosing.Store(true)
	hostconn.WakeLingers()
	p.stalls.endWaiting()
}

// errShutdown is what a flow ended by the closing of the packet stacks
// is recorded with.
var errShutdown = errors.New("ended by the appliance's shutdown (its packet stacks closed)")

// endedError is the error a flow that ended with err is recorded with:
// err, or errShutdown's text leading it when the stacks' close ended the
// flow: once they are closing, and err is what their close gives
// (stackEnded). A client that reset its connection, or closed it, just
// before the drain's end is recorded as what it did, even when its record
// is written once the stacks are closing (review rev32a F3): the record
// said the shutdown ended it, "...: connection reset by peer".
func (p *Proxy) endedError(err error) error {
	if p.stacksClosing.Load() && stackEnded(err) {
		return fmt.Errorf("%w: %w", errShutdown, err)
	}
	return err
}

// stackEnded reports whether err is what the stacks' close ends a flow
// with: the stack's abort of the client's endpoint, or the client's conn
// closed under its reader (netstack.IsStackClose), a relay's write that
// waited ended by the close (errShutdownWriting), or errShutdown itself.
func stackEnded(err error) bool {
	return netstack.IsStackClose(err) || errors.Is(err, errShutdownWriting) || errors.Is(err, errShutdown)
}

type proxyCounters struct {
	tcpActive, udpActive, echoActive atomic.Int64
	tcpDialErrors, denied            atomic.Uint64
	echoUnrecorded                   atomic.Uint64
	deniedUnrecorded                 atomic.Uint64
	udpDialErrors                    atomic.Uint64
	dialErrorsUnrecorded             atomic.Uint64
	dialErrorsUnrecordedBytes        atomic.Uint64
	// quicGated counts the QUIC flows being decided (quic.go's
	// serveQUIC): held at the gate or in their destination check, with
	// no host socket yet, so not in udpActive.
	quicGated atomic.Int64
}

// Stats is a snapshot of the proxy's counters.
type Stats struct {
	TCPActive int64 `json:"tcp_active"`
	UDPActive int64 `json:"udp_active"`
	// QUICGateActive counts the QUIC flows held while they are decided:
	// at the gate, waiting for the rest of their ClientHello, or in their
	// destination check. They have no host socket yet, so UDPActive does
	// not count them, but each holds its datagrams.
	QUICGateActive int64  `json:"quic_gate_active"`
	EchoActive     int64  `json:"echo_active"`
	TCPDialErrors  uint64 `json:"tcp_dial_errors"`
	// UDPDialErrors counts UDP and QUIC flows whose destination could not
	// be reached: no host socket could be opened for it, or it answered
	// port or host unreachable before it sent anything, and their client
	// sent nothing after the datagrams that opened the flow.
	UDPDialErrors uint64 `json:"udp_dial_errors"`
	// DialErrorsUnrecorded counts the flows, among TCPDialErrors and
	// UDPDialErrors, whose dial failed at the cost of one packet of their
	// client's and that got no record of their own: their client had used
	// up its records of such failures (denylimit.go).
	DialErrorsUnrecorded uint64 `json:"dial_errors_unrecorded"`
	// DialErrorsUnrecordedBytes counts what those flows sent their
	// destinations: a UDP flow's opening datagrams reach its destination's
	// host even when the port is closed (dialerrorowed.go).
	DialErrorsUnrecordedBytes uint64 `json:"dial_errors_unrecorded_bytes"`
	Denied                    uint64 `json:"denied"`
	// EchoUnrecorded counts echo requests of denied flows dropped without an
	// access record: too many denied echo flows were remembered already.
	EchoUnrecorded uint64 `json:"echo_denied_unrecorded"`
	// EchoShareDrops counts echo requests of new flows dropped because
	// their client held MaxEchoFlowsPerClient echo flows already.
	EchoShareDrops uint64 `json:"echo_share_drops"`
	// EchoForeignReplies counts echo replies dropped because they came
	// from another address than their flow's destination.
	EchoForeignReplies uint64 `json:"echo_foreign_replies"`
	// UDPShareDrops counts new UDP flows dropped because their client held
	// MaxUDPFlowsPerClient flows already.
	UDPShareDrops uint64 `json:"udp_share_drops"`
	// QUICSmuggled counts client datagrams dropped because they would
	// have started a QUIC connection the policy never decided on: another
	// connection multiplexed on a decided QUIC flow, or an Initial on a
	// flow decided as plain UDP under a policy that looks at names.
	QUICSmuggled uint64 `json:"quic_smuggled_drops"`
	// UDPCheckDrops counts client datagrams dropped while their QUIC
	// flow waited for its destination check, past what a flow holds
	// meanwhile (checkWaitDatagrams, checkWaitBytes).
	UDPCheckDrops uint64 `json:"udp_check_drops"`
	// UDPDeniedUnheld counts denied UDP flows closed instead of held
	// (udpdenied.go): their client held its share of the hold, or the
	// hold was full. Each further datagram of one is decided again.
	UDPDeniedUnheld uint64 `json:"udp_denied_unheld"`
	// TCPWaitingDrops counts new TCP connections refused because their
	// client had MaxWaitingTCPPerClient connections waiting to be
	// classified already.
	TCPWaitingDrops uint64 `json:"tcp_waiting_drops"`
	// LingerShareCuts counts lingers cut short, their destination reset
	// with the upload's tail undelivered, because their client had
	// MaxLingeringPerClient connections lingering already (lingershare.go).
	LingerShareCuts uint64 `json:"linger_share_cuts"`
	// DeniedUnrecorded counts flows refused before any handshake, or QUIC
	// flows refused on their names, that got no record of their own: their
	// client had used up its records (denylimit.go). Each is in Denied too.
	DeniedUnrecorded uint64 `json:"denied_unrecorded"`
	// DNSUnrecorded counts DNS queries relayed without a record of their
	// own: their client had used up its DNS records (denylimit.go).
	DNSUnrecorded uint64 `json:"dns_unrecorded"`
	// TrustUnrecorded counts trust-page requests answered without a record
	// of their own: each client's come from a bucket (denylimit.go).
	TrustUnrecorded uint64 `json:"trust_unrecorded"`
	// RequestTextCut counts records of intercepted requests whose path,
	// User-Agent or method were cut: their client had had its share of
	// long ones recorded whole (textbudget.go).
	RequestTextCut uint64 `json:"request_text_cut"`
	// TCPStalled counts relayed TCP flows, and intercepted (bumped or
	// cleartext HTTP) connections, aborted because a write to the client
	// or the destination made no progress for the write-stall timeout
	// (stall.go).
	TCPStalled uint64 `json:"tcp_stalled"`
}

// New returns a Proxy.
func New(cfg Config) *Proxy {
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	if cfg.UDPIdleTimeout <= 0 {
		cfg.UDPIdleTimeout = 120 * time.Second
	}
	if cfg.UDPUnansweredTimeout <= 0 {
		cfg.UDPUnansweredTimeout = netstack.DefaultTransitoryTimeout
	}
	if cfg.EchoIdleTimeout <= 0 {
		cfg.EchoIdleTimeout = 120 * time.Second
	}
	if cfg.Records == nil {
		cfg.Records = records.NewWriter(nil)
	}
	if cfg.Policy == nil {
		cfg.Policy = AllowAll()
	}
	if cfg.DNSPorts == nil {
		cfg.DNSPorts = []uint16{53}
	}
	if cfg.GenevePorts == nil {
		cfg.GenevePorts = []uint16{netstack.GenevePort}
	}
	p := &Proxy{
		cfg: cfg,
		// Keepalive towards destinations keeps NAT gateways and firewalls on
		// the way from forgetting idle connections.
		dialer: &hostconn.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 60 * time.Second},
		own:    watchOwnAddrs(ownAddrsRefresh, true),
		stalls: newStallWatch(cfg.WriteStallTimeout),
		// Never a destination, whatever the policy says (forbidden).
		vpcResolvers: vpcResolverAddrs(cfg.VPCCIDRs),
	}
	p.stalls.stacksClosing = &p.stacksClosing
	// A reload's deny reaches a linger at its next look, which, once it
	// has lasted a while, is up to a second away: woken, it looks now.
	cfg.Policy.OnChange(hostconn.WakeLingers)
	// And one that denies a connection dialled first, still waiting for
	// its client's first bytes, ends it (tcpwaitreload.go).
	cfg.Policy.OnChange(p.policyChanged)
	ic := cfg.Intercept
	ic.Records, ic.HandshakeTimeout, ic.DestinationCheck = cfg.Records, cfg.DialTimeout, cfg.DestinationCheck
	ic.DNSGeneration, ic.DestinationLookedUp = cfg.DNSGeneration, cfg.DestinationLookedUp
	ic.Policy = cfg.Policy // each intercepted request is decided by the policy in force
	ic.Dial = p.dialTCP
	// A bump's first dial is the interceptor's when only a name could let
	// the flow through: counted as the proxy counts its own.
	ic.DialFailed = func() { p.stats.tcpDialErrors.Add(1) }
	ic.ShuttingDown = p.stacksClosing.Load
	// A tunnel's linger is bounded by the write-stall timeout too.
	ic.WriteStallTimeout = p.WriteStallTimeout
	ic.DenyRecord = p.denyRequestRecord // a bucket per client: denylimit.go
	ic.TrustRecord = p.trustPageRecord  // another
	ic.RequestText = p.requestText      // a bucket of bytes per client: textbudget.go
	p.text.rate = recordRate{requestTextBurst, requestTextRate}
	p.intercept = intercept.New(ic)
	p.tcp.waiting.what = "TCP connections waiting for their first bytes, its share"
	p.tcp.lingers.what = "lingering connections, its share"
	p.echo.init(p)
	return p
}

// dialTCP connects to a destination from the instance's own address; the
// connection's reads and writes are raw system calls (package hostconn).
// Every TCP dial, the interceptor's included, comes here, so a sibling
// appliance's admin port is refused here (forbiddenSenderPort), as a dial
// that failed.
func (p *Proxy) dialTCP(ctx context.Context, addr string) (net.Conn, error) {
	dst, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dial tcp %s: not an address and port: %w", addr, err)
	}
	if reason := p.forbiddenSenderPort(false, dst); reason != "" {
		return nil, fmt.Errorf("dial tcp %s: refused: %s", addr, reason)
	}
	return p.dialer.DialContext(ctx, dst)
}

// Stats returns a snapshot of the proxy's counters.
func (p *Proxy) Stats() Stats {
	return Stats{
		TCPActive: p.stats.tcpActive.Load(), UDPActive: p.stats.udpActive.Load(), QUICGateActive: p.stats.quicGated.Load(),
		EchoActive: p.stats.echoActive.Load(), TCPDialErrors: p.stats.tcpDialErrors.Load(),
		Denied: p.stats.denied.Load() + p.intercept.Denied(), EchoUnrecorded: p.stats.echoUnrecorded.Load(),
		UDPShareDrops: p.udp.shareDrops.Load(), QUICSmuggled: p.udp.quicSmuggled.Load(), UDPCheckDrops: p.udp.checkDrops.Load(),
		UDPDeniedUnheld: p.udp.unheld.Load(),
		TCPWaitingDrops: p.tcp.waitingDrops.Load(), LingerShareCuts: p.tcp.lingerCuts.Load(),
		DeniedUnrecorded: p.stats.deniedUnrecorded.Load(),
		UDPDialErrors:    p.stats.udpDialErrors.Load(), DialErrorsUnrecorded: p.stats.dialErrorsUnrecorded.Load(),
		DialErrorsUnrecordedBytes: p.stats.dialErrorsUnrecordedBytes.Load(),
		DNSUnrecorded:             p.denies.dnsUnrecorded.Load(), TrustUnrecorded: p.denies.trustUnrecorded.Load(), RequestTextCut: p.text.cut.Load(), EchoShareDrops: p.echo.shareDrops.Load(), EchoForeignReplies: p.echo.foreignReplies.Load(),
		TCPStalled: p.stalls.stalled.Load(),
	}
}

// Active returns the number of flows being relayed.
func (p *Proxy) Active() int64 {
	return p.stats.tcpActive.Load() + p.stats.udpActive.Load() + p.stats.echoActive.Load()
}

// Wait blocks until no flow is being relayed or ctx is done. It polls the
// counters: flows keep arriving while the appliance drains, and a WaitGroup
// must not be added to from zero while it is waited on.
func (p *Proxy) Wait(ctx context.Context) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for p.Active() > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// AllowAll returns a policy holder that allows every flow and decrypts none.
func AllowAll() *policy.Holder {
	pol, err := policy.Parse("built-in", []byte("policy: {default: allow}\n"))
	if err != nil {
		panic(err) // a constant document
	}
	h := new(policy.Holder)
	h.Store(pol)
	return h
}

// awsLinkLocalV6 holds the IPv6 addresses of the instance's own AWS
// services on Nitro instances: metadata (fd00:ec2::254), the Route 53
// Resolver (::253), time sync (::123). Their IPv4 twins are link-local.
var awsLinkLocalV6 = netip.MustParsePrefix("fd00:ec2::/64")

// IPv6 prefixes whose last 32 bits are an IPv4 address by definition:
// IPv4-compatible addresses (RFC 4291, deprecated) and SIIT's
// IPv4-translated ones (RFC 2765). No real destination has one, and a host
// or translator on the way may read the IPv4 address out of them
// (::a9fe:a9fe, ::ffff:0:a9fe:a9fe): they are refused outright.
var (
	v4Compatible = netip.MustParsePrefix("::/96")
	v4Translated = netip.MustParsePrefix("::ffff:0:0:0/96")
)

// forbidden says why a destination must not be dialled, or "". Clients must
// never reach the appliance itself, the instance metadata service or the
// VPC's DNS server through it: they would act with the appliance's
// identity.
func (p *Proxy) forbidden(a netip.Addr) string {
	a = a.Unmap()
	switch {
	case p.isVPCResolver(a):
		// Before loopback: tests give a loopback VPC, and
		// AllowLoopback must not let its resolver through.
		return "destination is the Amazon DNS server of the appliance's VPC (base + 2 of a VPC CIDR block): " +
			"it would answer as the appliance (its private hosted zones and Resolver rules)"
	case a.IsLoopback():
		if p.cfg.AllowLoopback {
			return ""
		}
		return "destination is a loopback address"
	case a.IsLinkLocalUnicast():
		return "destination is link-local (instance metadata and the like)"
	case a.IsMulticast() || a.IsUnspecified() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "destination is not a unicast address"
	case awsLinkLocalV6.Contains(a):
		return "destination is one of the instance's own AWS services (metadata, DNS, time)"
	case v4Compatible.Contains(a) || v4Translated.Contains(a):
		return "destination is an IPv4-compatible or IPv4-translated IPv6 address"
	case !p.own.known():
		return "the appliance's own addresses could not be read: every destination is refused until they are"
	case p.own.has(a):
		return "destination is the appliance itself"
	}
	// An IPv4 address a NAT64 gateway or 6to4 relay would unwrap is judged
	// too, or 64:ff9b::a9fe:a9fe would reach the metadata service through a
	// NAT gateway's DNS64/NAT64. The policy's dest_cidrs read the same ones.
	v4s, n := policy.EmbeddedIPv4(a)
	for _, v4 := range v4s[:n] {
		// 0.0.0.0 is what another of the local-use /48's layouts reads
		// from an ordinary NAT64 address: refusing it where there are
		// several readings would refuse every such address. Where there
		// is one (the well-known /96, 6to4), it is what the gateway would
		// unwrap, and refused as it is unwrapped.
		if reason := p.forbidden(v4); reason != "" && !(n > 1 && v4.IsUnspecified()) {
			return reason + ", embedded in " + a.String()
		}
	}
	return ""
}

// actionUndecided is the action of a flow that ended before the policy
// decided on it: a TCP connection whose destination could not be dialled
// (it is dialled before the first bytes are read, unless the policy can
// deny it on its addresses alone), or whose client went away before sending
// anything; a UDP flow whose first datagram could not be read. Recorded as
// "allow" by the default rule, such a flow would read as allowed on an
// appliance whose default denies.
const actionUndecided = "undecided"

// newRecord starts a flow's record, undecided and naming no rule until the
// policy decides (the decision sets both, rule "default" included): a flow
// refused before any rule was asked, a forbidden destination, names none.
func newRecord(kind string, f netstack.FlowInfo) *records.Record {
	return &records.Record{
		Kind:       kind,
		Action:     actionUndecided,
		Endpoint:   f.EndpointName(),
		Attachment: fmt.Sprintf("%016x", f.Attachment),
		FlowCookie: fmt.Sprintf("%08x", f.FlowCookie),
		ClientIP:   f.Client.Addr().String(),
		ClientPort: f.Client.Port(),
		DestIP:     f.Dest.Addr().String(),
		DestPort:   f.Dest.Port(),
		Result:     "ok",
	}
}

func (p *Proxy) finish(r *records.Record, start time.Time) {
	r.End(start)
	p.cfg.Records.Write(r)
}

// deny records a flow refused before any byte moved.
func (p *Proxy) deny(r *records.Record, start time.Time, reason string) {
	p.stats.denied.Add(1)
	r.Action, r.Result, r.Error = "deny", "denied", reason
	p.finish(r, start)
}
