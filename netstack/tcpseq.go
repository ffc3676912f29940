package netstack

import "errors"

// The stack's send window of a TCP flow, as its segments show it: what
// the stack has sent and the client not yet acknowledged. A "fragmentation
// needed" or Packet Too Big about a TCP flow is taken only when the
// segment it quotes lies in that window (RFC 5927 section 4.1; Linux
// checks the same, snd_una <= seq <= snd_nxt). gVisor checks no sequence
// number, and each error naming a smaller MTU than the last cuts the
// connection's segments for good and makes it send again all it has in
// flight; an error may come from anyone (a router on the path), so
// without the check another client behind the endpoint could do that to
// a neighbour's connection by guessing its ports alone. It must now also
// guess a sequence number in flight: a guess hits with a chance of the
// bytes in flight in 2^32 (one in 65,536 for 64 KiB), and what the check
// leaves is an attacker who sees the connection's sequence numbers.
//
// Flow.snd holds SND.UNA in its high 32 bits and SND.NXT in its low 32,
// both in one word so that the reply path (SND.NXT) and the client's side
// (SND.UNA) move them together with no lock. SND.NXT is the highest a
// segment of the stack's reached: after a retransmission timeout gVisor
// sends again from SND.UNA, and the segments sent before stay in flight.
// SND.UNA is the highest acknowledgment the client sent within the window
// (gVisor acts on no other). The stack may not have read it yet, or not
// taken the segment that carried it, but the client had the bytes before
// it, so no error is due about them; only the client's own segments move
// it (the VPC keeps others from sending as it), so an ACK that lies costs
// only the client's own connection. Both start with the stack's SYN-ACK.
// A flow made again after it expired starts empty, and its window with
// the stack's next segment.

// tcpSent records a segment the stack sent on the flow: p as ParsePacket
// read it from the IP packet pkt. One load and, while the window moves, a
// compare-and-swap; nothing is allocated.
func (f *Flow) tcpSent(p *Packet, pkt []byte) {
	flags := p.TCPFlags
	if flags&flagRst != 0 {
		return // no data, and its sequence number may be the client's ACK (to a stray segment)
	}
	end := p.seq + uint32(max(p.Len-p.Payload-int(pkt[p.Payload+12]>>4)*4, 0))
	if flags&flagSyn != 0 {
		end++
		if f.iss.Load() != issKnown|uint64(p.seq) {
			f.iss.Store(issKnown | uint64(p.seq))
		}
	}
	if flags&flagFin != 0 {
		end++
	}
	for {
		was := f.snd.Load()
		una, nxt := uint32(was>>32), uint32(was)
		switch {
		case end == p.seq && flags&flagSyn == 0 && was != 0:
			// No sequence space: a pure ACK, or a keepalive probe
			// (SND.NXT-1), which would set the window one back and
			// have the client's next acknowledgment ignored.
			return
		case flags&flagSyn == 0 && una == nxt && was != 0 && end == una:
			// Ends where the client's acknowledgment is: gVisor's
			// zero-window probe, one junk byte at SND.UNA-1, which
			// would start the window one back and count a byte the
			// client has until it answers (never, if it went away).
			return
		case flags&flagSyn != 0, una == nxt:
			// A SYN-ACK starts a connection; with nothing in flight
			// (or nothing seen yet) the segment starts the window.
			una, nxt = p.seq, end
		case seqAfter(end, nxt):
			nxt = end
		default:
			return // a pure ACK, or a retransmission
		}
		now := uint64(una)<<32 | uint64(nxt)
		if now == was || f.snd.CompareAndSwap(was, now) {
			return
		}
	}
}

// tcpAcked records the acknowledgment number of a segment from the client
// (with ACK set, neither SYN nor RST): SND.UNA moves up to it if it
// acknowledges data in the window.
func (f *Flow) tcpAcked(ack uint32) {
	for {
		was := f.snd.Load()
		una, nxt := uint32(was>>32), uint32(was)
		if !seqAfter(ack, una) || seqAfter(ack, nxt) {
			return
		}
		if f.snd.CompareAndSwap(was, uint64(ack)<<32|uint64(nxt)) {
			return
		}
	}
}

