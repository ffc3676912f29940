package netstack

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// Conn is an accepted client connection. Besides net.Conn (gonet's) it
// offers what UDPConn offers, so that a relay holds neither a goroutine
// nor a buffer on this side while the client is quiet: TryRead reads
// without waiting, Readable says whether it would get anything, and
// OnReadable calls a function when bytes, the client's FIN or an error
// arrive. A reader parked in Read holds both for as long as the connection
// lasts, and most connections are quiet most of their life.
//
// TryRead and Read must not be mixed while either may run: a connection
// has one reader.
type Conn struct {
	*gonet.TCPConn
	wq    *waiter.Queue
	ep    tcpip.Endpoint
	state atomic.Uint32 // connClosed, connReclaimed: how it ended, if it has

	notify readNotify // OnReadable's: registered on first use, removed by Close

	rw    endpointIO
	wdl   deadline    // Write's
	wwait WriteWaiter // OnWriteWait's, guarded by rw.wmu
	// readWait is OnReadWait's function, nil if none.
	readWait atomic.Pointer[func()]

	// live is the shard counting the conn for its client (reclaim.go),
	// set by Accept; liveOf, prev and next are guarded by its lock.
	live       *liveShard
	liveOf     *liveClient
	prev, next *Conn
	// held is what the handler holds for the conn outside the stack
	// (AddHeld), weighed by the reclaim with its buffers.
	held atomic.Int64
	// clientBroke is the client's reset, or its vanishing, as a Read or
	// TryRead took it from the stack, which reports it once: BrokenError
	// and ClientBroke say it after (clientbreak.go).
	clientBroke atomic.Pointer[error]
	// stackAborted says a Write or BrokenError took the stack's report
	// of its own abort (the stacks closing), which is not the client's
	// and is not kept as clientBroke: brokenNotEOF and BrokenError say it
	// (clientbreak.go).
	stackAborted atomic.Bool
	// resetAfterFIN says BrokenError took the stack's one report of a
	// reset after the client's FIN, which it says again after (abortKept).
	resetAfterFIN atomic.Bool
	// local and remote are the flow's destination and client, fixed at
	// accept: gonet's addresses are nil once the endpoint is not
	// connected, which callers such as x/net's HTTP/2 server do not
	// expect (they call String on them).
	local, remote netip.AddrPort

	// closedSend is TCPOptions.ClosedSendTimeout, and pressure the
	// server's memory pressure that shortens it (closedSendTimeout); set
	// by Accept, nil pressure for a conn of no server.
	closedSend time.Duration
	pressure   *atomic.Int32

	// flow is the conn's flow in the table, set by Accept (nil for a
	// conn of no server), and written what Write gave the stack, for
	// SendQueued.
	flow    *Flow
	written atomic.Int64
	// iss is the flow's Flow.iss when Accept made the conn: a client that
	// reset and connected again from the same port made a new connection
	// on the flow, whose counts are not this one's (ownFlow).
	iss uint64
}

// WriteWaiter learns when a Write waits for room in the send buffer: the
// client has accepted nothing of what is in it (a zero window) or not
// enough. It is how a relay bounds a write that makes no progress without
// a timer per write (package proxy).
type WriteWaiter interface {
	// WriteWaiting is called with true when a Write is about to wait, the
	// first time or after it has made progress since it last said so, and
	// with false when a Write that said true returns. It runs in the
	// writer's goroutine and must not call the conn.
	WriteWaiting(waiting bool)
}

// OnReadWait has *fn called by Read, in the reader's goroutine, each time
// it finds nothing to read and is about to wait for the client: a
// reader's writes held for what the client sent next can go now (the
// interception's upload hold). It replaces any function set before, and
// reports true: the conn supports it (wrappers report false when theirs
// does not). A pointer, so that StopReadWait stops only its own.
func (c *Conn) OnReadWait(fn *func()) bool {
	c.readWait.Store(fn)
	return true
}

// StopReadWait stops OnReadWait's fn, if it is still the one set.
func (c *Conn) StopReadWait(fn *func()) { c.readWait.CompareAndSwap(fn, nil) }

// OnWriteWait arranges for w to learn when Write waits; nil stops it.
// Writes that find room call nothing.
func (c *Conn) OnWriteWait(w WriteWaiter) {
	c.rw.wmu.Lock()
	c.wwait = w
	c.rw.wmu.Unlock()
}

