package netstack

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/monoclock"
)

// Delayed ACKs.
//
// gVisor's TCP acknowledges what it takes in as soon as it has handled it:
// it has no delayed ACK. So a request that the application answers at once
// costs two packets back, and two system calls: the pure ACK, then the
// reply, which acknowledges as much again. The reply path holds such an ACK
// for a short while (Config.AckDelay) and drops it when a packet of the
// flow that carries its news leaves first (one that acknowledges as much
// and is not a retransmission), as a receiver's delayed ACK does (RFC 9293,
// 3.8.6.3). Dropping it is what losing it on the way would do, which TCP
// is made to bear; the later packet carries the newer window.
//
// An ACK is held only when waiting is likely to pay and cannot stall the
// client for long:
//   - the flow answered quickly before: data left within the delay of the
//     flow's last pure ACK (the time it was made, held or not), and no held
//     ACK of it has run out its delay since (Linux's "pingpong" mode). A new
//     flow's ACKs leave at once until then, as Linux's quickack start does:
//     a client whose first request is two writes under Nagle's algorithm
//     sends the second only once the first is acknowledged;
//   - it acknowledges new data, at most maxDelayedBytes of it since the
//     last ACK that left, so that a client sending a window's worth is
//     acknowledged at once, as Linux acknowledges at once once more than a
//     full segment is unacknowledged. A later ACK while one is held takes
//     its place, keeping its deadline, while that holds and the delay is
//     at most maxReplacedHold; with a longer one it leaves at once;
//   - it carries no option but timestamps: duplicate ACKs and SACK blocks,
//     which drive the client's loss recovery, are never held.
//
// A hostile client can make the appliance hold ACKs of its own flows only,
// one per flow, each for the delay plus the timer's wake-up latency (the
// Go runtime's: small on an idle host, milliseconds under load), which
// bounds every hold. The timer is not armed early to make up for it: the
// latency depends on the load, and an ACK sent early forgoes its reply.

// DefaultAckDelay is how long the appliance (cmd/gwlbproxy's --ack-delay)
// holds a pure ACK for a reply to carry it: a twentieth of the 40 ms Linux
// waits at least, and longer than a request to a nearby origin takes.
const DefaultAckDelay = 2 * time.Millisecond

// MaxAckDelay is the longest delay the appliance accepts: the least Linux
// waits, so that no client sees an ACK later than from a kernel (whose
// delayed-ACK timer, like the appliance's, fires some time past its
// deadline).
const MaxAckDelay = 40 * time.Millisecond

// maxReplacedHold is the longest delay under which a held ACK may be
// replaced by a later one and keep its deadline: with two segments in
// flight, a Linux client probes for a lost tail (TLP) twice its round trip
// plus two ticks after its last send, at least 2 ms. A longer hold of both
// segments' ACK drew a needless retransmission from most connections at
// 10 ms. A variable for tests.
var maxReplacedHold = 2 * time.Millisecond

// maxDelayedBytes is the most new data an ACK that is held may acknowledge:
// one full segment of a 1,500-byte path (Linux acknowledges at once when
// more than one segment came in since its last ACK).
const maxDelayedBytes = 1460

// maxHeldDatagram bounds the GENEVE datagram of a held ACK: outer headroom,
// the largest GENEVE header, and an IPv6 ACK with timestamps fit.
const maxHeldDatagram = outerHeadroom + MaxGeneveHeader + 40 + 32

var heldPool = sync.Pool{New: func() any {
	b := make([]byte, maxHeldDatagram)
	return &b
}}

// flowAcks is a TCP flow's delayed-ACK state, made on the flow's first
// reply. Only the reply path touches it, under mu.
type flowAcks struct {
	mu      sync.Mutex
	held    delayedAck // held.buf nil: none
	gen     uint32     // counts holds, so that the timer tells a hold it queued from a later one
	sentAck uint32     // the highest acknowledgement number sent, when sent is set
	sent    bool
	quick   bool  // the flow answers quickly: its ACKs may be held
	ackAt   int64 // when the flow's last pure ACK was made (monoclock.Now)
	// rst is the highest sequence number of the client's RSTs that found
	// no held ACK to drop and the stack may still take, when rstSeen
	// (dropHeld, outbound).
	rst     uint32
	rstSeen bool
}

