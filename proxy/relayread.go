package proxy

import (
	"io"
	"net"
	"os"
	"syscall"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/hostconn"
)

// How a relay direction reads its source (halfRelay.read): a tryReader
// without waiting, a socket through its raw connection, or plain Reads.

// read returns the next bytes from src in a pooled buffer (nil when it
// returns none), or errParked.
func (h *halfRelay) read() (*[]byte, int, error) {
	if h.tr == nil && h.rc == nil && !h.plain {
		h.choose()
	}
	switch {
	case h.tr != nil:
		return h.tryRead()
	case h.rc != nil:
		return h.rawRead()
	}
	bufp := relayBufPool.Get().(*[]byte)
	n, err := h.src.Read(*bufp)
	return bufp, n, err
}

// choose looks under src's wrappers. While one still has bytes of its own,
// src is read with plain Reads; after that, the connection underneath is
// read as a tryReader or a raw socket if it is one, and with plain Reads
// for good if not.
func (h *halfRelay) choose() {
	c := h.src
	for {
		w, ok := c.(wrappedConn)
		if !ok {
			break
		}
		if w.pending() {
			return
		}
		c = w.unwrap()
	}
	if tr, ok := c.(tryReader); ok {
		h.tr, h.copyFn = tr, h.copy
		tr.OnReadable(h.wake)
		return
	}
	if sc, ok := c.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			h.rc, h.readFn = rc, h.readFD
			if ir, ok := c.(idleReader); ok {
				h.ir, h.copyFn = ir, h.copy
				h.resume = func() { go h.copyFn() }
			}
			return
		}
	}
	h.plain = true
}

func (h *halfRelay) tryRead() (*[]byte, int, error) {
	for {
		bufp := relayBufPool.Get().(*[]byte)
		n, err := h.tr.TryRead(*bufp)
		if err != netstack.ErrWouldBlock {
			return bufp, n, err
		}
		relayBufPool.Put(bufp)
		h.parked.Store(true)
		// Bytes that came between TryRead and parked announced themselves
		// to nobody: look once more, and whoever unparks goes on.
		if !h.tr.Readable() || !h.parked.CompareAndSwap(true, false) {
			return nil, 0, errParked
		}
	}
}

// wake resumes a parked copy, or, for one under way, looks for the
// client's break (breakWhileCopying). It runs on the stack's packet path.
func (h *halfRelay) wake() {
	if h.parked.CompareAndSwap(true, false) {
		go h.copyFn()
		return
	}
	h.watchCopying()
}

func (h *halfRelay) rawRead() (*[]byte, int, error) {
	h.rn, h.rerr = 0, nil
	if err := h.rawWait(); err != nil {
		if err == errParked {
			return nil, 0, err
		}
		if h.rbuf != nil {
			relayBufPool.Put(h.rbuf)
			h.rbuf = nil
		}
		return nil, 0, err
	}
	bufp := h.rbuf
	h.rbuf = nil
	switch {
	case h.rerr != nil:
		relayBufPool.Put(bufp)
		return nil, 0, &net.OpError{Op: "read", Net: "tcp", Source: h.src.LocalAddr(), Addr: h.src.RemoteAddr(), Err: os.NewSyscallError("read", h.rerr)}
	case h.rn == 0:
		relayBufPool.Put(bufp)
		return nil, 0, io.EOF
	}
	return bufp, h.rn, nil
}

// rawWait reads through the raw connection. A connection that can park a
// quiet read (hostconn.Conn) gives up a wait that lasts, and parks: the
// direction then holds no goroutine until the destination sends or ends.
func (h *halfRelay) rawWait() error {
	if h.ir == nil {
		return h.rc.Read(h.readFn)
	}
	for {
		err := h.ir.WaitRead(h.readFn)
		if err != hostconn.ErrIdle {
			return err
		}
		if h.ir.ParkRead(h.resume) {
			return errParked
		}
	}
}

// idleReader is a host connection whose quiet reads can wait without a
// goroutine (hostconn.Conn).
type idleReader interface {
	WaitRead(fn func(fd uintptr) bool) error
	ParkRead(wake func()) bool
}

// readFD is the raw connection's read: it takes a buffer only to read,
// and gives it back when there is nothing, so that the wait for the poller
// holds none.
func (h *halfRelay) readFD(fd uintptr) bool {
	if h.rbuf == nil {
		h.rbuf = relayBufPool.Get().(*[]byte)
	}
	switch n, e := hostconn.ReadFD(fd, *h.rbuf); e {
	case syscall.EAGAIN:
		relayBufPool.Put(h.rbuf)
		h.rbuf = nil
		return false
	case 0:
		h.rn = n
	default:
		h.rerr = e
	}
	return true
}
