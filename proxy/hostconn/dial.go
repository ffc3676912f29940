package hostconn

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Dialer connects to destinations without the system calls that wake the
// runtime's monitor thread (see the package comment): connect(2) is made
// raw, on a socket that was made ahead, and Close ends the connection at
// once with a raw shutdown(2) but leaves close(2) for later.
//
// Making a socket the net package can wait on takes ordinary system calls
// (os.NewFile's fcntl, net.FileConn's dup), and so does close(2). Done one
// connection at a time, each wakes the monitor after an idle spell, and it
// then polls every 20 µs for a while: on a guest where a thread wake-up is
// dear, about a tenth of a new bumped connection's CPU (benchmarks.md,
// "Dials that do not wake the monitor"). The Dialer makes its
// sockets spareBatch at a time and closes the connections it dialled in
// batches, at most closeDelay after they were closed, so that one wake-up
// serves many connections.
//
// A raw connect keeps its processor for as long as the kernel takes:
// choosing a local port, which with very many connections to one
// destination can take a while, and to a loopback destination the whole
// handshake. Beyond the connections in use, a Dialer holds up to
// spareBatch sockets per address family and up to maxClosing descriptors
// waiting to be closed.
//
// The zero Dialer is ready to use. Close releases its spare sockets.
// Closes are batched only for its own connections; a connection Wrap
// made closes as its *net.TCPConn does.
type Dialer struct {
	// Timeout bounds a connect, besides the context's deadline; 0: none.
	Timeout time.Duration
	// KeepAlive is the idle time before TCP keep-alive probes (every 15 s,
	// 9 of them, as the net package's Dialer sends); 0: 15 s; negative:
	// no probes.
	KeepAlive time.Duration

	mu      sync.Mutex
	spare   [2][]*net.TCPConn // unconnected sockets: IPv4, IPv6
	filling [2]bool           // a dial is making a batch
	closed  bool
	closer  closer
}

const (
	// spareBatch is how many sockets are made at a time, and the most
	// kept per address family.
	spareBatch = 16
	// closeDelay is the longest a closed connection's descriptor waits
	// for the batch that closes it.
	closeDelay = 10 * time.Millisecond
	// maxClosing bounds the descriptors waiting for a batch close: more
	// are closed at once.
	maxClosing = 256
)

// aLongTimeAgo is a deadline already past: it wakes a connect that waits.
var aLongTimeAgo = time.Unix(1, 0)

// DialContext connects to dst. The connection's Read and Write are raw
// system calls (Conn); its errors are the net package's kind (an
// *net.OpError of "dial" wrapping the system call's error, a timeout or
// the context's error).
func (d *Dialer) DialContext(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	raddr := net.TCPAddrFromAddrPort(dst)
	if dst.Addr().Zone() != "" || !dst.Addr().IsValid() {
		nd := net.Dialer{Timeout: d.Timeout, KeepAlive: d.KeepAlive}
		c, err := nd.DialContext(ctx, "tcp", dst.String())
		if err != nil {
			return nil, err
		}
		return Wrap(c), nil
	}
	opErr := func(err error) error { return &net.OpError{Op: "dial", Net: "tcp", Addr: raddr, Err: err} }
	if err := ctx.Err(); err != nil {
		return nil, opErr(err)
	}
	deadline := d.deadline(ctx)
	fam := 0
	if dst.Addr().Is6() {
		fam = 1
	}
	tc, err := d.take(fam)
	if err != nil {
		return nil, opErr(err)
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		tc.Close()
		return nil, opErr(err)
	}
	c := newConn(tc, rc)
	c.closer, c.raddr = &d.closer, raddr
	if err := c.connect(ctx, dst, deadline); err != nil {
		c.Close()
		if cerr := ctx.Err(); cerr != nil && errors.Is(err, os.ErrDeadlineExceeded) {
			err = cerr // the context's end set the deadline, or came with it
		}
		return nil, opErr(err)
	}
	return c, nil
}

func (d *Dialer) keepAlive() net.KeepAliveConfig {
	switch {
	case d.KeepAlive < 0:
		return net.KeepAliveConfig{}
	case d.KeepAlive == 0:
		return net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second}
	}
	return net.KeepAliveConfig{Enable: true, Idle: d.KeepAlive}
}

// deadline is when a connect must have ended: the earlier of the
// context's deadline and the Timeout; zero for none.
func (d *Dialer) deadline(ctx context.Context) time.Time {
	dl, ok := ctx.Deadline()
	if d.Timeout > 0 {
		if t := time.Now().Add(d.Timeout); !ok || t.Before(dl) {
			dl, ok = t, true
		}
	}
	if !ok {
		return time.Time{}
	}
	return dl
}

