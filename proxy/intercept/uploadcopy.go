package intercept

import "sync"

// uploadCopy follows goproxy's copy of a WebSocket tunnel's upload: its
// reads of the client's connection (hijackedConn.Read) and its writes to
// the destination (upgradedBody.Write). goproxy ends the tunnel, and
// closes the upstream, as soon as either direction ends. When the one
// towards the client ends first (a client that reset after its FIN: the
// next ping to it fails), the upload's copy may still hold much of what
// the client sent: the appliance acknowledged it, and the packet stack
// hands it out after the reset. The tunnel's end (a close_notify) must
// wait for that copy to reach the client's end, or its next write meets
// "tls: protocol is shutdown" and the rest is never sent
// (upgradedBody.boundWrite).
//
// The copy is one goroutine (io.Copy): a read, then a write of what it
// read, until a read fails (the client's EOF, its close_notify) or a
// write does. So it is over once a read has failed and the bytes that
// read returned are written, or once a write fails. The zero value is
// ready to use.
type uploadCopy struct {
	mu sync.Mutex
	// ended: a read of the client's connection failed (its EOF), and
	// owed is what it returned with it, for the copy's last write.
	ended bool
	owed  int
	// done is closed once the copy is over; made on first ask.
	done   chan struct{}
	isOver bool
	// hold, if set, is the tunnel's hold of the copy's small writes
	// (uploadHold): the copy is not over while it holds any.
	hold *uploadHold
}

// holdWrites makes the copy's end wait for h to hold nothing.
func (c *uploadCopy) holdWrites(h *uploadHold) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hold = h
}

// heldOut notes that the hold wrote, or dropped, what it held: a copy
// whose writes all returned is over now.
func (c *uploadCopy) heldOut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended && c.owed <= 0 {
		c.settledLocked()
	}
}

// settledLocked ends the copy, whose last write returned, unless bytes it
// wrote are still held; c.mu is held.
func (c *uploadCopy) settledLocked() {
	if c.hold == nil || !c.hold.holding.Load() {
		c.overLocked()
	}
}

// readEnded notes that a read of the client's connection returned n
// bytes and an error: the copy reads no more, and writes n bytes more.
func (c *uploadCopy) readEnded(n int) {
	c.mu.Lock()
	h := c.hold
	c.mu.Unlock()
	if h != nil {
		h.clientEnded() // takes c.mu itself (heldOut): not under it
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended {
		return
	}
	c.ended, c.owed = true, n
	if n <= 0 {
		c.settledLocked()
	}
}

// wrote notes a write of the copy's to the destination, of n bytes, that
// returned err: a failed one ends the copy (goproxy's io.Copy stops on
// it), and so does the last one after the client's end.
func (c *uploadCopy) wrote(n int, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case err != nil:
		c.overLocked()
	case c.ended:
		// Buffers between the client's connection and the copy may
		// have held bytes read before: the bytes written after the
		// end's read settle what it owed, whichever they are.
		if c.owed -= n; c.owed <= 0 {
			c.settledLocked()
		}
	}
}

// over is closed once the copy is over.
func (c *uploadCopy) over() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		c.done = make(chan struct{})
		if c.isOver {
			close(c.done)
		}
	}
	return c.done
}

func (c *uploadCopy) overLocked() {
	if c.isOver {
		return
	}
	c.isOver = true
	if c.done != nil {
		close(c.done)
	}
}
