// Package hostconn dials, reads, writes and closes the appliance's host
// TCP connections (its connections to destinations) with raw system
// calls.
//
// The sockets are non-blocking and in the runtime's poller, so a read or a
// write never blocks: it returns EAGAIN, and the goroutine waits in the
// poller. The net package still makes each call as one that might block,
// and the first such call after an idle spell wakes the runtime's monitor
// thread, which then polls every 20 µs for a while. On a guest where a
// thread wake-up is dear that was a tenth of a kept-alive request's CPU,
// paid twice a request (the request written, the answer read). The GENEVE
// sockets are read and written raw for the same reason (netstack), as
// gVisor's own link endpoints do theirs (pkg/rawfile). The cost: a raw
// call keeps its processor for as long as the kernel takes, which for a
// loopback write includes the receiver's input path. A connection's
// connect(2) and close(2) were such calls too, once each: Dialer makes
// connect(2) raw and batches close(2), so that many connections share
// one wake-up.
//
// Under the race detector the calls are the syscall package's, which tell
// it that what is written to a socket happens before what is read from it.
package hostconn

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Conn is a host TCP connection whose Read and Write are raw system
// calls, and so are CloseWrite and, for a Dialer's connection, Close.
// Everything else is the *net.TCPConn's.
type Conn struct {
	*net.TCPConn
	rc syscall.RawConn

	// A Dialer's connection: its addresses (its socket was made before it
	// had any, and the TCPConn does not know them), and the batch closer.
	laddr, raddr *net.TCPAddr
	closer       *closer
	closed       atomic.Bool
	finQueued    atomic.Bool // CloseWrite queued the FIN
	// finMu holds CloseWrite's shutdown and its finQueued together, so
	// that SendPayload's counts and finQueued agree.
	finMu sync.Mutex
	gone  atomic.Bool // closed or aborted: unpark has run
	idle  idleRead

	// The state of the call in progress, one per direction, guarded by
	// its mutex; the functions are bound once so that no call allocates.
	rmu    sync.Mutex
	rbuf   []byte
	rn     int
	rerr   syscall.Errno
	readFn func(fd uintptr) bool

	wmu     sync.Mutex
	wbuf    []byte
	wn      int
	werr    syscall.Errno
	writeFn func(fd uintptr) bool
	wwait   WriteWaiter // OnWriteWait's
	wtold   int         // wn when wwait last heard this Write wait; -1: never
}

// WriteWaiter learns when a Write waits for room in the socket's send
// buffer: the destination has accepted nothing of what is in it, or not
// enough. It is how a relay bounds a write that makes no progress without
// a timer per write (package proxy).
type WriteWaiter interface {
	// WriteWaiting is called with true when a Write is about to wait in
	// the poller, the first time or after it has made progress since it
	// last said so, and with false when a Write that said true returns. It
	// runs in the writer's goroutine and must not call the conn.
	WriteWaiting(waiting bool)
}

// OnWriteWait arranges for w to learn when Write waits; nil stops it.
// Writes that find room call nothing.
func (c *Conn) OnWriteWait(w WriteWaiter) {
	c.wmu.Lock()
	c.wwait = w
	c.wmu.Unlock()
}

// Wrap returns c as a Conn when it is a *net.TCPConn, and c itself when
// it is not.
func Wrap(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	return newConn(tc, rc)
}

func newConn(tc *net.TCPConn, rc syscall.RawConn) *Conn {
	c := &Conn{TCPConn: tc, rc: rc}
	c.readFn, c.writeFn = c.doRead, c.doWrite
	return c
}

// LocalAddr implements net.Conn.
func (c *Conn) LocalAddr() net.Addr {
	if c.laddr != nil {
		return c.laddr
	}
	return c.TCPConn.LocalAddr()
}

// RemoteAddr implements net.Conn.
func (c *Conn) RemoteAddr() net.Addr {
	if c.raddr != nil {
		return c.raddr
	}
	return c.TCPConn.RemoteAddr()
}

