package netstack

import "time"

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
	if p.Proto != protoTCP || p.Fragment || p.TCPFlags&(flagSyn|flagRst) != 0 {
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
// the wait is over, takes none of (holdBehindSyn).
func (s *Server) tapHeld(flow *Flow, seg *heldSegment) {
	p := &seg.p
	if p.Len > p.Payload+int(seg.pkt[p.Payload+12]>>4)*4 && !s.tcpTakesData(&flow.key) {
		s.stats.tapWithheld.Add(1)
		return
	}
	s.cfg.Tap.Packet(seg.endpoint, seg.cookie, false, time.Now().UnixNano(), *p, seg.pkt)
}
