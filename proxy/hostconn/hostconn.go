// Package hostconn reads and writes the appliance's host TCP connections
// (its connections to destinations) with raw system calls.
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
// loopback write includes the receiver's input path.
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
	"syscall"
)

// Conn is a host TCP connection whose Read and Write are raw system
// calls. Everything else is the *net.TCPConn's.
type Conn struct {
	*net.TCPConn
	rc syscall.RawConn

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
	w := &Conn{TCPConn: tc, rc: rc}
	w.readFn, w.writeFn = w.doRead, w.doWrite
	return w
}

// Read implements net.Conn.
func (c *Conn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
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
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wbuf, c.wn, c.werr = b, 0, 0
	err := c.rc.Write(c.writeFn)
	c.wbuf = nil
	return c.wn, c.result("write", err, c.werr)
}

func (c *Conn) doWrite(fd uintptr) bool {
	for c.wn < len(c.wbuf) {
		n, e := writeFD(fd, c.wbuf[c.wn:])
		switch {
		case e == syscall.EAGAIN:
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

// result is the error a call through the raw connection ended with: the
// poller's (err), or the system call's (e); nil for neither.
func (c *Conn) result(op string, err error, e syscall.Errno) error {
	switch {
	case err != nil:
		return c.opError(op, err)
	case e != 0:
		return c.opError(op, os.NewSyscallError(op, e))
	}
	return nil
}

// opError wraps err as the net package's own calls do. Errors of the
// poller (a deadline, the connection closed) come as an OpError of
// "raw-read" or "raw-write" already, renamed here.
func (c *Conn) opError(op string, err error) error {
	if oe, ok := errors.AsType[*net.OpError](err); ok {
		oe.Op = op
		return oe
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// SyscallConn returns the raw connection Conn reads and writes through,
// rather than a new one per call (the relay and the keep-alive peek ask).
func (c *Conn) SyscallConn() (syscall.RawConn, error) { return c.rc, nil }

// Abort closes the connection with a RST (a zero linger).
func (c *Conn) Abort() {
	_ = c.SetLinger(0)
	c.Close()
}
