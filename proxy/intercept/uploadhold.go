package intercept

import (
	"cmp"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// An upload goes upstream as the client's reads of it return: over TLS,
// one read is one of the client's records. A client may send its body as
// thousands of one-byte records in a handful of segments, and each became
// a write of the appliance's own: a system call, an upstream TLS record
// and a segment from the appliance's address, hundreds of packets for one
// of the client's. uploadHold gathers the small writes that come in a
// burst: a write after a quiet holdDelay leaves at once (an interactive
// upload waits for nothing), one within holdDelay of the last write out
// is held, and what is held leaves at the end of that holdDelay, with the
// next large write, once maxCoalesced is reached, or at the upload's end.
// So a burst of tiny records costs a write per holdDelay, and a bulk
// upload, whose records are large, is never held. Answers, the other
// direction, are coalesced by hijackedConn (coalesce.go).

// uploadHold holds the small writes of an upload; its writes, the delay's
// timer and its end take mu in turn (after outer, when set). The zero
// value is ready to start.
type uploadHold struct {
	mu sync.Mutex
	// outer, if set, is taken before mu by the timer's write: the lock a
	// write of the upload holds while under way (upgradedBody.wmu).
	outer *sync.Mutex
	out   io.Writer // the destination; written with mu held
	// held is what waits for the end of the delay, a pooled buffer; nil
	// when nothing does, so that an idle upload keeps no buffer.
	held *[]byte
	// last is when a write last went out: a small write within delay of
	// it is held.
	last  time.Time
	timer *time.Timer
	// err is the first write's that failed, which every later write
	// returns: the bytes after lost ones must not follow them.
	err error
	// heldBody is what of a request's body was read and is held, not yet
	// counted sent (settle); to counts it once it has left.
	heldBody int64
	to       *bodySent
	// on: small writes are held; a request's from its body's first
	// read (settle), a tunnel's from the start.
	on bool
	// holding: held is not nil, for upload, which takes no lock of h's.
	holding atomic.Bool
	// upload, if set, is a tunnel's upload copy, not over while bytes it
	// wrote are held (uploadCopy.heldOut).
	upload *uploadCopy
	delay  time.Duration // 0: holdDelay; longer in tests
}

// start makes h write to out: through at once until the first read of
// the upload (settle), held in bursts after it. A request's head leaves
// as it always did, and the body's first write after it is not held for
// having come right after the head.
func (h *uploadHold) start(out io.Writer) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.out, h.err, h.last, h.heldBody, h.to, h.on = out, nil, time.Time{}, 0, nil, false
}

// startTunnel makes h hold the small writes of a tunnel's upload to out
// from the start; outer is the lock its writes hold (the timer's too),
// and upload the upload's copy.
func (h *uploadHold) startTunnel(out io.Writer, outer *sync.Mutex, upload *uploadCopy) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.out, h.outer, h.upload, h.on = out, outer, upload, true
}

// write writes b through h: held, or out at once after what is held.
func (h *uploadHold) write(b []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.err != nil {
		return 0, h.err
	}
	if !h.on {
		n, err := h.out.Write(b)
		h.err = err
		return n, err
	}
	now := time.Now()
	delay := cmp.Or(h.delay, holdDelay)
	if h.held == nil && len(b) < holdSmall && now.Sub(h.last) < delay {
		h.held = coalescePool.Get().(*[]byte)
		*h.held = (*h.held)[:0]
		h.holding.Store(true)
		wait := delay - now.Sub(h.last)
		if h.timer == nil {
			h.timer = time.AfterFunc(wait, h.flushHeld)
		} else {
			h.timer.Reset(wait)
		}
	}
	if h.held != nil && len(b) < holdSmall && len(*h.held)+len(b) <= maxCoalesced {
		*h.held = append(*h.held, b...)
		return len(b), nil
	}
	return h.writeOut(b, now)
}

// writeOut writes what is held and the start of b in one write, and the
// rest of b after it; h.mu is held.
func (h *uploadHold) writeOut(b []byte, now time.Time) (int, error) {
	h.last = now
	if h.held == nil {
		n, err := h.out.Write(b)
		h.err = err
		return n, err
	}
	h.timer.Stop() // if it fires anyway, it finds nothing held
	k := min(len(b), maxCoalesced-len(*h.held))
	*h.held = append(*h.held, b[:k]...)
	err := h.writeHeld()
	if err != nil || k == len(b) {
		if err != nil {
			k = 0
		}
		return k, err
	}
	n, err := h.out.Write(b[k:])
	h.err = err
	return k + n, err
}

// writeHeld writes what is held, counts the body it held as sent if it
// went, and gives the buffer back; h.mu is held.
func (h *uploadHold) writeHeld() error {
	_, err := h.out.Write(*h.held)
	if h.err = err; err == nil && h.to != nil {
		h.to.n.Add(h.heldBody)
	}
	h.heldBody = 0
	h.release()
	return err
}

// release gives the held buffer back; h.mu is held.
func (h *uploadHold) release() {
	coalescePool.Put(h.held)
	h.held = nil
	h.holding.Store(false)
	if h.upload != nil {
		h.upload.heldOut()
	}
}

// flushHeld writes what has been held for the delay.
func (h *uploadHold) flushHeld() {
	if h.outer != nil {
		h.outer.Lock()
		defer h.outer.Unlock()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.held != nil && h.err == nil {
		h.last = time.Now()
		_ = h.writeHeld()
	}
}

// finish writes what is held, if no write failed, and stops holding: the
// upload is over. It returns the first write's error, which may be the
// timer's, after the upload's last write returned.
func (h *uploadHold) finish() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.held != nil {
		h.timer.Stop()
		if h.err == nil {
			_ = h.writeHeld()
		} else {
			h.heldBody = 0
			h.release()
		}
	}
	h.out, h.to = nil, nil
	return h.err
}

// settle counts n bytes of a request body, read and handed to the writes,
// into to: at once if nothing is held (they have left), else once what is
// held has (writeHeld). It is called before each read of the body, and
// the writes are held from the first.
func (h *uploadHold) settle(n int64, to *bodySent) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.on = true
	if h.held == nil {
		to.n.Add(n)
		return
	}
	h.heldBody += n
	h.to = to
}
