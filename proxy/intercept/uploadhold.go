package intercept

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// An upload goes upstream as the client's reads of it return: over TLS,
// one read is one of the client's records. A client may send its body as
// thousands of one-byte records in a handful of segments, and each became
// a write of the appliance's own: a system call, an upstream TLS record
// and a segment from the appliance's address, hundreds of packets for one
// of the client's (review r1dos F2). uploadHold gathers what the client
// connection already has: a small write is held while the reader goes
// back for more, and what is held leaves as soon as that reader finds the
// client's connection empty and is about to wait for it
// (netstack.Conn.OnReadWait), with the next large write, at maxCoalesced,
// or at the upload's end; and uploadDelay after its first byte at the
// latest. So a burst of records that came in one segment leaves in one
// write, and an exchange (a message, then a wait for the answer) is not
// held at all: its reader finds nothing more and the message leaves before
// the wait. A connection that cannot say when its reader waits holds
// nothing. Answers, the other direction, are coalesced by hijackedConn
// (coalesce.go).

// uploadDelay bounds how long a byte is held; a variable for tests.
var uploadDelay = holdDelay

// readWaiter is a client connection that can say when its reader is about
// to wait (netstack.Conn.OnReadWait, passed on by the proxy's wrapper).
type readWaiter interface {
	OnReadWait(fn *func()) bool
	StopReadWait(fn *func())
}

// uploadHold holds the small writes of an upload; its writes, the flushes
// (the reader's wait, the timer) and its end take mu in turn (after outer,
// when set). The zero value is ready to start.
type uploadHold struct {
	mu sync.Mutex
	// outer, if set, is taken before mu by a flush: the lock a write of
	// the upload holds while under way (upgradedBody.wmu).
	outer *sync.Mutex
	out   io.Writer // the destination; written with mu held
	// held is what waits, a pooled buffer; nil when nothing does, so that
	// an idle upload keeps no buffer.
	held  *[]byte
	timer *time.Timer
	// err is the first write's that failed, which every later write
	// returns: the bytes after lost ones must not follow them.
	err error
	// heldBody is what of a request's body was read and is held, not yet
	// counted sent (settle); to counts it once it has left.
	heldBody int64
	to       *bodySent
	// unsent, if set, is a count that took held bytes as written (a
	// tunnel's bytes_out, recordingRWBody): bytes dropped unwritten are
	// taken off it.
	unsent *atomic.Int64
	// client is the connection whose reader's waits flush what is held;
	// nil when it cannot say (nothing is held then).
	client readWaiter
	// flush is flushHeld, made once: registered by its pointer, which
	// allocates nothing and lets finish stop only its own.
	flush *func()
	// on: small writes are held; a request's from its body's first read
	// (settle), a tunnel's from the start.
	on bool
	// holding: held is not nil, for upload, which takes no lock of h's.
	holding atomic.Bool
	// ended: the tunnel's client has ended its side (clientEnded):
	// nothing more is held.
	ended atomic.Bool
	// upload, if set, is a tunnel's upload copy, not over while bytes it
	// wrote are held (uploadCopy.heldOut).
	upload *uploadCopy
}

// start makes h write to out, holding small writes once the body's first
// read has been asked for (settle) if client's reader can say when it
// waits. A request's head leaves as it always did.
func (h *uploadHold) start(out io.Writer, client net.Conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.out, h.err, h.heldBody, h.to, h.on = out, nil, 0, nil, false
	h.ended.Store(false) // a pooled writer's: a tunnel's is never reused
	h.client = h.registerLocked(client)
}

// startTunnel makes h hold the small writes of a tunnel's upload to out
// from the start, if client's reader can say when it waits; outer is the
// lock its writes hold, upload the upload's copy, unsent the count that
// takes held bytes as written.
func (h *uploadHold) startTunnel(out io.Writer, client net.Conn, outer *sync.Mutex, upload *uploadCopy, unsent *atomic.Int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.out, h.outer, h.upload, h.unsent = out, outer, upload, unsent
	h.client = h.registerLocked(client)
	h.on = h.client != nil
}

// registerLocked has client's reader flush what is held before it waits;
// it returns the connection that will, nil if none can. h.mu is held.
func (h *uploadHold) registerLocked(client net.Conn) readWaiter {
	w, ok := socketOf(client).(readWaiter)
	if h.flush == nil {
		fn := h.flushHeld
		h.flush = &fn
	}
	if !ok || !w.OnReadWait(h.flush) {
		return nil
	}
	return w
}

// write writes b through h: held, or out at once after what is held.
func (h *uploadHold) write(b []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.err != nil {
		return 0, h.err
	}
	if !h.on || h.ended.Load() || len(b) >= holdSmall || h.held != nil && len(*h.held)+len(b) > maxCoalesced {
		return h.writeOut(b)
	}
	if h.held == nil {
		h.held = coalescePool.Get().(*[]byte)
		*h.held = (*h.held)[:0]
		h.holding.Store(true)
		if h.timer == nil {
			h.timer = time.AfterFunc(uploadDelay, *h.flush)
		} else {
			h.timer.Reset(uploadDelay)
		}
	}
	*h.held = append(*h.held, b...)
	return len(b), nil
}