// How a Conn ended (Conn.state), in one word so that each is decided
// against the other: the reclaim resets a conn only if its handler has not
// closed it, and a closed conn never reads as reclaimed, even for a moment.
const (
	// connClosed: Close or Abort has begun; reads say net.ErrClosed.
	connClosed uint32 = 1 << iota
	// connReclaimed: the server reset the conn, open, to reclaim memory;
	// errors say ErrMemoryReclaimed. The handler closes it still.
	connReclaimed
)

// closed reports whether Close or Abort has begun.
func (c *Conn) closed() bool { return c.state.Load()&connClosed != 0 }

// reclaimed reports whether the server reset c to reclaim memory.
func (c *Conn) reclaimed() bool { return c.state.Load()&connReclaimed != 0 }

// markClosed marks c closed and reports whether it was the first to.
func (c *Conn) markClosed() bool { return c.state.Or(connClosed)&connClosed == 0 }

func newConn(wq *waiter.Queue, ep tcpip.Endpoint, local, remote netip.AddrPort) *Conn {
	return &Conn{TCPConn: gonet.NewTCPConn(wq, ep), wq: wq, ep: ep, local: local, remote: remote}
}

// LocalAddr is the flow's destination, which this end of it stands for,
// for the conn's whole life.
func (c *Conn) LocalAddr() net.Addr { return net.TCPAddrFromAddrPort(c.local) }

// RemoteAddr is the client, for the conn's whole life: never nil, as
// gonet's is once the client has reset the connection.
func (c *Conn) RemoteAddr() net.Addr { return net.TCPAddrFromAddrPort(c.remote) }

// The events a reader waits for: bytes, the peer's FIN, or the end of the
// endpoint.
const tcpReadEvents = waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr

// TryRead reads what the client has sent into b without waiting. It
// returns ErrWouldBlock when nothing is waiting, io.EOF once the client's
// FIN has been read, also when the client reset or vanished after it
// (finBeforeBreak; BrokenError says the break), and an error wrapping
// net.ErrClosed after Close or Abort.
func (c *Conn) TryRead(b []byte) (int, error) {
	if c.closed() {
		return 0, c.opError(net.ErrClosed)
	}
	if len(b) == 0 {
		return 0, nil
	}
	res, terr := c.rw.read(c.ep, b)
	if terr == nil {
		if res.Count > 0 {
			// Receive buffer moderation grows the buffer only by what
			// the reader says it copied, as gonet's Read says: without
			// it a relayed connection's window stays at the 256 KiB it
			// starts with (initialTCPBuffer).
			c.ep.ModerateRecvBuf(res.Count)
		}
		return res.Count, nil
	}
	switch terr.(type) {
	case *tcpip.ErrWouldBlock:
		return 0, ErrWouldBlock
	case *tcpip.ErrClosedForReceive:
		if c.closed() {
			return 0, c.opError(net.ErrClosed)
		}
		if c.reclaimed() {
			// The stack reports the reset once; later reads still say
			// why, not that the client ended cleanly.
			return 0, c.opError(ErrMemoryReclaimed)
		}
		if why := c.brokenNotEOF(); why != nil {
			return 0, c.opError(why)
		}
		return 0, io.EOF
	}
	if c.closed() { // Abort or Close while this read ran
		return 0, c.opError(net.ErrClosed)
	}
	if !c.keepClientBreak(terr) { // reported once: kept for BrokenError
		c.keepStackAbort(terr)
	}
	if c.stackAborted.Load() {
		// The stack's abort purged what the client sent unread, its FIN
		// kept: no end of the stream (review rev33e F1).
		return 0, c.opError(errStackAborted)
	}
	if !c.reclaimed() && c.finBeforeBreak() {
		return 0, io.EOF
	}
	return 0, c.opError(c.stackError(terr))
}

