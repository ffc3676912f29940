package netstack

// replyTap is what the capture tap is shown of a reply once it has been
// sent: a reply the return path fails to send (send_error) never reached
// the client, and an IDS shown it would take it for delivered.
type replyTap struct {
	dgram    []byte // the datagram as sent; nil: nothing to show
	inner    int    // offset of the inner packet in dgram
	endpoint uint64
	cookie   uint32
	now      int64
	p        Packet
}

// tapSent shows the tap tp's reply, which has just been sent, and clears
// tp.
func (s *Server) tapSent(tp *replyTap) {
	if tp.dgram == nil {
		return
	}
	if s.cfg.Tap != nil {
		s.cfg.Tap.Packet(tp.endpoint, tp.cookie, true, tp.now, tp.p, tp.dgram[tp.inner:])
	}
	tp.dgram = nil
}

// tapBatchSent shows the tap the datagrams of b the return path sent
// (fail cleared the others'), in the order they were added.
func (s *Server) tapBatchSent(b *replyBatch) {
	for i := range b.n {
		s.tapSent(&b.taps[i])
	}
}

// untap clears the tap entry of the datagram pkt, which failed to send.
// The raw return path packs the datagrams it sends to the front of the
// batch, so the entry is found by the datagram's buffer, not its index.
func (b *replyBatch) untap(pkt []byte) {
	if len(pkt) == 0 {
		return
	}
	for i := range b.n {
		if t := &b.taps[i]; len(t.dgram) != 0 && &t.dgram[0] == &pkt[0] {
			t.dgram = nil
			return
		}
	}
}
