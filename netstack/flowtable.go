package netstack

import (
	"bytes"
	"math"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// flowShards spreads the table over independent locks so that the GENEVE
// readers (one per core) and the stacks' writers rarely contend.
const flowShards = 64

// Flow is the state the appliance keeps per flow: the GENEVE header the GWLB
// sent it under, which every reply repeats byte for byte, and where the GWLB
// is.
type Flow struct {
	key      FlowKey      // its client's address is the one its share is taken from
	lastSeen atomic.Int64 // monoclock.Now
	tunnel   atomic.Pointer[tunnel]
	acks     atomic.Pointer[flowAcks] // TCP, with an ACK delay: the reply path's (delayack.go)
	tcp      atomic.Uint32            // TCP: what the flow's segments showed (tcpSynAcked...)
	snd      atomic.Uint64            // TCP: the stack's SND.UNA and SND.NXT as seen (tcpseq.go)
	iss      atomic.Uint64            // TCP: issKnown | the stack's SYN-ACK's sequence number (tcpseq.go)
	mtuTaken atomic.Int64             // TCP: when the stack last took a path MTU error (monoclock.Now; icmperr.go)
	replied  atomic.Bool              // others: the stack has sent the client something
	removed  atomic.Bool              // out of the table: expired or evicted (flowevict.go)
	queued   atomic.Bool              // in its client's queue (flowevict.go)
	owner    *client                  // its client's share and queue, while in the table

	// TCP: when the client last sent a RST (monoclock.Now), and its SYN
	// waiting for the stack to let go of the reset connection on the
	// flow's 4-tuple, if one does (synwait.go).
	clientRst atomic.Int64
	synWait   atomic.Pointer[synWait]
}

// What a TCP flow's segments showed, as bits of Flow.tcp. A flow lives for
// the TCP idle timeout only while its connection is established: both ends
// synchronized, no RST since, and not closed both ways. Any other TCP flow
// (a SYN never completed, a stray segment the stack refused with a RST, a
// connection reset or closed) is transitory and lives for the transitory
// timeout: else a client could hold the idle timeout's worth of flows for
// every segment it sends to a new port, and the table would be anyone's to
// fill.
const (
	tcpSynAcked    uint32 = 1 << iota // the stack answered a SYN
	tcpEstablished                    // the connection was seen synchronized
	tcpFinIn                          // the client's FIN
	tcpFinOut                         // the stack's FIN
	tcpReset                          // a RST, with no sign of life since
)

// TCP header flags, as Packet.TCPFlags holds them.
const (
	flagFin = 0x01
	flagSyn = 0x02
	flagRst = 0x04
	flagAck = 0x10
)

// tcpClient records a segment from the client with the given flags, and
// returns the flow's state after it.
func (f *Flow) tcpClient(flags uint8) uint32 { return f.tcpUpdate(afterClient, flags) }

// tcpStack records a segment the stack sent to the client, and returns the
// flow's state after it.
func (f *Flow) tcpStack(flags uint8) uint32 { return f.tcpUpdate(afterStack, flags) }

// tcpUpdate moves the flow's TCP state on by next, against the other
// direction's updates, and returns the state it left.
func (f *Flow) tcpUpdate(next func(was uint32, flags uint8) uint32, flags uint8) uint32 {
	for {
		was := f.tcp.Load()
		if now := next(was, flags); now == was || f.tcp.CompareAndSwap(was, now) {
			return now
		}
	}
}

// afterClient is the state after a client's segment with flags.
func afterClient(was uint32, flags uint8) uint32 {
	now := was
	switch {
	case flags&flagRst != 0:
		now |= tcpReset
	case flags&flagSyn != 0:
		// Nothing: a new connection on the flow's ports starts afresh
		// with the stack's SYN-ACK, and a duplicate SYN on a live one
		// must not undo it (the stack's challenge ACKs, which would make
		// it live again, are rate-limited).
	default:
		if flags&flagAck != 0 && was&(tcpSynAcked|tcpEstablished) != 0 {
			// The handshake's last ACK, or later: live, also after a RST
			// the stack ignored (out of its window) or one it sent to a
			// stray segment during the handshake.
			now = (now | tcpEstablished) &^ tcpReset
		}
		if flags&flagFin != 0 {
			now |= tcpFinIn
		}
	}
	return now
}

// afterStack is the state after a segment the stack sent with flags. Its
// SYN-ACK starts a connection afresh. Anything else but a RST it sends on
// a connection it holds (a segment for none gets a RST), so such a
// segment makes the flow established, also one made again after it
// expired; the one exception, an ACK to an out-of-window segment during
// the handshake, costs no more than a connection completed.
func afterStack(was uint32, flags uint8) uint32 {
	switch {
	case flags&flagRst != 0:
		return was | tcpReset
	case flags&flagSyn != 0:
		return tcpSynAcked
	}
	now := (was | tcpEstablished) &^ tcpReset // a RST it ignored (out of its window)
	if flags&flagFin != 0 {
		now |= tcpFinOut
	}
	return now
}

// tcpResetOnly reports whether a TCP flow would be live but for a RST.
func (f *Flow) tcpResetOnly() bool {
	s := f.tcp.Load()
	return s&(tcpEstablished|tcpReset) == tcpEstablished|tcpReset && s&(tcpFinIn|tcpFinOut) != tcpFinIn|tcpFinOut
}

// afterHeld is the state of a flow whose RST the stack did not take: it
// still holds the connection (see flowTable.Expire).
func afterHeld(was uint32, _ uint8) uint32 { return was &^ tcpReset }

// tcpLive reports whether a TCP flow is established and neither reset nor
// closed both ways.
func (f *Flow) tcpLive() bool { return tcpLiveState(f.tcp.Load()) }

// tcpLiveState reports whether the TCP state s is established and neither
// reset nor closed both ways.
func tcpLiveState(s uint32) bool {
	return s&tcpEstablished != 0 && s&tcpReset == 0 && s&(tcpFinIn|tcpFinOut) != tcpFinIn|tcpFinOut
}

// tunnel is immutable once published, so readers need no lock.
type tunnel struct {
	header []byte         // the received GENEVE header, options included
	gwlb   netip.AddrPort // the GWLB's outer address and source port
	parsed Header
}

// Header returns the flow's current GENEVE header fields.
func (f *Flow) Header() Header { return f.tunnel.Load().parsed }

type flowShard struct {
	mu    sync.RWMutex
	flows map[FlowKey]*Flow
}

// flowTable maps flow keys to flows. It is safe for concurrent use.
type flowTable struct {
	shards    [flowShards]flowShard
	count     atomic.Int64
	max       int64
	clients   clientShares
	pressure  atomic.Int32 // a MemoryPressure
	tcpIdle   time.Duration
	short     time.Duration // for TCP flows not established (see tcpSynAcked), and others never replied to
	otherIdle time.Duration
	created   atomic.Uint64
	expired   atomic.Uint64
	evicted   atomic.Uint64 // evictable flows evicted for new ones (flowevict.go)
	aside     resetAside    // reset flows eviction consults last (flowevict.go)
	// held reports whether the stack of a TCP flow's endpoint still holds
	// its connection (Server.holdsTCP); nil: not asked (see Expire).
	held        func(k *FlowKey) bool
	perEndpoint sync.Map // endpoint ID -> *atomic.Int64 active flows
}

// newFlowTable returns a table holding at most max flows, expiring TCP flows
// after tcpIdle and all others after otherIdle without a packet; TCP flows
// that are not established, and other flows the stack never replied to,
// expire after DefaultTransitoryTimeout, or their idle timeout if that is
// shorter (see SetTransitory).
func newFlowTable(max int, tcpIdle, otherIdle time.Duration) *flowTable {
	t := &flowTable{max: int64(max), tcpIdle: tcpIdle, short: min(DefaultTransitoryTimeout, tcpIdle), otherIdle: otherIdle}
	t.clients.max = math.MaxInt32
	t.aside.cl.sh, t.aside.cl.at = &t.aside.sh, -1
	for i := range t.shards {
		t.shards[i].flows = make(map[FlowKey]*Flow)
	}
	return t
}

func (t *flowTable) shard(k *FlowKey) *flowShard { return &t.shards[shardOf(k)] }

// shardOf is the index of k's shard.
func shardOf(k *FlowKey) int {
	h := k.Endpoint ^ uint64(k.Proto)<<56 ^ uint64(k.ClientPort)<<16 ^ uint64(k.ServerPort)
	for i := 8; i < 16; i++ {
		h = h*31 + uint64(k.ClientAddr[i]) + uint64(k.ServerAddr[i])<<8
	}
	h ^= h >> 29
	return int(h % flowShards)
}

// Lookup returns the flow for k, or nil.
func (t *flowTable) Lookup(k *FlowKey) *Flow {
	s := t.shard(k)
	s.mu.RLock()
	f := s.flows[*k]
	s.mu.RUnlock()
	return f
}

// LimitPerClient caps the flows one client (an inner source address
// behind one GWLB endpoint) may hold, so that no client can fill the table
// for the others; 0, the default, means no cap below the table's own. Call
// it before the first Touch.
func (t *flowTable) LimitPerClient(n int) {
	if n <= 0 {
		n = math.MaxInt32
	}
	t.clients.max = int32(min(n, math.MaxInt32))
}

// MemoryPressure is how short of memory the appliance is
// (Server.SetMemoryPressure). The flow table admits new flows by it: a
// count of flows is a poor measure of memory (an idle relayed flow costs
// about 30 KB, a bumped TLS connection 50 KB, one moving data far more), so
// the per-client cap alone does not keep one client from taking it all.
type MemoryPressure int32

// Memory pressures.
const (
	// MemoryAmple: new flows are admitted by count alone.
	MemoryAmple MemoryPressure = iota
	// MemoryShort: a client holding ShortMemoryClientFlows flows or more
	// gets no new ones; the clients holding fewer still do, so that a
	// client that took the memory does not lock everyone else out.
	MemoryShort
	// MemoryCritical: a client holding CriticalMemoryClientFlows flows or
	// more gets no new ones. Refusing everyone would let the one client
	// that took the memory lock every other out, here and, as the health
	// check fails, on every appliance it does the same to.
	MemoryCritical
)

// CriticalMemoryClientFlows is the flows a client may hold and still get
// new ones while memory is critical: a host doing a few things at once.
const CriticalMemoryClientFlows = 16

// clientFlows is how many flows a client may hold and still get a new one
// under p (math.MaxInt32: no bound of p's own).
func (p MemoryPressure) clientFlows() int32 {
	switch p {
	case MemoryShort:
		return ShortMemoryClientFlows
	case MemoryCritical:
		return CriticalMemoryClientFlows
	}
	return math.MaxInt32
}

// String names the pressure as /stats shows it.
func (p MemoryPressure) String() string {
	switch p {
	case MemoryAmple:
		return "ample"
	case MemoryShort:
		return "short"
	case MemoryCritical:
		return "critical"
	}
	return "unknown"
}

// ShortMemoryClientFlows is the flows a client may hold and still get new
// ones while memory is short: a browser's or a server's working set, not a
// hoard.
const ShortMemoryClientFlows = 256

// setPressure sets the memory pressure new flows are admitted by.
func (t *flowTable) setPressure(p MemoryPressure) { t.pressure.Store(int32(p)) }

// Touch records a packet from the GWLB for flow k under header hdr from
// gwlb, creating the flow if it is new: a packet from k's client, which
// the client's share is taken from (k.ClientAddr). A new flow in a full
// table takes the place of an evictable one, its own client's if it has
// one (evict). It returns DropFlowTableFull when the table is full of
// others, DropClientFlowLimit when the client holds its share already,
// and DropMemoryPressure when it holds what memory pressure leaves a
// client (setPressure). In the steady state (known flow, same header) it
// allocates nothing.
func (t *flowTable) Touch(k *FlowKey, hdr []byte, parsed Header, gwlb netip.AddrPort, now int64) (*Flow, DropReason) {
	return t.touch(k, hdr, parsed, gwlb, now, touchOther)
}

// TouchSegment is Touch for a TCP segment other than a SYN: one that would
// make a new flow is refused (DropStrayFromDestination) when the table
// holds the reverse flow, a client's connection to the segment's sender.
// The destination's side of a connection the appliance terminates never
// sends through the GWLB, so such a segment is a forgery (another client
// spoofing the destination) or a host reusing the 4-tuple: taken in, the
// IDS feed would show it as part of the client's connection (a RST tears
// an IDS's view of it down), and the stack would answer it with a RST of
// a sequence number the sender chose, as if from the client's peer. The
// check costs a lookup only when the segment has no flow.
func (t *flowTable) TouchSegment(k *FlowKey, hdr []byte, parsed Header, gwlb netip.AddrPort, now int64) (*Flow, DropReason) {
	return t.touch(k, hdr, parsed, gwlb, now, touchSegment)
}

// TouchSyn is Touch for a TCP segment with SYN set: one that would make a
// new flow is refused (DropStrayFromDestination) when the table holds the
// reverse flow and its connection is live (Flow.tcpLive). Taken in, it
// would make a flow of the sender's on V's 4-tuple, and every segment
// after it would pass TouchSegment's check: a forger's in-window RST would
// reach the IDS feed as part of V's connection after all. While V's
// connection is live the 4-tuple is V's (without the appliance, a SYN on
// it would be a simultaneous open of V's connection, never a second
// connection), so nothing real is lost; once V's connection is reset or
// closed both ways, or while it is only being set up, the reverse flow is
// no obstacle and a host on a symmetric port pair gets its own connection.
func (t *flowTable) TouchSyn(k *FlowKey, hdr []byte, parsed Header, gwlb netip.AddrPort, now int64) (*Flow, DropReason) {
	return t.touch(k, hdr, parsed, gwlb, now, touchSyn)
}

// touchKind is what touch checks the reverse flow for before it makes a
// flow (TouchSegment, TouchSyn).
type touchKind uint8

const (
	touchOther   touchKind = iota // not TCP: no check
	touchSegment                  // TCP without SYN: refused if the reverse flow is held
	touchSyn                      // TCP SYN: refused if the reverse flow is held and live
)

func (t *flowTable) touch(k *FlowKey, hdr []byte, parsed Header, gwlb netip.AddrPort, now int64, kind touchKind) (*Flow, DropReason) {
	s := t.shard(k)
	s.mu.RLock()
	f := s.flows[*k]
	s.mu.RUnlock()
	if f == nil && kind != touchOther {
		rev := k.reverse()
		if r := t.Lookup(&rev); r != nil && (kind == touchSegment || r.tcpLive()) {
			return nil, DropStrayFromDestination
		}
	}
	if f == nil {
		own, r := t.clients.take(k.Endpoint, k.ClientAddr, MemoryPressure(t.pressure.Load()).clientFlows())
		if r != DropNone {
			return nil, r
		}
		if t.count.Add(1) > t.max && !t.evict(own) {
			t.count.Add(-1)
			t.clients.give(own)
			return nil, DropFlowTableFull
		}
		s.mu.Lock()
		made := false
		if f = s.flows[*k]; f == nil {
			f = &Flow{key: *k, owner: own}
			f.tunnel.Store(newTunnel(hdr, parsed, gwlb))
			s.flows[*k] = f
			made = true
			t.created.Add(1)
			t.endpointCounter(k.Endpoint).Add(1)
		} else { // another reader created it first
			t.count.Add(-1)
			t.clients.give(own)
		}
		s.mu.Unlock()
		if made {
			t.requeue(f)
		}
	}
	f.lastSeen.Store(now)
	// The GWLB may move a flow (new source port after a failover, a new
	// cookie): replies must follow whatever it sent last. Only the
	// client's packets find its flow (the key has a direction), so no
	// other sender's header can take it.
	if tn := f.tunnel.Load(); tn.gwlb != gwlb || !bytes.Equal(tn.header, hdr) {
		f.tunnel.Store(newTunnel(hdr, parsed, gwlb))
	}
	return f, DropNone
}

func newTunnel(hdr []byte, parsed Header, gwlb netip.AddrPort) *tunnel {
	return &tunnel{header: bytes.Clone(hdr), gwlb: gwlb, parsed: parsed}
}

func (t *flowTable) endpointCounter(ep uint64) *atomic.Int64 {
	if c, ok := t.perEndpoint.Load(ep); ok {
		return c.(*atomic.Int64)
	}
	c, _ := t.perEndpoint.LoadOrStore(ep, new(atomic.Int64))
	return c.(*atomic.Int64)
}

// SetTransitory sets the idle timeout of TCP flows that are not
// established, and of other flows never replied to (at most their own idle
// timeouts). Call it before the first Touch.
func (t *flowTable) SetTransitory(d time.Duration) { t.short = min(d, t.tcpIdle) }

// Expire removes flows idle for longer than their timeout and returns how
// many it removed.
//
// A client's RST marks a flow reset before the stack has looked at it, and
// a RST out of the connection's window, which the stack ignores (RFC
// 5961), is anyone's to send who can write the client's address: the
// flow would turn transitory, expire 30 s later, and everything the stack
// then sent on the still-open connection (a late answer, a keepalive)
// would be dropped for want of a flow. So an established flow that is
// transitory only for a RST is first checked against its stack (held):
// if the stack still holds the connection, the RST did not end it, and
// the flow keeps the established idle timeout. A RST the stack took ends
// the connection and takes it out of the stack at once, so such a flow
// still goes after the transitory timeout. The check is made outside the
// shard's lock, for those flows only.
func (t *flowTable) Expire(now int64) int {
	removed := 0
	var reset []*Flow
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for _, f := range s.flows {
			if !t.idleTooLong(f, now) {
				continue
			}
			if t.held != nil && f.tcpResetOnly() && now-f.lastSeen.Load() <= int64(t.tcpIdle) {
				reset = append(reset, f)
				continue
			}
			t.removeLocked(s, f)
			removed++
		}
		s.mu.Unlock()
	}
	for i := range t.clients.shards {
		t.clients.shards[i].pruneFresh()
	}
	t.aside.sh.pruneFresh()
	for _, f := range reset {
		last := f.lastSeen.Load()
		if t.held(&f.key) {
			// Live after all. A packet since (a RST the stack is about
			// to take) leaves the mark for the next round.
			if f.lastSeen.Load() == last {
				f.tcpUpdate(afterHeld, 0)
				if f.queued.Load() {
					f.leftEvictable()
				}
			}
			continue
		}
		s := t.shard(&f.key)
		s.mu.Lock()
		if s.flows[f.key] == f && t.idleTooLong(f, now) {
			t.removeLocked(s, f)
			removed++
		}
		s.mu.Unlock()
	}
	t.count.Add(int64(-removed))
	t.expired.Add(uint64(removed))
	return removed
}