// Close implements net.Conn. A Dialer's connection ends at once: a FIN
// goes out, and a Read or Write waiting returns net.ErrClosed (a read
// made through SyscallConn meets the end of the stream instead). Its
// descriptor is closed a little later, with others (Dialer); bytes that
// came and were not read get their RST then, where close(2) would have
// sent it at once.
func (c *Conn) Close() error {
	if c.closer == nil {
		err := c.TCPConn.Close()
		c.unpark()
		return err
	}
	if c.closed.Swap(true) {
		return c.opError("close", net.ErrClosed)
	}
	// SHUT_WR sends the FIN; both together make the socket hang up, which
	// wakes a read or a write waiting in the poller.
	_ = c.shutdown(unix.SHUT_RDWR)
	c.closer.add(c.TCPConn)
	c.unpark()
	return nil
}

// Abort closes the connection with a RST (a zero linger), at once; after
// Close it does nothing, as on a closed *net.TCPConn.
func (c *Conn) Abort() {
	if c.closer != nil && c.closed.Swap(true) {
		return
	}
	_ = c.SetLinger(0)
	c.TCPConn.Close()
	c.unpark()
}

// CloseWrite shuts down the writing side of the connection.
func (c *Conn) CloseWrite() error {
	if c.closed.Load() {
		return c.opError("close", net.ErrClosed)
	}
	c.finMu.Lock()
	defer c.finMu.Unlock()
	err := c.shutdown(unix.SHUT_WR)
	if err == nil {
		afterShutdown()
		c.finQueued.Store(true)
	}
	return err
}

// afterShutdown runs between CloseWrite's shutdown and its finQueued; a
// hook for tests.
var afterShutdown = func() {}

// SendPayload returns SendQueued and SendNotSent, the payload's bytes
// alone: the FIN, which the kernel counts as a byte of the queue from
// the shutdown on, is left out when CloseWrite queued it. The counts are
// read under the lock CloseWrite holds across its shutdown and its note of
// the FIN: read apart, a reset in between had a FIN in the counts and
// none noted, and it was counted a byte of payload never sent.
func (c *Conn) SendPayload() (unacked, notSent int, err error) {
	c.finMu.Lock()
	defer c.finMu.Unlock()
	if unacked, err = c.SendQueued(); err != nil {
		return 0, 0, err
	}
	fin := 0
	if c.finQueued.Load() {
		fin = 1
	}
	if unacked <= fin {
		// What was never sent is part of what is not acknowledged: with
		// no payload in the one, none is in the other. The common close
		// (the destination had it all) asks once.
		return 0, 0, nil
	}
	if notSent, err = c.SendNotSent(); err != nil {
		return 0, 0, err
	}
	return unacked - fin, max(notSent-fin, 0), nil
}

// FINQueued reports whether CloseWrite queued the connection's FIN, which
// SendQueued and SendNotSent count as a byte until it is acknowledged, or
// sent.
func (c *Conn) FINQueued() bool { return c.finQueued.Load() }

func (c *Conn) shutdown(how int) error {
	var e syscall.Errno
	err := c.rc.Control(func(fd uintptr) {
		_, _, e = unix.RawSyscall(unix.SYS_SHUTDOWN, fd, uintptr(how), 0)
	})
	if e != 0 {
		return c.opError("close", os.NewSyscallError("shutdown", e)) // as net says it
	}
	return c.result("close", err, 0)
}

