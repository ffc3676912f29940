package netstack

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/waiter"
)

// ErrWouldBlock is what TryRead (of UDPConn and Conn) returns when nothing
// waits to be read.
var ErrWouldBlock = errors.New("netstack: nothing waiting to be read")

// UDPConn is the stack's end of a UDP flow, handed to Handler.HandleUDP.
// Besides net.Conn it offers what lets an idle flow hold neither a goroutine
// nor a buffer on this side: OnReadable calls a function when a datagram
// arrives, and TryRead reads one without waiting. A reader parked in Read
// would hold both for as long as the flow lasts.
//
// Write never blocks: a datagram the stack cannot take at once (its send
// buffer is full) is dropped, as a full socket buffer drops it, and Write
// returns ErrWouldBlock.
type UDPConn struct {
	wq     waiter.Queue
	ep     tcpip.Endpoint
	local  netip.AddrPort // the flow's destination, which this end stands for
	remote netip.AddrPort // the client
	closed atomic.Bool

	notify readNotify // OnReadable's: registered on first use, removed by Close

	rw endpointIO

	dmu          sync.Mutex
	readDeadline time.Time
}

// newUDPConn returns a conn whose wait queue is ready to be handed to the
// forwarder's CreateEndpoint; attach completes it.
func newUDPConn() *UDPConn { return new(UDPConn) }

func (c *UDPConn) attach(ep tcpip.Endpoint, client, dest netip.AddrPort) {
	c.ep, c.remote, c.local = ep, client, dest
}

// The events a reader waits for: a datagram, or the end of the endpoint.
const udpReadEvents = waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr

// OnReadable arranges for fn to be called whenever a datagram arrives while
// none was waiting, and when the conn is closed. fn runs on the stack's
// packet path: it must not block, and must not call Close (nor OnReadable).
// A later call replaces fn; nil stops the calls. Datagrams that were waiting
// before the first call are not announced: read them with TryRead.
func (c *UDPConn) OnReadable(fn func()) {
	c.notify.set(&c.wq, udpReadEvents, fn, c.closed.Load)
}

// TryRead reads one waiting datagram into b without blocking, truncating it
// to len(b). It returns ErrWouldBlock when none waits, and an error wrapping
// net.ErrClosed once the conn is closed.
func (c *UDPConn) TryRead(b []byte) (int, error) {
	res, terr := c.rw.read(c.ep, b)
	if terr != nil {
		return 0, c.readError(terr)
	}
	return res.Count, nil
}

func (c *UDPConn) readError(terr tcpip.Error) error {
	switch terr.(type) {
	case *tcpip.ErrWouldBlock:
		return ErrWouldBlock
	case *tcpip.ErrClosedForReceive, *tcpip.ErrInvalidEndpointState:
		return c.opError("read", net.ErrClosed)
	case *tcpip.ErrConnectionRefused:
		// The client answered a datagram with ICMP port unreachable:
		// its socket is gone (only the client's own unreachable reaches
		// the stack: checkICMPError).
		return c.opError("read", syscall.ECONNREFUSED)
	}
	return c.opError("read", errors.New(terr.String()))
}

func (c *UDPConn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "udp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// Read waits for a datagram, until the read deadline or Close.
func (c *UDPConn) Read(b []byte) (int, error) {
	n, err := c.TryRead(b)
	if err != ErrWouldBlock {
		return n, err
	}
	// EventInternal: SetReadDeadline wakes a waiting Read with it, so a
	// new deadline applies to a Read already waiting, as net.Conn asks.
	entry, ch := waiter.NewChannelEntry(udpReadEvents | waiter.EventInternal)
	c.wq.EventRegister(&entry)
	defer c.wq.EventUnregister(&entry)
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		// Read again once registered: a datagram that came in between
		// announced itself to nobody.
		n, err := c.TryRead(b)
		if err != ErrWouldBlock {
			return n, err
		}
		c.dmu.Lock()
		d := c.readDeadline
		c.dmu.Unlock()
		var expired <-chan time.Time
		if !d.IsZero() {
			wait := time.Until(d)
			if wait <= 0 {
				return 0, c.opError("read", os.ErrDeadlineExceeded)
			}
			if timer == nil {
				timer = time.NewTimer(wait)
			} else {
				timer.Reset(wait)
			}
			expired = timer.C
		}
		select {
		case <-ch:
		case <-expired:
		}
	}
}

// Write sends b to the client as one datagram, without blocking.
func (c *UDPConn) Write(b []byte) (int, error) {
	c.rw.wmu.Lock()
	n, terr := c.rw.writeLocked(c.ep, b)
	c.rw.wmu.Unlock()
	if terr != nil {
		switch terr.(type) {
		case *tcpip.ErrWouldBlock:
			return 0, ErrWouldBlock
		case *tcpip.ErrClosedForSend, *tcpip.ErrInvalidEndpointState:
			return 0, c.opError("write", net.ErrClosed)
		}
		return 0, c.opError("write", fmt.Errorf("%s", terr))
	}
	return int(n), nil
}

// Close closes the endpoint: a waiting Read returns, and OnReadable's
// function is called one last time.
func (c *UDPConn) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	c.ep.Close()
	c.notify.stop(&c.wq)
	return nil
}

// LocalAddr is the flow's destination, which this end of it stands for.
func (c *UDPConn) LocalAddr() net.Addr { return net.UDPAddrFromAddrPort(c.local) }

// RemoteAddr is the client.
func (c *UDPConn) RemoteAddr() net.Addr { return net.UDPAddrFromAddrPort(c.remote) }

// SetDeadline sets the read deadline; writes never wait.
func (c *UDPConn) SetDeadline(t time.Time) error { return c.SetReadDeadline(t) }

// SetReadDeadline bounds Reads, those waiting already included.
func (c *UDPConn) SetReadDeadline(t time.Time) error {
	c.dmu.Lock()
	c.readDeadline = t
	c.dmu.Unlock()
	c.wq.Notify(waiter.EventInternal)
	return nil
}

// SetWriteDeadline does nothing: writes never wait.
func (c *UDPConn) SetWriteDeadline(time.Time) error { return nil }