// restart forgets what a.mu's flow did before: the stack is answering a
// SYN, so a new connection starts on the flow. A flow-table entry outlives
// its connection (a reset or closed flow is held a while), and a client
// may reuse the 4-tuple in the meantime; its new connection starts as a
// new flow's does, ACKs leaving at once, and an ACK still held for the
// old one would reach no connection. Its sequence numbers are new too:
// the SYN-ACK's acknowledgement is taken whatever the old one's was.
func (a *flowAcks) restart(d *ackDelayer) {
	if a.held.buf != nil {
		heldPool.Put(a.held.buf)
		a.held = delayedAck{}
		d.released()
	}
	a.quick, a.sent, a.sentAck, a.ackAt = false, false, 0, 0
	a.rstSeen = false
}

// maxRSTAhead bounds how far past the last ACK the stack made a client's
// RST may be for a later ACK of exactly its number to be dropped (dropHeld):
// a window without scaling.
const maxRSTAhead = 65535

// lastAck is the acknowledgement number of the flow's latest ACK, sent or
// held; a.mu is held.
func (a *flowAcks) lastAck() uint32 {
	if a.held.buf != nil && (!a.sent || seqAfter(a.held.ack, a.sentAck)) {
		return a.held.ack
	}
	return a.sentAck
}

// delayedAck is a held ACK: its GENEVE datagram, ready to send.
type delayedAck struct {
	buf      *[]byte // from heldPool; the datagram is (*buf)[:n], outer headroom first
	n, inner int     // inner: where the inner packet starts in the datagram
	gwlb     netip.AddrPort
	seq, ack uint32
}

func (h *delayedAck) datagram() []byte { return (*h.buf)[:h.n] }

// heldRef is a held ACK in the delayer's queue.
type heldRef struct {
	flow *Flow
	gen  uint32
	at   int64 // when it was held (monoclock.Now)
}

// ackDelayer sends the held ACKs whose delay ran out, with one timer for
// all, armed only while an ACK is held.
type ackDelayer struct {
	srv   *Server
	delay int64 // nanoseconds; 0: every ACK leaves at once
	// replace: a later ACK of little more may take a held one's place
	// (delay at most maxReplacedHold).
	replace bool

	mu    sync.Mutex
	queue []heldRef // in the order held, so by deadline; may hold stale refs
	live  int       // refs in queue whose ACK is still held
	armed bool
	timer *time.Timer

	flushMu sync.Mutex // serialises fire, whose due it guards
	due     []heldRef

	held, carried atomic.Uint64
	replaced      atomic.Uint64 // held ACKs a later ACK took the place of
	stopped       atomic.Bool   // the server closed: nothing is held any more
}

func (d *ackDelayer) init(srv *Server, delay time.Duration) {
	d.srv = srv
	d.delay = max(int64(delay), 0)
	d.replace = delay <= maxReplacedHold
	d.timer = time.AfterFunc(time.Hour, d.fire)
	d.timer.Stop()
}

// stop drops what is held: the server is closing.
func (d *ackDelayer) stop() {
	if d.timer == nil {
		return
	}
	d.stopped.Store(true)
	d.mu.Lock()
	d.timer.Stop()
	d.armed = false
	clear(d.queue)
	d.queue, d.live = d.queue[:0], 0
	d.mu.Unlock()
}

// seqAfter reports whether sequence number a comes after b.
func seqAfter(a, b uint32) bool { return int32(a-b) > 0 }

// acksOf returns f's delayed-ACK state, made on first use.
func acksOf(f *Flow) *flowAcks {
	if a := f.acks.Load(); a != nil {
		return a
	}
	f.acks.CompareAndSwap(nil, new(flowAcks))
	return f.acks.Load()
}

