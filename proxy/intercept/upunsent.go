package intercept

import "net"

// A connection to the destination that ends in a reset, the appliance's
// (a stall, a reload, the client's break, the shutdown) or the
// destination's own, has its socket's send queue thrown away: what was
// never sent, up to the socket's few megabytes of a stalled upload, the
// destination never had. The tls record's bytes_out, what the appliance
// sent the destination, leaves it out, as a relayed flow's does.

// notSentQueue is a host socket that tells what of its send queue it
// never sent, and whether its connection has ended (hostconn.Conn).
type notSentQueue interface {
	SendNotSent() (int, error)
	Ended() bool
	FINQueued() bool
}

// dropUnsentUnder is dropUnsent(true) for the countedConn under c, if
// any: for a reset of the socket beneath it (a tunnel's), which its own
// Close, coming after, finds closed.
func dropUnsentUnder(c net.Conn) {
	if cc := countedUnder(c); cc != nil {
		cc.dropUnsent(true)
	}
}

// dropUnsent takes what c's socket never sent off the count, once: before
// the appliance's reset (reset), or at a close, when the connection had
// ended already (the destination's reset). A clean close leaves the queue
// to the kernel, which still sends it.
func (c *countedConn) dropUnsent(reset bool) {
	q, ok := c.Conn.(notSentQueue)
	if !ok || c.unsentDropped.Load() {
		return
	}
	n, err := q.SendNotSent()
	if err == nil && n > 0 && q.FINQueued() {
		n-- // the FIN's sequence number is no byte of the payload
	}
	if err != nil || n <= 0 || (!reset && !q.Ended()) {
		return
	}
	if c.unsentDropped.CompareAndSwap(false, true) {
		c.n.out.Add(-int64(n))
	}
}