// Read reads what the client has sent into b, waiting for it (gonet's
// Read), but says ErrMemoryReclaimed, not the stack's "operation aborted"
// or the end of the stream, once the server has reset the connection to
// reclaim memory: a reader waiting for the client's first bytes, or its
// next request, records why the connection ended. After Close or Abort it
// says net.ErrClosed, as TryRead does. Once the client's FIN
// is read, it says the end of the stream whatever broke the connection
// after the FIN, as TryRead does (finBeforeBreak). A Read that takes the
// client's reset, or its vanishing, from the stack calls OnReadable's
// function before it returns (clientbreak.go); so does one that ends on
// it after BrokenError took the stack's one report (the stack then says
// the end of the stream): bytes the client sent right before its reset,
// read since the watch first saw the break, may have begun a request.
// The Read that takes the break says it as TryRead does (ECONNRESET,
// ETIMEDOUT), not in gonet's words.
func (c *Conn) Read(b []byte) (int, error) {
	if fn := c.readWait.Load(); fn != nil && !c.Readable() {
		(*fn)()
	}
	n, err := c.TCPConn.Read(b)
	if err != nil && c.reclaimed() {
		return n, c.opError(ErrMemoryReclaimed)
	}
	if err != nil && c.closed() {
		// The appliance's own Close or Abort, as TryRead says it: gonet
		// says io.EOF, which every reader takes for the client's FIN
		// (the IDS plaintext showed a clean close for a client whose
		// reset the watch aborted the session for), or the reset the
		// Abort made.
		return n, c.opError(net.ErrClosed)
	}
	kept := err != nil && c.keepReadBreak(err)
	if kept || err != nil && c.ClientBroke() != nil && !c.closed() {
		c.notify.notified(0)
	}
	if kept && c.finBeforeBreak() {
		return n, io.EOF
	}
	if why := c.ClientBroke(); kept && why != nil {
		// gonet's own text ("operation timed out", no errno) for the
		// Read that took the break: said as every other read says it,
		// so that one event reads one way, whichever read took it.
		return n, c.opError(why)
	}
	if err == io.EOF && !c.closed() {
		if why := c.brokenNotEOF(); why != nil {
			return n, c.opError(why)
		}
	}
	return n, err
}

// brokenNotEOF is the client's break when a read finds the receive side
// closed because the connection broke, not because the client sent its
// FIN: once a Write has taken the stack's one report of a reset, the
// stack says "closed for receive" to reads, which gonet and TryRead call
// the end of the stream. A relay took that for the client's FIN, passed a
// clean FIN on to the destination (a cut upload that looked whole) and
// recorded "the client's connection broke after its FIN" for a client
// that never sent one. The Write keeps the break before it lets go of
// wmu: waiting for wmu is short, as in BrokenError. The stack's own
// abort (the stacks closing) that a Write or BrokenError took reads as
// errStackAborted, not as the end of the stream either, also after the
// client's FIN: the abort purged what was unread of its upload (review
// rev33e F1). Nil for a FIN, and for a client's break after one
// (finBeforeBreak; a reset after it is never kept either: ErrResetAfterFIN).
func (c *Conn) brokenNotEOF() error {
	if tcp.EndpointState(c.ep.State()) != tcp.StateError {
		return nil
	}
	c.rw.wmu.Lock()
	//lint:ignore SA2001 waiting for a Write keeping the break is the point
	c.rw.wmu.Unlock()
	if c.stackAborted.Load() {
		return errStackAborted
	}
	if c.finBeforeBreak() {
		return nil
	}
	return c.ClientBroke()
}

// Reclaimed is ErrMemoryReclaimed once the server has reset the connection
// to reclaim memory, nil before: a handler whose session ended for another
// cause it saw (a read error it takes for the client leaving) records this
// one instead.
func (c *Conn) Reclaimed() error {
	if c.reclaimed() {
		return ErrMemoryReclaimed
	}
	return nil
}

// stackError is the error for what the stack reports of a connection:
// ETIMEDOUT, as a host socket says it, when the client stopped answering
// (its keep-alive probes or retransmissions went unacknowledged), so that
// callers tell a vanished client from a reset one with errors.Is; the
// stack's own words otherwise.
func stackError(terr tcpip.Error) error {
	if _, ok := terr.(*tcpip.ErrTimeout); ok {
		return syscall.ETIMEDOUT
	}
	return errors.New(terr.String())
}

// stackError is stackError's, or ErrMemoryReclaimed once the server has
// reset the conn to reclaim memory.
func (c *Conn) stackError(terr tcpip.Error) error {
	if c.reclaimed() {
		return ErrMemoryReclaimed
	}
	return stackError(terr)
}