// writeOut writes what is held, then b; h.mu is held. Apart, not in one
// write: a failure of b's own must not take the held bytes, which would
// have left on their own, with it. A tunnel's copy learns that nothing is held only
// once b has gone too (heldOut): counted over earlier, its end could
// overtake b.
func (h *uploadHold) writeOut(b []byte) (int, error) {
	if h.held != nil {
		h.timer.Stop() // if it fires anyway, it finds nothing held
		err := h.writeHeld()
		defer h.heldOut()
		if err != nil {
			return 0, err
		}
	}
	n, err := h.out.Write(b)
	h.err = err
	return n, err
}

// writeHeld writes what is held, counts the body it held as sent if it
// went, takes the held bytes that did not go off a tunnel's count
// (unsent), and gives the buffer back; h.mu is held.
func (h *uploadHold) writeHeld() error {
	n, err := h.out.Write(*h.held)
	h.err = err
	switch {
	case err == nil && h.to != nil:
		h.to.n.Add(h.heldBody)
	case err != nil && h.unsent != nil:
		// What did go counts (a TLS write returns the bytes of the
		// records it wrote whole before it failed).
		h.unsent.Add(-int64(len(*h.held) - n))
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
}

// heldOut tells a tunnel's copy that nothing it wrote is held; h.mu is
// held.
func (h *uploadHold) heldOut() {
	if h.upload != nil {
		h.upload.heldOut()
	}
}

// flushHeld writes what is held: the reader is about to wait for the
// client, or the first held byte has waited uploadDelay.
func (h *uploadHold) flushHeld() {
	if h.outer != nil {
		h.outer.Lock()
		defer h.outer.Unlock()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.flushLocked()
}

// flushLocked writes what is held, or drops it after a failed write, and
// tells a tunnel's copy; h.mu is held.
func (h *uploadHold) flushLocked() {
	if h.held == nil {
		return
	}
	h.timer.Stop()
	if h.err == nil {
		_ = h.writeHeld()
	} else {
		h.dropLocked()
	}
	h.heldOut()
}

// dropLocked drops what is held, unwritten; h.mu is held.
func (h *uploadHold) dropLocked() {
	if h.unsent != nil {
		h.unsent.Add(-int64(len(*h.held)))
	}
	h.heldBody = 0
	h.release()
}

// finish writes what is held, if no write failed, and stops holding: the
// upload is over. It returns the first write's error, which may be a
// flush's, after the upload's last write returned.
func (h *uploadHold) finish() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.flushLocked()
	if h.client != nil {
		h.client.StopReadWait(h.flush)
		h.client = nil
	}
	h.out, h.to, h.on = nil, nil, false
	return h.err
}

// clientEnded writes what is held and stops holding: the client's side of
// a tunnel has ended, the copy reads no more (uploadCopy.readEnded), and
// what came with that end (its last records, then its close_notify or
// FIN) would otherwise wait out uploadDelay: no read finds the
// connection empty any more. A flush under way (the timer's, blocked on
// a destination that takes nothing) is not waited for: it writes what it
// holds, and the copy is over once it has (heldOut); waiting for it here,
// in the copy's read, kept the tunnel from ending, and its linger's bound
// from starting, for as long as the destination took nothing. A last read
// that returned bytes with the end (a TLS 1.2 close_notify right behind
// the last record) still has the copy write them after that flush, as any
// write of the copy's waits for the one before it.
func (h *uploadHold) clientEnded() {
	h.ended.Store(true) // no more holding, whoever holds the lock
	if h.outer != nil {
		if !h.outer.TryLock() {
			return
		}
		defer h.outer.Unlock()
	}
	if !h.mu.TryLock() {
		return
	}
	defer h.mu.Unlock()
	h.flushLocked()
}

// stop drops what is held, unwritten, and stops holding: a tunnel's end,
// whatever made it (what it waited for has been written by then).
func (h *uploadHold) stop() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.held != nil {
		h.timer.Stop()
		h.dropLocked()
		h.heldOut()
	}
	if h.client != nil {
		h.client.StopReadWait(h.flush)
		h.client = nil
	}
	h.on = false
}

// settle counts n bytes of a request body, read and handed to the writes,
// into to: at once if nothing is held (they have left), else once what is
// held has (writeHeld). It is called before each read of the body, and
// the writes are held from the first, if the client's reader can say when
// it waits.
func (h *uploadHold) settle(n int64, to *bodySent) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.on = h.client != nil
	if h.held == nil {
		to.n.Add(n)
		return
	}
	h.heldBody += n
	h.to = to
}