// issKnown marks Flow.iss set: the stack's SYN-ACK was seen.
const issKnown = 1 << 32

// tcpUnacked returns the bytes of written, all the stack was given to send
// on the flow's connection, that the client has not acknowledged: sent or
// not, as Linux's SIOCOUTQ counts them. It reports false when the flow
// cannot say: its SYN-ACK was not seen (a flow made again after it
// expired), or it has left the table, where its counts move no more.
func (f *Flow) tcpUnacked(written int64) (int, bool) {
	iss := f.iss.Load()
	if iss&issKnown == 0 || f.removed.Load() {
		return 0, false
	}
	start := uint32(iss) + 1       // the SYN's own sequence number is no byte
	end := start + uint32(written) // modulo 2^32: a send buffer is far less
	// Modulo 2^32 too, never against start: once 2 GiB had gone, SND.UNA
	// looked before start, and the count said 0 with megabytes in flight.
	switch d := end - uint32(f.snd.Load()>>32); {
	case d >= 1<<31:
		return 0, true // SND.UNA past the end: the FIN acknowledged too
	case int64(d) > written:
		return int(written), true // the SYN-ACK not yet acknowledged
	default:
		return int(d), true
	}
}

// tcpFINAcked reports whether the client acknowledged the FIN that follows
// written, the bytes the stack was given to send, and so all of them: the
// flow's counts as the packet path saw them, frozen once it left the
// table. False when they cannot say (the SYN-ACK not seen).
func (f *Flow) tcpFINAcked(written int64) bool {
	iss := f.iss.Load()
	if iss&issKnown == 0 {
		return false
	}
	fin := uint32(iss) + 1 + uint32(written) // modulo 2^32
	return seqAfter(uint32(f.snd.Load()>>32), fin)
}

// tcpInFlight reports whether seq lies in the flow's send window: at or
// after SND.UNA and before SND.NXT (a segment starting at SND.NXT carries
// nothing yet sent, so it cannot have been too big).
func (f *Flow) tcpInFlight(seq uint32) bool {
	s := f.snd.Load()
	una, nxt := uint32(s>>32), uint32(s)
	return seq-una < nxt-una // modulo 2^32: the window may wrap
}

// SendQueued returns the bytes written to the connection that the client
// has not acknowledged yet, sent or not. gVisor's TCP endpoint does not
// say (it knows no SendQueueSizeOption): the flow's segments do, the
// stack's first sequence number and the client's acknowledgments as the
// packet path saw them (tcpseq.go). ErrSendQueueUnknown when they cannot
// (a flow made again after it expired, or gone from the table).
func (c *Conn) SendQueued() (int, error) {
	if !c.ownFlow() {
		return 0, ErrSendQueueUnknown
	}
	n, ok := c.flow.tcpUnacked(c.written.Load())
	if !ok || !c.ownFlow() {
		return 0, ErrSendQueueUnknown
	}
	return n, nil
}

// ownFlow reports whether the flow's counts are still this connection's:
// no new connection was made on the flow since (its SYN-ACK's sequence
// number is the one Accept saw).
func (c *Conn) ownFlow() bool {
	return c.flow != nil && c.iss&issKnown != 0 && c.flow.iss.Load() == c.iss
}

// FINAcked reports whether the client acknowledged the connection's FIN
// (CloseWrite's, or Close's), and with it every byte written before: it
// had the whole stream and its end. The flow's segments say, as for
// SendQueued; false when they cannot.
func (c *Conn) FINAcked() bool {
	return c.ownFlow() && c.flow.tcpFINAcked(c.written.Load()) && c.ownFlow()
}

// ErrSendQueueUnknown is SendQueued's error when the flow cannot tell.
var ErrSendQueueUnknown = errors.New("netstack: the flow's acknowledgments are not known")
