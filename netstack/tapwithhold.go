package netstack

import "time"

// tapIn shows the tap the client's packet p, pkt, of flow (its TCP state
// before it tcpBefore), taken in for its stack st, unless it carries data
// no connection of the stack's can take (tapWithholds); a SYN's or a
// RST's data is shown cut off, as the stack throws it away. done says the
// packet needs nothing more, reason why it did not go in: a segment
// behind a waiting SYN is held (holdBehindSyn; DropSynWaiting when the
// hold is full), and a withheld one goes in at once, not by way of the
// coalescer co, whose batch a connection the proxy accepts meanwhile
// would take it from (a request the stack took, shown to no one).
func (s *Server) tapIn(st *endpointStack, co *coalescer, flow *Flow, h *Header, p *Packet, pkt []byte, tcpBefore uint32) (done bool, reason DropReason) {
	if p.Proto == protoTCP && !p.ICMPError && !p.Fragment && !p.MoreFragments &&
		p.TCPFlags&(flagSyn|flagRst) == 0 && flow.synWait.Load() != nil {
		held, full := s.holdBehindSyn(flow, h, p, pkt[:p.Len])
		if full {
			return true, DropSynWaiting
		}
		if held {
			return true, DropNone // shown, and taken in, after the SYN it follows
		}
	}
	if !p.MoreFragments && s.tapWithholds(p, pkt, flow, tcpBefore) {
		s.stats.tapWithheld.Add(1)
		if co != nil && co.holds(st, p) {
			co.flushLocked(st) // the flow's segments before it go in first; others' stay batched
		}
		st.link.inject(pkt, p.IPv6)
		return true, DropNone
	}
	tp := *p
	s.cfg.Tap.Packet(h.Endpoint, h.FlowCookie, false, time.Now().UnixNano(), tp, synDataCut(&tp, pkt)) // wall time, as replies and records are stamped
	return false, DropNone
}

// tapWithholds reports whether the client's TCP segment p, pkt (a whole
// one, or a first fragment), of flow (its state before the segment
// tcpBefore) carries data that no connection of its stack can take: the
// stack answers it with a RST and throws the data away, so it goes in but
// is not shown to the tap (a first fragment is dropped: server.deliver).
// Else a client could send a decoy at its first sequence number after its
// SYN, before the stack's SYN-ACK (while the proxy decides, or dials the
// destination, the stack holds no connection yet), or after its own RST,
// and an IDS would take the decoy's bytes for the stream's and the real
// ones, sent again at the same number, for a retransmission. Only a
// flow live before the segment (established, neither reset nor closed both
// ways), whose client never sent a RST, costs no look-up: a client's ACK
// makes a reset flow established again, and so does a segment the stack
// sends after the RST came, before it took it (an ACK it owed); a SYN
// leaves the state as it was. The look is at the connection's state too:
// while a SYN of the flow waits (synwait.go), the stack still holds the
// old connection, torn down by the client's RST (data then is a decoy) or
// live (a RST it ignored: the data is the stream's, and withholding it
// would hide it from the IDS).
func (s *Server) tapWithholds(p *Packet, pkt []byte, flow *Flow, tcpBefore uint32) bool {
	// An ICMP error about a TCP flow says TCP too (the quoted segment's),
	// but is no segment: its bytes there are the ICMP header's.
	if p.Proto != protoTCP || p.ICMPError || p.Fragment || p.TCPFlags&(flagSyn|flagRst) != 0 {
		return false
	}
	if !p.MoreFragments && p.Len <= p.Payload+int(pkt[p.Payload+12]>>4)*4 {
		return false // no data: an ACK or a FIN alone misleads no reassembly
	}
	if tcpLiveState(tcpBefore) && flow.clientRst.Load() == 0 {
		return false
	}
	return !s.tcpTakesData(&flow.key)
}

// tapHeld shows the tap a segment held behind a waiting SYN, unless it
// carries data that the stack's connection on the flow's 4-tuple, now that
// the wait is over, takes none of (holdBehindSyn). A half-open connection
// (SYN-RECEIVED) counts as taking it: the waiting SYN, which goes in
// first, resets it when its ISN differs and falls in its window, but a
// copy of its SYN, or one out of its window, draws an ACK and leaves it,
// and the held segment may then complete its handshake with the client's
// request: withheld, the request would be hidden from the IDS.
func (s *Server) tapHeld(flow *Flow, seg *heldSegment) {
	p := &seg.p
	if p.Len > p.Payload+int(seg.pkt[p.Payload+12]>>4)*4 && !s.tcpTakesData(&flow.key) {
		s.stats.tapWithheld.Add(1)
		return
	}
	s.cfg.Tap.Packet(seg.endpoint, seg.cookie, false, time.Now().UnixNano(), *p, seg.pkt)
}

// tapScreensFragment decides, with a tap on (else it passes all), on a
// client's IP fragment p, pkt, of flow (its TCP state before it
// tcpBefore, for a first one): it returns why it is to be dropped, or
// DropNone. The feed would show a
// fragment as it comes, before the stack has the datagram whole: a TCP
// segment's fragments that no connection will take are a decoy, and each
// is looked at (a first fragment sent while the connection lived, the rest
// after the client's RST and SYN, showed a decoy whole). While a SYN of
// the flow waits they cannot be held whole: dropped (the client sends them
// again).
func (s *Server) tapScreensFragment(p *Packet, pkt []byte, flow *Flow, tcpBefore uint32) DropReason {
	switch {
	case s.cfg.Tap == nil || flow.key.Proto != protoTCP:
		return DropNone
	case flow.synWait.Load() != nil:
		return DropSynWaiting
	case p.Fragment && !s.tcpTakesData(&flow.key):
		return DropTCPNoConnection
	case !p.Fragment && s.tapWithholds(p, pkt, flow, tcpBefore):
		return DropTCPNoConnection
	}
	return DropNone
}
