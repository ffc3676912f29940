package proxy

import (
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// fakeUDPClient is the client's end of a UDP flow the way netstack hands it
// to HandleUDP, without a gVisor stack: datagrams the test injects are read
// by the proxy, and what the proxy writes arrives on out. It offers both
// the blocking net.Conn reads and netstack.UDPConn's readiness calls.
type fakeUDPClient struct {
	mu       sync.Mutex
	queue    [][]byte // injected, not yet read; the test keeps the bytes unchanged until read
	notify   func()
	closed   bool
	ended    chan struct{} // closed by Close: for a relayed flow, the flow has ended
	wake     chan struct{} // a blocked Read waits on it
	deadline time.Time
	timer    *time.Timer // reused by blocking Reads: no allocation per read
	out      chan []byte // datagrams written to the client
	outBufs  [][]byte    // out's buffers, reused round robin
	outNext  int
	client   netip.AddrPort
	dest     netip.AddrPort
	readErr  error // returned by the next read, once
	starved  bool  // a read found the queue empty since the last inject
}

func newFakeUDPClient(client, dest netip.AddrPort) *fakeUDPClient {
	c := &fakeUDPClient{wake: make(chan struct{}, 1), ended: make(chan struct{}), out: make(chan []byte, 64), client: client, dest: dest}
	c.outBufs = make([][]byte, cap(c.out)+2)
	for i := range c.outBufs {
		c.outBufs[i] = make([]byte, 64<<10)
	}
	c.timer = time.NewTimer(time.Hour)
	c.timer.Stop()
	return c
}

// inject queues a datagram from the client, as the stack does when one
// arrives: a notification when the queue was empty.
func (c *fakeUDPClient) inject(b []byte) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	wasEmpty := len(c.queue) == 0
	c.queue = append(c.queue, b)
	c.starved = false
	fn := c.notify
	c.mu.Unlock()
	if wasEmpty {
		select {
		case c.wake <- struct{}{}:
		default:
		}
		if fn != nil {
			fn()
		}
	}
}

func (c *fakeUDPClient) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// TryRead implements the readiness interface.
func (c *fakeUDPClient) TryRead(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	if err := c.readErr; err != nil {
		c.readErr = nil
		return 0, err
	}
	if len(c.queue) == 0 {
		c.starved = true
		return 0, netstack.ErrWouldBlock
	}
	n := copy(b, c.queue[0])
	// Shifted in place: the queue's array is reused, so reading and
	// injecting allocate nothing once it has grown.
	copy(c.queue, c.queue[1:])
	c.queue[len(c.queue)-1] = nil
	c.queue = c.queue[:len(c.queue)-1]
	return n, nil
}

// OnReadable implements the readiness interface.
func (c *fakeUDPClient) OnReadable(fn func()) {
	c.mu.Lock()
	c.notify = fn
	c.mu.Unlock()
}

func (c *fakeUDPClient) Read(b []byte) (int, error) {
	for {
		n, err := c.TryRead(b)
		if err != netstack.ErrWouldBlock {
			return n, err
		}
		c.mu.Lock()
		d := c.deadline
		c.mu.Unlock()
		var expired <-chan time.Time
		if !d.IsZero() {
			wait := time.Until(d)
			if wait <= 0 {
				return 0, os.ErrDeadlineExceeded
			}
			c.timer.Reset(wait)
			expired = c.timer.C
		}
		select {
		case <-c.wake:
			c.timer.Stop()
		case <-expired:
		}
	}
}

func (c *fakeUDPClient) Write(b []byte) (int, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return 0, net.ErrClosed
	}
	buf := c.outBufs[c.outNext%len(c.outBufs)]
	c.outNext++
	c.mu.Unlock()
	n := copy(buf, b)
	select {
	case c.out <- buf[:n]:
	default: // nobody reads: dropped, as a full socket buffer would
	}
	return len(b), nil
}

func (c *fakeUDPClient) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	close(c.ended)
	fn := c.notify
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	if fn != nil {
		fn()
	}
	return nil
}

func (c *fakeUDPClient) LocalAddr() net.Addr  { return net.UDPAddrFromAddrPort(c.dest) }
func (c *fakeUDPClient) RemoteAddr() net.Addr { return net.UDPAddrFromAddrPort(c.client) }
func (c *fakeUDPClient) SetDeadline(t time.Time) error {
	return c.SetReadDeadline(t)
}

func (c *fakeUDPClient) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}: // a blocked Read looks at the new deadline
	default:
	}
	return nil
}
func (c *fakeUDPClient) SetWriteDeadline(time.Time) error { return nil }

// blockingOnly hides the readiness calls: the proxy must fall back to
// blocking reads.
type blockingOnly struct{ *fakeUDPClient }

func (b blockingOnly) TryRead()    {}
func (b blockingOnly) OnReadable() {}

// failRead has the next read fail with err, as the stack reports an ICMP
// error the client sent, and announces it.
func (c *fakeUDPClient) failRead(err error) {
	c.mu.Lock()
	c.readErr = err
	fn := c.notify
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	if fn != nil {
		fn()
	}
}
