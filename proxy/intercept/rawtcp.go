package intercept

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawTCP is a host TCP connection to a bumped destination whose reads and
// writes are raw system calls on its non-blocking socket, made through its
// RawConn, which waits in the runtime's poller (deadlines included) when
// the socket has nothing to read or no room to write.
//
// net.TCPConn's own calls tell the runtime they might block, and the
// runtime then wakes its monitor thread after an idle spell; a kept-alive
// request costs the appliance a write and two reads on this socket, and
// that bookkeeping showed as a tenth of its CPU (docs/benchmarks.md). The
// GENEVE sockets make the same calls raw (netstack/batchio.go).
type rawTCP struct {
	*net.TCPConn // deadlines, addresses, CloseWrite, SyscallConn, Close
	rc           syscall.RawConn
	rd, wr       rawIO // each used under the socket's read or write lock
}

// rawIO is one direction's call in progress: its buffer and outcome, and
// the callback bound once, so that no call allocates.
type rawIO struct {
	buf   []byte
	n     int
	errno syscall.Errno
	fn    func(fd uintptr) bool
}

// newRawTCP wraps c, or returns c as it is when its socket cannot be had.
func newRawTCP(c *net.TCPConn) net.Conn {
	rc, err := c.SyscallConn()
	if err != nil {
		return c
	}
	t := &rawTCP{TCPConn: c, rc: rc}
	t.rd.fn, t.wr.fn = t.doRead, t.doWrite
	return t
}

// rawUpstream wraps a host TCP connection in rawTCP; any other connection
// is returned as it is.
func rawUpstream(c net.Conn) net.Conn {
	if tc, ok := c.(*net.TCPConn); ok {
		return newRawTCP(tc)
	}
	return c
}

func (t *rawTCP) doRead(fd uintptr) bool {
	for {
		n, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&t.rd.buf[0])), uintptr(len(t.rd.buf)))
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		t.rd.n, t.rd.errno = int(n), e
		return true
	}
}

func (t *rawTCP) doWrite(fd uintptr) bool {
	for t.wr.n < len(t.wr.buf) {
		p := t.wr.buf[t.wr.n:]
		n, _, e := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		switch e {
		case 0:
			t.wr.n += int(n)
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			t.wr.errno = e
			return true
		}
	}
	return true
}

// Read implements net.Conn.
func (t *rawTCP) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	t.rd.buf, t.rd.n, t.rd.errno = b, 0, 0
	err := t.rc.Read(t.rd.fn)
	n, errno := t.rd.n, t.rd.errno
	t.rd.buf = nil
	switch {
	case err != nil:
		return 0, t.opError("read", err)
	case errno != 0:
		return 0, t.opError("read", errno)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// Write implements net.Conn: all of b, or an error.
func (t *rawTCP) Write(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	t.wr.buf, t.wr.n, t.wr.errno = b, 0, 0
	err := t.rc.Write(t.wr.fn)
	n, errno := t.wr.n, t.wr.errno
	t.wr.buf = nil
	switch {
	case err != nil:
		return n, t.opError("write", err)
	case errno != 0:
		return n, t.opError("write", errno)
	}
	return n, nil
}

// Abort closes the connection with a RST (see Abort).
func (t *rawTCP) Abort() {
	_ = t.TCPConn.SetLinger(0)
	t.TCPConn.Close()
}

// opError wraps err as net.TCPConn would, so that callers see a net.Error
// (a deadline is a Timeout, a closed connection net.ErrClosed).
func (t *rawTCP) opError(op string, err error) error {
	if errno, ok := err.(syscall.Errno); ok {
		err = os.NewSyscallError(op, errno)
	}
	return &net.OpError{Op: op, Net: "tcp", Source: t.LocalAddr(), Addr: t.RemoteAddr(), Err: err}
}