func (c *Conn) opError(err error) error {
	return &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// Write writes b to the client, waiting while the send buffer is full,
// until the write deadline passes or the connection ends. A Write that
// takes the client's reset, or its vanishing, from the stack keeps it
// (ClientBroke) and calls OnReadable's function before it returns, as
// Read does (clientbreak.go).
func (c *Conn) Write(b []byte) (int, error) {
	c.rw.wmu.Lock()
	defer c.rw.wmu.Unlock()
	dl := c.wdl.done()
	select {
	case <-dl:
		return 0, c.writeError(os.ErrDeadlineExceeded)
	default:
	}
	var (
		n     int
		entry *waiter.Entry // made only once the send buffer is full
		room  <-chan struct{}
		told  = -1 // n when wwait last heard this Write wait; -1: never
	)
	for n < len(b) {
		m, terr := c.rw.writeLocked(c.ep, b[n:])
		n += int(m)
		if m > 0 {
			c.written.Add(m)
		}
		switch terr.(type) {
		case nil:
			continue
		case *tcpip.ErrWouldBlock:
		default:
			if c.closed() {
				return n, c.writeError(net.ErrClosed)
			}
			// Reported once: kept for BrokenError before wmu is let go
			// (it waits for that), and the watch told before the writer
			// acts on it, as a Read does (clientbreak.go).
			if c.keepClientBreak(terr) {
				c.notify.notified(0)
			} else {
				c.keepStackAbort(terr)
			}
			return n, c.writeError(c.stackError(terr))
		}
		if room == nil {
			// Registered, then tried once more: room made before the
			// entry was there announced itself to nobody.
			entry = new(waiter.Entry)
			*entry, room = waiter.NewChannelEntry(waiter.WritableEvents)
			c.wq.EventRegister(entry)
			defer c.wq.EventUnregister(entry)
			continue
		}
		if c.wwait != nil && told != n {
			// About to wait, and the first time or after progress: the
			// waiter's clock starts (again) now.
			if told < 0 {
				defer c.wwait.WriteWaiting(false)
			}
			told = n
			c.wwait.WriteWaiting(true)
		}
		select {
		case <-room:
		case <-dl:
			return n, c.writeError(os.ErrDeadlineExceeded)
		}
	}
	return n, nil
}

// KickWriter wakes a Write waiting for room if the send buffer has some
// now, and reports whether it had: the client has acknowledged bytes since
// the Write filled it. gVisor wakes a waiting Write only once half the
// buffer is free, so that a client reading slowly but steadily leaves it
// waiting long after the client's last progress; a watch of stalled
// writes asks here before it calls a write stalled.
func (c *Conn) KickWriter() bool {
	if c.ep.Readiness(waiter.WritableEvents) == 0 {
		return false
	}
	c.wq.Notify(waiter.WritableEvents)
	return true
}

func (c *Conn) writeError(err error) error {
	return &net.OpError{Op: "write", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// SetWriteDeadline sets the deadline of Write, also for a Write waiting.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.wdl.set(t)
	return nil
}

// SetDeadline sets the read and write deadlines.
func (c *Conn) SetDeadline(t time.Time) error {
	c.wdl.set(t)
	return c.TCPConn.SetReadDeadline(t)
}

// Readable reports whether TryRead would return something other than
// ErrWouldBlock: bytes, the end of the stream, or an error.
func (c *Conn) Readable() bool {
	return c.closed() || c.ep.Readiness(tcpReadEvents) != 0
}

// Broken reports whether the connection may have ended other than by the
// client's FIN alone, and not by this conn's Close or Abort: the client
// reset it, its keepalives went unanswered, or the stack closed it. A
// clean close that has just completed reads the same; BrokenError tells
// them apart. Broken may be called from OnReadable's function.
func (c *Conn) Broken() bool {
	// The state, not Readiness: Readiness adds EventRdHUp whatever the
	// mask once the FIN is in. A reset in CLOSE-WAIT moves the endpoint to
	// CLOSED, as Linux does, not to the error state.
	switch tcp.EndpointState(c.ep.State()) {
	case tcp.StateError, tcp.StateClose:
		return !c.closed()
	}
	return false
}

// BrokenAfterFIN reports whether Broken's break came after the client's
// FIN: a reset in CLOSE-WAIT, which moves the endpoint to CLOSED, as a
// clean close completing does (BrokenError tells them apart), or a
// vanishing after the FIN (finBeforeBreak: the error state, the FIN in), which
// cut nothing either: a WebSocket tunnel's destination must still get
// the whole upload. Either way the client had ended its side whole:
// everything it sent is there to read. It may be called from
// OnReadable's function.
func (c *Conn) BrokenAfterFIN() bool {
	return tcp.EndpointState(c.ep.State()) == tcp.StateClose && !c.closed() || c.Broken() && c.finBeforeBreak()
}

// BrokenError is what broke the connection, as the stack saw it, or nil
// when nothing did; a read or a write that took it from the stack first
// is remembered (ClientBroke) when the client broke it, and a Write that
// is keeping it is waited for. The stack's abort of the connection as the
// stacks close says so whichever took it first (IsStackClose knows it),
// and a reset the client sent after its FIN says ErrResetAfterFIN,
// which IsStackClose does not take. It must not be called from OnReadable's
// function, nor from OnWriteWait's waiter (both may run in a Write).
func (c *Conn) BrokenError() error {
	terr := c.ep.LastError()
	if terr == nil {
		if tcp.EndpointState(c.ep.State()) == tcp.StateError {
			// Broken, and the stack's one report taken: a Write may
			// have it and not have kept it yet. It keeps it before it
			// lets go of wmu, and returns at once on the error state
			// (the stack wakes a Write waiting for room when the
			// connection ends): waiting for wmu is short.
			c.rw.wmu.Lock()
			//lint:ignore SA2001 waiting for a Write keeping the break is the point
			c.rw.wmu.Unlock()
		}
		return c.abortKept()
	}
	if !c.keepClientBreak(terr) {
		c.keepStackAbort(terr)
	}
	if why := c.abortError(terr); why != nil {
		return why
	}
	return c.stackError(terr)
}

// OnReadable arranges for fn to be called when bytes, the client's FIN or
// an error arrive, and again by Close or Abort, and by a Read that takes
// the client's reset or vanishing from the stack, before that Read
// returns, and by a Write that takes it. fn runs on the stack's packet
// path holding the endpoint's lock (or on the reader's or the writer's
// goroutine, the writer holding the conn's write lock): it must not
// block, and must not
// call anything of the conn but Readable and Broken (TryRead, Read, Write, CloseWrite,
// Close, Abort and OnReadable would deadlock); start a goroutine for that.
// It may be called while bytes are already waiting, and bytes that were
// waiting before the call are not announced: check Readable after
// arranging it. A later call replaces fn; nil stops the calls.
func (c *Conn) OnReadable(fn func()) {
	c.notify.set(c.wq, tcpReadEvents, fn, c.closed)
}

// Close closes the connection (a FIN to the client once what was written
// has been sent) and calls OnReadable's function. The stack keeps sending
// what was written for at most the closed-send timeout without the client
// acknowledging any of it, then resets the connection.
func (c *Conn) Close() error {
	if !c.markClosed() {
		return nil
	}
	c.uncount()
	c.boundClosedSend()
	err := c.TCPConn.Close()
	c.endNotify()
	return err
}

// boundClosedSend sets the endpoint's user timeout before Close. Once
// closed, a connection is no longer listed for the reclaim, and no Write
// waits for the stall watch to see: what the stack still has to send (up
// to a send buffer, 4 MiB) stays for as long as the client acknowledges
// the stack's zero-window probes, which RFC 1122 lets it do for ever and
// gVisor honours (snd.go: retransmitTimerExpired). The user timeout is
// gVisor's only bound on that: it resets a connection whose sent bytes,
// or zero-window probes, have waited longer than it since the last
// acknowledgement that moved the window, as Linux's TCP_USER_TIMEOUT does.
// A client that reads, however slowly, moves it and is not cut off.
func (c *Conn) boundClosedSend() {
	if c.closedSend <= 0 {
		return
	}
	uto := tcpip.TCPUserTimeoutOption(closedSendTimeout(c.closedSend, c.pressure))
	_ = c.ep.SetSockOpt(&uto) // fails only for an option the endpoint does not know
}

// closedSendTimeout is d as memory pressure p (a MemoryPressure, nil for
// none) leaves it: at most a minute while memory is short and ten seconds
// while critical, the proxy's write-stall timeouts under the same
// pressures, so that connections closed while memory runs out free their
// send buffers as soon as a stalled relay would.
func closedSendTimeout(d time.Duration, p *atomic.Int32) time.Duration {
	if p == nil {
		return d
	}
	switch MemoryPressure(p.Load()) {
	case MemoryShort:
		return min(d, shortMemoryClosedSendTimeout)
	case MemoryCritical:
		return min(d, criticalMemoryClosedSendTimeout)
	}
	return d
}

// The bounds of closedSendTimeout under memory pressure (the same as
// proxy.ShortMemoryWriteStallTimeout and CriticalMemoryWriteStallTimeout).
const (
	shortMemoryClosedSendTimeout    = 60 * time.Second
	criticalMemoryClosedSendTimeout = 10 * time.Second
)

// uncount stops counting c for its client (reclaim.go).
func (c *Conn) uncount() {
	if c.live != nil {
		c.live.remove(c)
	}
}

// Abort resets the connection: the client gets a RST instead of a FIN.
func (c *Conn) Abort() {
	// Marked closed first: a reader woken by the reset reads ErrClosed,
	// as after Close, and not the reset it caused itself.
	first := c.markClosed()
	c.ep.Abort()
	if first {
		c.uncount()
		_ = c.TCPConn.Close()
		c.endNotify()
	}
}

// endNotify removes OnReadable's entry and calls its function a last time,
// so that a parked reader learns of the close whatever the endpoint
// announces.
func (c *Conn) endNotify() {
	if fn := c.notify.stop(c.wq); fn != nil {
		fn()
	}
}