// take returns an unconnected socket of family fam (0: IPv4, 1: IPv6),
// making a batch of them when none is spare. While one dial makes a
// batch, others make a socket each for themselves: a batch each would
// make many more than needed, and close the extras with ordinary calls.
func (d *Dialer) take(fam int) (*net.TCPConn, error) {
	d.mu.Lock()
	if s := d.spare[fam]; len(s) > 0 {
		tc := s[len(s)-1]
		d.spare[fam] = s[:len(s)-1]
		d.mu.Unlock()
		return tc, nil
	}
	n := spareBatch
	if d.closed || d.filling[fam] {
		n = 1 // none kept: Close released them, or another dial fills
	} else {
		d.filling[fam] = true
	}
	d.mu.Unlock()

	// The system calls of the batch, and of the closes waiting, come in
	// one burst: the monitor thread wakes for the burst, not for each.
	d.closer.flush()
	ka := d.keepAlive()
	batch := make([]*net.TCPConn, 0, n)
	var err error
	for range n {
		var tc *net.TCPConn
		if tc, err = newSocket(fam, ka); err != nil {
			break
		}
		batch = append(batch, tc)
	}
	if n > 1 {
		d.mu.Lock()
		d.filling[fam] = false
		if keep := min(len(batch)-1, spareBatch-len(d.spare[fam])); keep > 0 && !d.closed {
			d.spare[fam] = append(d.spare[fam], batch[1:1+keep]...)
			batch = slices.Delete(batch, 1, 1+keep)
		}
		d.mu.Unlock()
	}
	if len(batch) == 0 {
		return nil, err
	}
	for _, extra := range batch[1:] { // Close came meanwhile, or the spares are full
		extra.Close()
	}
	return batch[0], nil
}

// newSocket makes an unconnected, non-blocking TCP socket of family fam
// in the runtime's poller, with the options the net package's Dialer
// sets: no Nagle delay, and keep-alive as ka says.
func newSocket(fam int, ka net.KeepAliveConfig) (*net.TCPConn, error) {
	domain := unix.AF_INET
	if fam == 1 {
		domain = unix.AF_INET6
	}
	// Made blocking, so that os.NewFile does not put it in the poller
	// only to take it out again: net.FileConn's duplicate is made
	// non-blocking and put there.
	fd, err := unix.Socket(domain, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	f := os.NewFile(uintptr(fd), "hostconn")
	c, err := net.FileConn(f) // it also sets TCP_NODELAY
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("making a socket the poller waits on: %w", err)
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("making a socket: got a %T", c)
	}
	if err := tc.SetKeepAliveConfig(ka); err != nil {
		tc.Close()
		return nil, err
	}
	return tc, nil
}

// Close releases the spare sockets and closes the connections waiting
// for a batch close. Connections dialled already stay usable, and so does
// the Dialer, which then makes a socket per dial and keeps none.
func (d *Dialer) Close() {
	d.mu.Lock()
	d.closed = true
	spare := d.spare
	d.spare = [2][]*net.TCPConn{}
	d.mu.Unlock()
	d.closer.mu.Lock()
	if d.closer.timer != nil {
		d.closer.timer.Stop() // the flush below does its work
	}
	d.closer.mu.Unlock()
	for _, s := range spare {
		for _, tc := range s {
			tc.Close()
		}
	}
	d.closer.flush()
}

