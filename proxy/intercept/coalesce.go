package intercept

import (
	"cmp"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// The write coalescing of hijackedConn.

// goproxy writes an HTTP/1 response in many writes: the head, the body, and
// for a chunked body a size line, the data and a CRLF per chunk, then
// "0\r\n" and a last CRLF. Each write to the client is a TLS record, a TCP
// segment and a GENEVE datagram of its own: a small chunked response left
// as five datagrams where one does. While goproxy writes a response with a
// body, the client connection therefore holds small writes back and sends
// them with the next one, and sends what it holds once goproxy reads the
// client's next request head (the response is complete). A body that comes
// slowly (a long poll, a stream of events) must not wait long: what is held
// is sent at most holdDelay after its first byte.
const (
	holdDelay = 2 * time.Millisecond
	// holdSmall: shorter writes are held (a response head always is);
	// longer ones leave at once, after what is held, in one write.
	holdSmall = 4 << 10
	// maxCoalesced caps one coalesced write: one full TLS record.
	maxCoalesced = 16 << 10
)

var coalescePool = sync.Pool{New: func() any { b := make([]byte, 0, maxCoalesced); return &b }}

// writeHold is the state of the writes held back; Write, the delay's
// timer, Read and Close take mu in turn.
type writeHold struct {
	mu sync.Mutex
	// active: a response is being written; written under mu, read without
	// it by Read, to stay cheap on the client's side of the connection.
	active atomic.Bool
	head   bool   // the next write is the response head: held whatever its size
	held   []byte // not yet written
	// holding: held is not empty, for noteAnswered, which takes no lock.
	holding atomic.Bool
	timer   *time.Timer
	err     error         // of a write the timer made, for the next Write to return
	delay   time.Duration // 0: holdDelay; longer in tests that count writes
}

// holdResponse says whether the writes of the response goproxy is about to
// write, a head and a body, wait for one another. Off, it first writes
// what the previous response left held, if its end went unnoticed (a
// pipelined request, or endHold finding the timer writing).
func (c *hijackedConn) holdResponse(on bool) {
	h := &c.hold
	h.mu.Lock()
	defer h.mu.Unlock()
	if !on {
		c.flushLocked()
	}
	h.active.Store(on)
	h.head = on
}

// swallowed drops b when it is the start of what is to be swallowed:
// goproxy's CONNECT response, or the end of a chunked response written
// already (nextHead.endChunked), which net/http writes a piece at a time
// (a trailer field's name, ": ", its value, CRLF). Any other write ends
// the swallowing. goproxy's goroutine only.
//
// A write other than the end it wrote (swallowEnd) fails, and with it the
// connection: the client has that end already, and any other bytes after
// it would be read as the start of its next response.
func (c *hijackedConn) swallowed(b []byte) (bool, error) {
	s := c.swallow
	if len(b) > len(s) || string(b) != string(s[:len(b)]) {
		c.swallow = nil
		if c.swallowEnd {
			c.swallowEnd = false
			err := errEndMismatch
			c.werr.CompareAndSwap(nil, &err)
			return false, err
		}
		return false, nil
	}
	if c.swallow = s[len(b):]; len(c.swallow) == 0 {
		c.swallow, c.swallowEnd = nil, false
	}
	return true, nil
}

// errEndMismatch fails goproxy's write of a chunked response's end that
// differs from the end endChunked wrote.
var errEndMismatch = errors.New("a chunked response's end written differently from the end sent already: connection closed")

// Write implements net.Conn.
func (c *hijackedConn) Write(b []byte) (int, error) {
	if c.swallow != nil {
		if ok, err := c.swallowed(b); ok {
			return len(b), nil
		} else if err != nil {
			return 0, err
		}
	}
	h := &c.hold
	h.mu.Lock()
	defer h.mu.Unlock()
	if c.lastPiece.Load() {
		defer c.wroteLast() // the response's last piece is written, or held
	} else {
		defer c.noteAnswered() // a write that failed settles a break (answer.go)
	}
	if c.unchunk.state != unchunkOff { // an answer to an HTTP/1.0 request (http10.go)
		return c.writeUnchunked(b)
	}
	return c.writeLocked(b)
}

// writeLocked is Write's holding and writing of b; h.mu is held.
func (c *hijackedConn) writeLocked(b []byte) (int, error) {
	h := &c.hold
	switch {
	case h.err != nil:
		return 0, h.err
	case !h.active.Load(): // nothing is held
		return c.write(b)
	case (len(b) < holdSmall || h.head) && len(h.held)+len(b) <= maxCoalesced:
		h.head = false
		if len(h.held) == 0 {
			delay := cmp.Or(h.delay, holdDelay)
			if h.timer == nil {
				h.timer = time.AfterFunc(delay, c.flushHeld)
			} else {
				h.timer.Reset(delay)
			}
		}
		h.held = append(h.held, b...)
		h.holding.Store(true)
		return len(b), nil
	case len(h.held) == 0:
		h.head = false
		return c.write(b)
	}
	h.head = false
	h.timer.Stop() // if it fires anyway, it finds nothing held
	return c.writeAfterHeld(b)
}

// writeAfterHeld writes what is held and the start of b in one write, and
// the rest of b after it; h.mu is held.
func (c *hijackedConn) writeAfterHeld(b []byte) (int, error) {
	h := &c.hold
	k := min(len(b), max(0, maxCoalesced-len(h.held)))
	buf := coalescePool.Get().(*[]byte)
	*buf = append(append((*buf)[:0], h.held...), b[:k]...)
	h.release()
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

// flushHeld writes what has been held for holdDelay.
func (c *hijackedConn) flushHeld() {
	c.hold.mu.Lock()
	defer c.hold.mu.Unlock()
	c.flushLocked()
}

// flushLocked writes what is held, unless a write failed already (the
// bytes before it are lost: none after them may follow); h.mu is held.
func (c *hijackedConn) flushLocked() {
	h := &c.hold
	defer c.noteAnswered() // what was held may have been the response's last piece
	if len(h.held) == 0 {
		return
	}
	h.timer.Stop() // if it fires anyway, it finds nothing held
	if h.err == nil {
		_, h.err = c.write(h.held)
	}
	h.release()
}

// endHold writes what is held and stops holding: goproxy is reading the
// next request head, so the response is complete. Reads of a request body
// do not end it: they may run while goproxy is still writing (an upload
// the upstream answered early), and writing here could then block the
// upload behind a client that reads only once it has sent everything; the
// timer sends what is held instead. Neither does a write in progress: the
// reader never waits for one.
func (c *hijackedConn) endHold() {
	h := &c.hold
	if !c.limit.inHead.Load() || !h.mu.TryLock() {
		return
	}
	defer h.mu.Unlock()
	h.active.Store(false)
	c.flushLocked()
}

// release empties what is held, keeping the buffer for the next response
// unless a huge head grew it; h.mu is held.
func (h *writeHold) release() {
	h.holding.Store(false)
	if cap(h.held) > maxCoalesced {
		h.held = nil
		return
	}
	h.held = h.held[:0]
}
