package intercept

import "net"

// A connection to the destination that ends in a reset, the appliance's
// (a stall, a reload, the client's break, the shutdown) or the
// destination's own, has its socket's send queue thrown away: what was
// never sent, up to the socket's few megabytes of a stalled upload, the
// destination never had. The tls record's bytes_out, what the appliance
// sent the destination, leaves it out, as a relayed flow's does.

// notSentQueue is a host socket that tells what of its send queue's
// payload it never sent and what its peer has not acknowledged, and
// whether its connection has ended (hostconn.Conn).
type notSentQueue interface {
	SendPayload() (unacked, notSent int, err error)
	Ended() bool
}

// dropUnsentUnder is dropUnsent(true) for the countedConn under c, if
// any: for a reset of the socket beneath it (a tunnel's), which its own
// Close, coming after, finds closed.
func dropUnsentUnder(c net.Conn) {
	if cc := countedUnder(c); cc != nil {
		cc.dropUnsent(true)
	}
}

// dropUnsent settles c's count once, as the appliance lets go of its
// socket: before its reset (reset), or at its close. What the socket never
// sent is taken off the count when the reset throws it away, the
// appliance's or, at a close, the destination's own that came first. A
// clean close leaves the queue to the kernel, which still sends it, unless
// the destination resets afterwards (one that closes with the upload
// unread): the record cannot vouch for what the destination had not
// acknowledged, and counts it apart (byteCount.outUnacked).
func (c *countedConn) dropUnsent(reset bool) {
	q, ok := c.Conn.(notSentQueue)
	if !ok || !c.unsentDropped.CompareAndSwap(false, true) {
		return
	}
	// The FIN's sequence number is no byte of the payload, and is left
	// out, with the counts read as one with the note of it (a tunnel's
	// end racing the destination's reset).
	unacked, notSent, err := q.SendPayload()
	if err != nil {
		return // closed under it: what it held is not known
	}
	if notSent > 0 && !reset && !q.Ended() {
		notSent = 0 // the kernel still sends it
	}
	c.n.out.Add(-int64(notSent))
	c.n.outUnacked.Add(int64(max(unacked-notSent, 0)))
}