// connect connects c's socket to dst with a raw connect(2), and waits in
// the poller for the handshake to end, until deadline (zero: none) or the
// end of ctx.
func (c *Conn) connect(ctx context.Context, dst netip.AddrPort, deadline time.Time) error {
	var sa unix.RawSockaddrAny
	size := sockaddr(&sa, dst)
	var e syscall.Errno
	if err := c.rc.Control(func(fd uintptr) {
		for {
			_, _, e = unix.RawSyscall(unix.SYS_CONNECT, fd, uintptr(unsafe.Pointer(&sa)), uintptr(size))
			if e != syscall.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	switch e {
	case 0, syscall.EISCONN:
	case syscall.EINPROGRESS, syscall.EALREADY:
		if err := c.awaitConnect(ctx, deadline); err != nil {
			return err
		}
	default:
		return os.NewSyscallError("connect", e)
	}
	var local unix.RawSockaddrAny
	n := uint32(unsafe.Sizeof(local))
	if err := c.rc.Control(func(fd uintptr) {
		_, _, e = unix.RawSyscall(unix.SYS_GETSOCKNAME, fd, uintptr(unsafe.Pointer(&local)), uintptr(unsafe.Pointer(&n)))
	}); err != nil {
		return err
	}
	if e != 0 {
		return os.NewSyscallError("getsockname", e)
	}
	c.laddr = tcpAddr(&local)
	return nil
}

// awaitConnect waits for a connect in progress to end.
func (c *Conn) awaitConnect(ctx context.Context, deadline time.Time) error {
	if !deadline.IsZero() {
		if err := c.SetWriteDeadline(deadline); err != nil {
			return err
		}
	}
	var stop func() bool
	if ctx.Done() != nil {
		stop = context.AfterFunc(ctx, func() { c.SetWriteDeadline(aLongTimeAgo) })
	}
	var e syscall.Errno
	err := c.rc.Write(func(fd uintptr) bool {
		// Until the handshake ends the socket is not writable, and the
		// poller's readiness from before the connect was reset: a call
		// that finds the handshake still going waits for the next edge.
		var soErr int32
		n := uint32(4)
		_, _, e = unix.RawSyscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_ERROR, uintptr(unsafe.Pointer(&soErr)), uintptr(unsafe.Pointer(&n)), 0)
		if e == 0 && soErr != 0 {
			e = syscall.Errno(soErr)
		}
		if e != 0 {
			return true
		}
		var peer unix.RawSockaddrAny
		pn := uint32(unsafe.Sizeof(peer))
		_, _, e = unix.RawSyscall(unix.SYS_GETPEERNAME, fd, uintptr(unsafe.Pointer(&peer)), uintptr(unsafe.Pointer(&pn)))
		if e == syscall.ENOTCONN {
			e = 0
			return false
		}
		return true
	})
	if stop != nil && !stop() {
		// The context ended, and its past deadline may be set on the
		// socket at any moment: the dial fails, as it would have.
		return ctx.Err()
	}
	if err == nil && !deadline.IsZero() {
		err = c.SetWriteDeadline(time.Time{})
	}
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return os.ErrDeadlineExceeded
		}
		return err
	}
	if e != 0 {
		return os.NewSyscallError("connect", e)
	}
	return nil
}

// sockaddr writes dst (IPv4, or IPv6 without a zone) into sa, and
// returns its length.
func sockaddr(sa *unix.RawSockaddrAny, dst netip.AddrPort) int {
	if a := dst.Addr(); a.Is4() {
		s4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		s4.Family, s4.Addr = unix.AF_INET, a.As4()
		binary.BigEndian.PutUint16(portBytes(&s4.Port), dst.Port())
		return unix.SizeofSockaddrInet4
	}
	s6 := (*unix.RawSockaddrInet6)(unsafe.Pointer(sa))
	s6.Family, s6.Addr = unix.AF_INET6, dst.Addr().As16()
	binary.BigEndian.PutUint16(portBytes(&s6.Port), dst.Port())
	return unix.SizeofSockaddrInet6
}

// tcpAddr is the address in sa, nil when it is of neither IP family.
func tcpAddr(sa *unix.RawSockaddrAny) *net.TCPAddr {
	switch sa.Addr.Family {
	case unix.AF_INET:
		s4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return net.TCPAddrFromAddrPort(netip.AddrPortFrom(netip.AddrFrom4(s4.Addr), binary.BigEndian.Uint16(portBytes(&s4.Port))))
	case unix.AF_INET6:
		s6 := (*unix.RawSockaddrInet6)(unsafe.Pointer(sa))
		return net.TCPAddrFromAddrPort(netip.AddrPortFrom(netip.AddrFrom16(s6.Addr), binary.BigEndian.Uint16(portBytes(&s6.Port))))
	}
	return nil
}

// portBytes is a sockaddr's port field as the bytes it holds: network
// order, whatever the host's.
func portBytes(p *uint16) []byte { return (*[2]byte)(unsafe.Pointer(p))[:] }

// closer closes the descriptors of connections already shut down, in
// batches.
type closer struct {
	mu      sync.Mutex
	pending []*net.TCPConn
	timer   *time.Timer
	delay   time.Duration // 0: closeDelay (tests set it)
}

// add closes tc within closeDelay, with others.
func (cl *closer) add(tc *net.TCPConn) {
	cl.mu.Lock()
	cl.pending = append(cl.pending, tc)
	n := len(cl.pending)
	if n == 1 {
		delay := cmp.Or(cl.delay, closeDelay)
		if cl.timer == nil {
			cl.timer = time.AfterFunc(delay, cl.flush)
		} else {
			cl.timer.Reset(delay)
		}
	}
	cl.mu.Unlock()
	if n >= maxClosing {
		cl.flush()
	}
}

// flush closes what waits.
func (cl *closer) flush() {
	cl.mu.Lock()
	p := cl.pending
	cl.pending = nil
	cl.mu.Unlock()
	for _, tc := range p {
		tc.Close()
	}
}
