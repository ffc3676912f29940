package netstack

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Delayed ACKs.
//
// gVisor's TCP acknowledges what it takes in as soon as it has handled it:
// it has no delayed ACK. So a request that the application answers at once
// costs two packets back, and two system calls: the pure ACK, then the
// reply, which acknowledges as much again. The reply path holds such an ACK
// for a short while (Config.AckDelay) and drops it when a packet of the
// flow that acknowledges as much leaves first, as a receiver's delayed ACK
// does (RFC 9293, 3.8.6.3). Dropping it is what losing it on the way would
// do, which TCP is made to bear; the later packet carries the newer window.
//
// An ACK is held only when waiting is likely to pay and cannot stall the
// client for long:
//   - the flow answered quickly before: data left within the delay of the
//     flow's last pure ACK, and no held ACK of it has run out its delay
//     since (Linux's "pingpong" mode);
//   - it acknowledges new data, at most maxDelayedBytes of it, so that a
//     client sending a window's worth is acknowledged at once; a second
//     such ACK while one is held goes out at once, as Linux acknowledges
//     every second full segment;
//   - it carries no option but timestamps: duplicate ACKs and SACK blocks,
//     which drive the client's loss recovery, are never held.
//
// A hostile client can make the appliance hold ACKs of its own flows only,
// one per flow, each for at most the delay.

// DefaultAckDelay is how long the appliance (cmd/gwlbproxy's --ack-delay)
// holds a pure ACK for a reply to carry it: a twentieth of the 40 ms Linux
// waits at least, and longer than a request to a nearby origin takes.
const DefaultAckDelay = 2 * time.Millisecond

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

// flowAcks is a TCP flow's delayed-ACK state. Only the reply path touches
// it, under mu.
type flowAcks struct {
	mu       sync.Mutex
	held     *[]byte // the held ACK's datagram, outer headroom first; nil: none
	heldLen  int
	heldGWLB netip.AddrPort
	heldAck  uint32
	gen      uint32 // counts holds, so that the timer tells a hold it queued from a later one
	sentAck  uint32 // the acknowledgement number last sent, when sent is set
	sent     bool
	quick    bool  // the flow answers quickly: its ACKs may be held
	ackAt    int64 // when the flow's last pure ACK left (unix nanoseconds)
}

// heldRef is a held ACK in the delayer's queue.
type heldRef struct {
	flow *Flow
	gen  uint32
	at   int64 // when it was held
}

// ackDelayer sends the held ACKs whose delay ran out, with one timer for
// all, armed only while an ACK is held.
type ackDelayer struct {
	srv   *Server
	delay int64 // nanoseconds; 0: every ACK leaves at once

	mu    sync.Mutex
	queue []heldRef // in the order held, so by deadline; may hold stale refs
	live  int       // refs in queue whose ACK is still held
	armed bool
	timer *time.Timer

	flushMu sync.Mutex // serialises fire, whose due it guards
	due     []heldRef

	held, carried atomic.Uint64
}

func (d *ackDelayer) init(srv *Server, delay time.Duration) {
	d.srv = srv
	d.delay = max(int64(delay), 0)
	d.timer = time.AfterFunc(time.Hour, d.fire)
	d.timer.Stop()
}

// stop drops what is held: the server is closing.
func (d *ackDelayer) stop() {
	if d.timer == nil {
		return
	}
	d.mu.Lock()
	d.timer.Stop()
	d.armed = false
	d.queue, d.live = d.queue[:0], 0
	d.mu.Unlock()
}

// TCP flags the delayer reads.
const (
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

// seqAfter reports whether sequence number a comes after b.
func seqAfter(a, b uint32) bool { return int32(a-b) > 0 }

// outbound is called, when the delay is not 0, for each TCP packet pkt
// (parsed into p; not an ICMP error, not a fragment) of flow f that the
// stack emits, wrapped into dgram for gwlb. It reports whether the
// packet leaves now; false: it is held, copied, and dgram is free. A held
// ACK of the flow that the packet does not supersede is sent first.
func (d *ackDelayer) outbound(f *Flow, pkt []byte, p *Packet, dgram []byte, gwlb netip.AddrPort, now int64) bool {
	tcp := pkt[p.Payload:p.Len]
	if len(tcp) < 20 {
		return true // ParsePacket saw to this; a packet that is not held needs no state
	}
	flags := p.TCPFlags
	ack := binary.BigEndian.Uint32(tcp[8:])
	dataOff := int(tcp[12]>>4) * 4
	payload := len(tcp) - dataOff
	hasAck := flags&tcpACK != 0
	pure := flags == tcpACK && payload == 0

	a := &f.acks
	a.mu.Lock()
	var earlier *[]byte // a held ACK this packet does not supersede: it goes first
	earlierLen, earlierGWLB := 0, netip.AddrPort{}
	secondAck := false
	if a.held != nil {
		switch {
		case hasAck && (seqAfter(ack, a.heldAck) || ack == a.heldAck && (payload > 0 || flags&(tcpSYN|tcpFIN) != 0)):
			// This packet acknowledges as much: the held ACK is dropped.
			heldPool.Put(a.held)
			secondAck = pure
			d.carried.Add(1)
		default:
			earlier, earlierLen, earlierGWLB = a.held, a.heldLen, a.heldGWLB
			a.sentAck = a.heldAck
		}
		a.held = nil
		d.released()
	}
	if pure && earlier == nil && !secondAck && a.quick && a.sent && seqAfter(ack, a.sentAck) && ack-a.sentAck <= maxDelayedBytes &&
		len(dgram) <= maxHeldDatagram && onlyTimestamps(tcp[20:dataOff]) {
		buf := heldPool.Get().(*[]byte)
		a.held, a.heldLen, a.heldGWLB, a.heldAck = buf, copy(*buf, dgram), gwlb, ack
		a.gen++
		gen := a.gen
		a.mu.Unlock()
		d.hold(f, gen, now)
		d.held.Add(1)
		return false
	}
	if hasAck {
		a.sentAck, a.sent = ack, true
	}
	switch {
	case pure:
		a.ackAt = now
	case payload > 0 && now-a.ackAt <= d.delay:
		a.quick = true
	}
	a.mu.Unlock()
	if earlier != nil {
		d.send((*earlier)[:earlierLen], earlierGWLB)
		heldPool.Put(earlier)
	}
	return true
}

// send sends one held ACK on its own: a packet of its flow that must
// follow it is waiting in a batch.
func (d *ackDelayer) send(dgram []byte, gwlb netip.AddrPort) {
	s := d.srv
	if err := s.ret.send(dgram, gwlb); err != nil {
		s.stats.drop(DropSendError)
		s.stats.lastSendError.Store(err.Error())
		return
	}
	s.stats.packetsOut.Add(1)
	s.stats.bytesOut.Add(uint64(len(dgram) - outerHeadroom))
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
	if d.live--; d.live == 0 {
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
	now := time.Now().UnixNano()
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
		a := &r.flow.acks
		a.mu.Lock()
		if a.held == nil || a.gen != r.gen {
			a.mu.Unlock()
			continue
		}
		held, n, gwlb := a.held, a.heldLen, a.heldGWLB
		a.held = nil
		a.sentAck, a.ackAt, a.quick = a.heldAck, now, false
		a.mu.Unlock()
		d.released()
		if b.full() {
			d.srv.sendReplies(b)
		}
		buf := b.buf()
		b.add(buf[:copy(buf, (*held)[:n])], gwlb)
		heldPool.Put(held)
	}
	clear(d.due)
	d.srv.sendReplies(b)
	b.release()
}