// outbound is called, when the delay is not 0, for each TCP packet pkt
// (parsed into p; not an ICMP error, not a fragment) of flow f that the
// stack emits, wrapped into dgram for gwlb, with the inner packet at
// dgram[inner:]. It reports whether the packet leaves now; false: it is
// held, copied, and dgram is free. A held ACK of the flow that the packet
// does not supersede is sent (and tapped) first.
func (d *ackDelayer) outbound(f *Flow, pkt []byte, p *Packet, dgram []byte, inner int, gwlb netip.AddrPort, now int64) bool {
	tcp := pkt[p.Payload:p.Len]
	if len(tcp) < 20 || d.stopped.Load() {
		return true // ParsePacket saw to the length
	}
	flags := p.TCPFlags
	seq := binary.BigEndian.Uint32(tcp[4:])
	ack := binary.BigEndian.Uint32(tcp[8:])
	dataOff := int(tcp[12]>>4) * 4
	payload := len(tcp) - dataOff
	hasAck := flags&tcpACK != 0
	pure := flags == tcpACK && payload == 0

	a := acksOf(f)
	a.mu.Lock()
	if flags&tcpSYN != 0 {
		a.restart(d)
	}
	if a.rstSeen && hasAck {
		switch {
		case pure && ack == a.rst:
			// The client's RST came in at exactly the number this ACK
			// acknowledges before the stack got to the segment it
			// answers (its FIN, say): the stack takes that RST next, and
			// the ACK would reach no connection (dropHeld).
			a.rstSeen = false
			a.mu.Unlock()
			return false
		case pure && ack == a.lastAck(), seqAfter(ack, a.rst):
			// An ACK of nothing new, the stack's challenge ACK (RFC 5961):
			// it met the RST before the client's bytes up to it, refused
			// it, and the client's answer to this ACK may come too late
			// to reset the connection, which the ACK of those bytes
			// would then draw; or the stack's number went past the RST.
			// Either way the stack will not take it.
			a.rstSeen = false
		}
	}
	var earlier delayedAck // a held ACK this packet does not supersede: it goes first
	secondAck := false
	if h := &a.held; h.buf != nil {
		// A packet carries the held ACK's news if it acknowledges as much
		// and the client reads its acknowledgement: not a retransmission,
		// which a client drops unread when it lies below its window.
		carries := hasAck && !seqAfter(h.seq, seq) &&
			(seqAfter(ack, h.ack) || ack == h.ack && (payload > 0 || flags&(tcpSYN|tcpFIN) != 0))
		if carries && pure && d.replace && a.sent && ack-a.sentAck <= maxDelayedBytes && len(dgram) <= maxHeldDatagram &&
			onlyTimestamps(tcp[20:dataOff]) {
			// A later ACK of little more: it takes the held one's place
			// and its deadline (the queue's entry, by gen).
			*h = delayedAck{buf: h.buf, n: copy(*h.buf, dgram), inner: inner, gwlb: gwlb, seq: seq, ack: ack}
			a.ackAt = now
			a.mu.Unlock()
			d.replaced.Add(1)
			return false
		}
		if carries {
			heldPool.Put(h.buf)
			secondAck = pure
			d.carried.Add(1)
		} else {
			earlier = *h
			a.sentAck = h.ack
		}
		*h = delayedAck{}
		d.released()
	}
	if pure && earlier.buf == nil && !secondAck && a.quick && a.sent && seqAfter(ack, a.sentAck) && ack-a.sentAck <= maxDelayedBytes &&
		len(dgram) <= maxHeldDatagram && onlyTimestamps(tcp[20:dataOff]) {
		buf := heldPool.Get().(*[]byte)
		a.held = delayedAck{buf: buf, n: copy(*buf, dgram), inner: inner, gwlb: gwlb, seq: seq, ack: ack}
		a.gen++
		// Queued before a.mu is let go: a writer of the flow that then
		// releases it must find it counted (d.live), or the queue could be
		// emptied under other flows' held ACKs.
		d.hold(f, a.gen, now)
		a.ackAt = now
		a.mu.Unlock()
		d.held.Add(1)
		return false
	}
	if hasAck && (!a.sent || seqAfter(ack, a.sentAck)) {
		a.sentAck, a.sent = ack, true
	}
	switch {
	case pure:
		a.ackAt = now
	case payload > 0 && now-a.ackAt <= d.delay:
		a.quick = true
	}
	a.mu.Unlock()
	if earlier.buf != nil {
		d.send(f, &earlier)
	}
	return true
}

// send sends one held ACK of flow f on its own, and puts its buffer back:
// a packet of its flow that must follow it is waiting in a batch.
func (d *ackDelayer) send(f *Flow, h *delayedAck) {
	d.tap(f, h)
	d.srv.sendDatagram(h.datagram(), h.gwlb)
	heldPool.Put(h.buf)
}

// tap shows a held ACK to the capture tap as it leaves: the reply path
// shows it nothing while it is held, since it may never leave. The tap
// takes the wall clock's time, not monoclock.Now's.
func (d *ackDelayer) tap(f *Flow, h *delayedAck) {
	t := d.srv.cfg.Tap
	if t == nil {
		return
	}
	inner := h.datagram()[h.inner:]
	ether := uint16(EtherTypeIPv4)
	if inner[0]>>4 == 6 {
		ether = EtherTypeIPv6
	}
	if p, reason := ParsePacket(inner, ether); reason == DropNone {
		t.Packet(f.key.Endpoint, f.tunnel.Load().parsed.FlowCookie, true, time.Now().UnixNano(), p, inner)
	}
}