// idleTooLong reports whether f has been idle at now for longer than its
// timeout.
func (t *flowTable) idleTooLong(f *Flow, now int64) bool {
	idle := t.otherIdle
	switch {
	case f.key.Proto == protoTCP:
		idle = t.tcpIdle
		if !f.tcpLive() {
			idle = t.short
		}
	case !f.replied.Load():
		// A datagram to a new port made a flow that lived the full
		// idle timeout without a reply: a client spraying ports held
		// its share of the table at a few hundred datagrams a second.
		idle = min(idle, t.short)
	}
	return now-f.lastSeen.Load() > int64(idle)
}

// removeLocked takes f out of the table; the caller holds s, f's shard,
// locked, and takes f off the count.
func (t *flowTable) removeLocked(s *flowShard, f *Flow) {
	delete(s.flows, f.key)
	f.removed.Store(true)
	t.endpointCounter(f.key.Endpoint).Add(-1)
	t.clients.give(f.owner)
}

// EndpointFlows returns the number of flows of one GWLB endpoint.
func (t *flowTable) EndpointFlows(ep uint64) int64 {
	if c, ok := t.perEndpoint.Load(ep); ok {
		return c.(*atomic.Int64).Load()
	}
	return 0
}

// ForgetEndpoint drops the count of an endpoint that holds no flow, so
// that endpoint IDs seen once do not stay in the table (and in /stats)
// for ever. The caller makes sure no flow of ep is being created: the
// server holds the endpoint's stack locked, and still in its map, so that
// no reader can make the endpoint another stack meanwhile. Expiry cannot
// touch the count, as there is no flow of ep to expire.
func (t *flowTable) ForgetEndpoint(ep uint64) {
	if c, ok := t.perEndpoint.Load(ep); ok && c.(*atomic.Int64).Load() == 0 {
		t.perEndpoint.CompareAndDelete(ep, c)
	}
}

// Len returns the number of flows in the table.
func (t *flowTable) Len() int { return int(t.count.Load()) }

// PerEndpoint returns the number of flows per GWLB endpoint.
func (t *flowTable) PerEndpoint() map[uint64]int64 {
	m := make(map[uint64]int64)
	t.perEndpoint.Range(func(k, v any) bool {
		m[k.(uint64)] = v.(*atomic.Int64).Load()
		return true
	})
	return m
}

// HasFlow reports whether the flow table holds a flow of k: its addresses
// as ParsePacket gives them (IPv4 in the IPv4-mapped form As16 gives), the
// client's side first. The capture asks it before it synthesizes a stream
// with a 5-tuple of its choosing, so that the stream never shares one with
// a flow on the wire.
func (s *Server) HasFlow(k FlowKey) bool { return s.flows.Lookup(&k) != nil }