// Read implements net.Conn.
func (c *Conn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	if c.closed.Load() {
		return 0, c.opError("read", net.ErrClosed)
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.rbuf, c.rn, c.rerr = b, 0, 0
	err := c.rc.Read(c.readFn)
	c.rbuf = nil
	if err := c.result("read", err, c.rerr); err != nil {
		return 0, err
	}
	if c.rn == 0 {
		if c.closed.Load() { // the end Close made
			return 0, c.opError("read", net.ErrClosed)
		}
		return 0, io.EOF
	}
	return c.rn, nil
}

func (c *Conn) doRead(fd uintptr) bool {
	n, e := ReadFD(fd, c.rbuf)
	if e == syscall.EAGAIN {
		return false // the poller waits, then calls again
	}
	c.rn, c.rerr = n, e
	return true
}

// Write implements net.Conn: it writes all of b, or returns an error.
func (c *Conn) Write(b []byte) (int, error) {
	if c.closed.Load() {
		return 0, c.opError("write", net.ErrClosed)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wbuf, c.wn, c.werr, c.wtold = b, 0, 0, -1
	err := c.rc.Write(c.writeFn)
	c.wbuf = nil
	if c.wtold >= 0 {
		c.wwait.WriteWaiting(false)
	}
	return c.wn, c.result("write", err, c.werr)
}

func (c *Conn) doWrite(fd uintptr) bool {
	for c.wn < len(c.wbuf) {
		n, e := writeFD(fd, c.wbuf[c.wn:])
		switch {
		case e == syscall.EAGAIN:
			if c.wwait != nil && c.wtold != c.wn {
				// About to wait in the poller, the first time or after
				// progress: the waiter's clock starts (again) now.
				c.wtold = c.wn
				c.wwait.WriteWaiting(true)
			}
			return false
		case e != 0:
			c.werr = e
			return true
		case n == 0:
			c.werr = syscall.EIO // no progress and no error: never loop on it
			return true
		default:
			c.wn += n
		}
	}
	return true
}

// SendQueued returns the bytes in the socket's send queue that the
// destination has not acknowledged yet (SIOCOUTQ). They go down as it
// takes them, also while a Write waits for room: the kernel wakes a
// waiting writer only once a good part of the buffer is free, so a
// destination reading slowly but steadily can leave it waiting long after
// its last progress; a watch of stalled writes asks here before it calls a
// write stalled.
func (c *Conn) SendQueued() (int, error) { return c.ioctlInt(unix.SIOCOUTQ) }

// SendNotSent returns the bytes in the socket's send queue never sent
// (SIOCOUTQNSD): the peer's window kept them back. Like SendQueued, it
// still counts them once the connection was reset, until the socket is
// closed: what a reset peer cannot have read.
func (c *Conn) SendNotSent() (int, error) { return c.ioctlInt(siocOutqNSQ) }

func (c *Conn) ioctlInt(req uint) (int, error) {
	var (
		n int32
		e syscall.Errno
	)
	// A raw system call, as the socket's others: these queue counts never
	// block, and every upstream connection's close asks for them.
	if err := c.rc.Control(func(fd uintptr) {
		_, _, e = unix.RawSyscall(unix.SYS_IOCTL, fd, uintptr(req), uintptr(unsafe.Pointer(&n)))
	}); err != nil {
		return 0, c.opError("ioctl", err)
	}
	if e != 0 {
		return 0, c.opError("ioctl", e)
	}
	return int(n), nil
}

// result is the error a call through the raw connection ended with: the
// poller's (err), or the system call's (e); nil for neither.
func (c *Conn) result(op string, err error, e syscall.Errno) error {
	switch {
	case (err != nil || e != 0) && c.closed.Load():
		return c.opError(op, net.ErrClosed) // Close woke the call
	case err != nil:
		return c.opError(op, err)
	case e != 0:
		return c.opError(op, os.NewSyscallError(op, e))
	}
	return nil
}

// opError wraps err as the net package's own calls do. Errors of the
// poller (a deadline, the connection closed) come as an OpError of
// "raw-read" or "raw-write" already, renamed here, and given the
// addresses a Dialer's socket did not have when it was made. (Errors of
// the methods Conn does not override, SetDeadline's say, carry those.)
func (c *Conn) opError(op string, err error) error {
	if oe, ok := errors.AsType[*net.OpError](err); ok {
		oe.Op, oe.Source, oe.Addr = op, c.LocalAddr(), c.RemoteAddr()
		return oe
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// SyscallConn returns the raw connection Conn reads and writes through,
// rather than a new one per call (the relay and the keep-alive peek ask).
func (c *Conn) SyscallConn() (syscall.RawConn, error) { return c.rc, nil }

// Ended reports whether the connection has ended in a reset or a timeout
// (Linux's TCP_CLOSE): its send queue is gone, what it held never to be
// sent, though SendNotSent still counts it until the socket is closed.
func (c *Conn) Ended() bool {
	var ti *unix.TCPInfo
	var e error
	if err := c.rc.Control(func(fd uintptr) { ti, e = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil || e != nil {
		return false
	}
	return ti.State == tcpClose
}