// hold queues a held ACK for the timer.
func (d *ackDelayer) hold(f *Flow, gen uint32, now int64) {
	d.mu.Lock()
	d.queue = append(d.queue, heldRef{flow: f, gen: gen, at: now})
	d.live++
	if !d.armed {
		d.armed = true
		d.timer.Reset(time.Duration(d.delay))
	}
	d.mu.Unlock()
}

// released notes that a queued ACK is no longer held. With none left,
// the queue holds only stale refs: it is emptied and the timer stopped,
// so that a flow whose replies carry every ACK costs no timer wake-ups.
func (d *ackDelayer) released() {
	d.mu.Lock()
	if d.live--; d.live <= 0 {
		d.live = 0 // after stop, what was held is no longer counted
		clear(d.queue)
		d.queue = d.queue[:0]
		d.timer.Stop()
		d.armed = false
	}
	d.mu.Unlock()
}

// fire sends the held ACKs whose delay has run out, and marks their flows
// as not answering quickly. A packet of such a flow written while fire
// sends may overtake its ACK; the client then takes the ACK for an old one.
func (d *ackDelayer) fire() {
	d.flushMu.Lock()
	defer d.flushMu.Unlock()
	now := monoclock.Now() // the holds' clock: a wall-clock step back would keep them all
	d.mu.Lock()
	n := 0
	for n < len(d.queue) && now-d.queue[n].at >= d.delay {
		n++
	}
	d.due = append(d.due[:0], d.queue[:n]...)
	rest := copy(d.queue, d.queue[n:])
	clear(d.queue[rest:])
	d.queue = d.queue[:rest]
	if rest > 0 {
		d.timer.Reset(time.Duration(d.queue[0].at + d.delay - now))
	} else {
		d.armed = false
	}
	d.mu.Unlock()

	b := getReplyBatch()
	for i := range d.due {
		r := &d.due[i]
		a := r.flow.acks.Load()
		a.mu.Lock()
		if a.held.buf == nil || a.gen != r.gen {
			a.mu.Unlock()
			continue
		}
		h := a.held
		a.held = delayedAck{}
		if seqAfter(h.ack, a.sentAck) {
			a.sentAck = h.ack
		}
		// The answer did not come in time: the flow's ACKs leave at once
		// from now on, until it answers within the delay of one.
		a.quick = false
		a.mu.Unlock()
		d.released()
		if b.full() {
			d.srv.sendReplies(b)
		}
		d.tap(r.flow, &h)
		buf := b.buf()
		b.add(buf[:copy(buf, h.datagram())], h.gwlb)
		heldPool.Put(h.buf)
	}
	clear(d.due)
	d.srv.sendReplies(b)
	b.release()
}

// dropHeld drops flow f's held ACK, if any, for a RST of the client's
// with sequence number seq: one the stack takes resets the flow, and an ACK
// would reach no connection (its answer would be another RST); with none
// held, an ACK of seq the stack makes later is dropped as it leaves. The stack
// takes a RST only at exactly the next sequence number it expects (RFC
// 5961), which the held ACK acknowledges: any other it drops, or answers
// with a challenge ACK, and the flow lives on, so its ACK stays held.
// Called for each RST the client sends whose checksums hold (the stack
// drops any other), before the stack sees it.
func (d *ackDelayer) dropHeld(f *Flow, seq uint32) {
	a := f.acks.Load()
	if a == nil {
		return
	}
	a.mu.Lock()
	h := a.held
	if h.buf == nil || h.ack != seq {
		// The stack may not have acknowledged what comes before the RST
		// yet: its ACK of exactly seq is not to leave either (outbound).
		// The highest is kept: the one the stack takes is at the end of
		// what the client sent, and a later one lower down (the client's
		// answer to a segment of ours that came after it reset) is not.
		// Only one ahead of the last ACK, within what a client may have
		// in flight: the stack drops one out of its window silently.
		if last := a.lastAck(); a.sent && seqAfter(seq, last) && seq-last <= maxRSTAhead && (!a.rstSeen || seqAfter(seq, a.rst)) {
			a.rst, a.rstSeen = seq, true
		}
		a.mu.Unlock()
		return
	}
	a.held = delayedAck{}
	a.mu.Unlock()
	heldPool.Put(h.buf)
	d.released()
}
