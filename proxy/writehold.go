package proxy

import (
	"sync"
	"time"
)

// goproxy writes a response head and its body in separate writes, so a
// small response to a bumped client left as two TLS records, two segments
// and two GENEVE datagrams. The client connection therefore holds a head
// back until the first bytes of its body, and writes both at once. A body
// that is slow to start (a long poll, a slow origin) must not delay the
// head for long: after headHoldDelay it is written alone.
const (
	headHoldDelay = 2 * time.Millisecond
	// maxCoalesced caps head plus body in one write: one full TLS record.
	maxCoalesced = 16 << 10
)

var coalescePool = sync.Pool{New: func() any { b := make([]byte, 0, maxCoalesced); return &b }}

// headHold is the state of a held response head, guarded by mu; Write,
// the delay's timer and Close take mu in turn.
type headHold struct {
	mu    sync.Mutex
	armed bool   // the next write is a response head with a body to come
	head  []byte // held back, not yet written
	timer *time.Timer
	err   error // of a write the timer made, for the next Write to return
}

// holdNextHead makes the next write, goproxy's response head, wait for the
// body's first bytes.
func (c *hijackedConn) holdNextHead() {
	c.hold.mu.Lock()
	c.hold.armed = true
	c.hold.mu.Unlock()
}

// Write implements net.Conn.
func (c *hijackedConn) Write(b []byte) (int, error) {
	if c.swallow != nil { // goproxy's first write: its CONNECT response
		s := c.swallow
		c.swallow = nil
		if string(b) == string(s) {
			return len(b), nil
		}
	}
	h := &c.hold
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.err != nil {
		return 0, h.err
	}
	switch {
	case h.armed:
		h.armed = false
		h.head = append(h.head[:0], b...)
		if h.timer == nil {
			h.timer = time.AfterFunc(headHoldDelay, c.flushHead)
		} else {
			h.timer.Reset(headHoldDelay)
		}
		return len(b), nil
	case len(h.head) > 0:
		h.timer.Stop() // if it fires anyway, it finds no head
		return c.writeAfterHead(b)
	}
	return c.write(b)
}

// writeAfterHead writes the held head and the start of b in one write.
func (c *hijackedConn) writeAfterHead(b []byte) (int, error) {
	h := &c.hold
	k := min(len(b), max(0, maxCoalesced-len(h.head)))
	buf := coalescePool.Get().(*[]byte)
	*buf = append(append((*buf)[:0], h.head...), b[:k]...)
	h.releaseHead()
	_, err := c.write(*buf)
	if cap(*buf) <= maxCoalesced { // a huge head's buffer is not worth keeping
		coalescePool.Put(buf)
	}
	if err != nil || k == len(b) {
		if err != nil {
			k = 0
		}
		return k, err
	}
	n, err := c.write(b[k:])
	return k + n, err
}

// flushHead writes a head whose body has not started within the delay.
func (c *hijackedConn) flushHead() {
	h := &c.hold
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.head) == 0 {
		return
	}
	_, h.err = c.write(h.head)
	h.releaseHead()
}

// releaseHead empties the held head, keeping its buffer for the next one
// unless a huge head grew it.
func (h *headHold) releaseHead() {
	if cap(h.head) > maxCoalesced {
		h.head = nil
		return
	}
	h.head = h.head[:0]
}

func (c *hijackedConn) write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.out.Add(int64(n))
	return n, err
}

// Close writes a head still held, then closes the connection.
func (c *hijackedConn) Close() error {
	h := &c.hold
	h.mu.Lock()
	if h.timer != nil {
		h.timer.Stop()
	}
	if len(h.head) > 0 && h.err == nil {
		_, _ = c.write(h.head)
		h.releaseHead()
	}
	h.mu.Unlock()
	err := c.Conn.Close()
	c.once.Do(func() { close(c.closed) })
	return err
}
