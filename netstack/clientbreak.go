package netstack

import (
	"errors"
	"net"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// The stack reports what broke a connection once, to whichever of a read,
// a write or LastError asks first. An HTTP/2 server's reader, waiting on
// the connection, is woken by the client's reset as the watch of the
// connection is (OnReadable), and often takes the report first: the
// watch, asking BrokenError, was told nothing, and the session ended as
// if the client had closed cleanly. So too with a writer (a response's
// body copy, the HTTP/2 server's frame writer) that takes it mid-response.
// A Conn keeps the client's reset, or its vanishing, once a read, a write
// or BrokenError has taken it, and a Read or Write that takes it tells
// OnReadable's function before its caller can act on it, so that the watch
// sees the session as it was when the break came, not after the server
// has ended its streams.

// keepClientBreak keeps terr, what the stack reported broke c, when it is
// the client's doing: its reset, or its vanishing (keepalives or
// retransmissions unanswered). It reports whether terr is one of those.
func (c *Conn) keepClientBreak(terr tcpip.Error) bool {
	switch terr.(type) {
	case *tcpip.ErrConnectionReset, *tcpip.ErrTimeout:
	default:
		return false // the server's own Abort, the stack closing, ...
	}
	if c.reclaimed() {
		return false
	}
	why := stackError(terr)
	c.clientBroke.CompareAndSwap(nil, &why)
	return true
}

// keepReadBreak is keepClientBreak for err, the error of gonet's Read,
// which gives the stack's error in its words only; the stack's abort it
// keeps as keepStackAbort does (reporting false).
func (c *Conn) keepReadBreak(err error) bool {
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Err == nil || c.closed() {
		return false
	}
	for _, terr := range []tcpip.Error{&tcpip.ErrConnectionReset{}, &tcpip.ErrTimeout{}, &tcpip.ErrAborted{}} {
		if oe.Err.Error() == terr.String() {
			if _, abort := terr.(*tcpip.ErrAborted); abort {
				c.keepStackAbort(terr)
				return false
			}
			return c.keepClientBreak(terr)
		}
	}
	return false
}

// ClientBroke is what broke the connection when its client did (its
// reset, or its vanishing: ETIMEDOUT), once a read, a write or
// BrokenError has taken it from the stack; kept after Close, so that a
// handler whose session ended on that read's or write's error, taking it
// for the client leaving, can record it. Nil when the client broke nothing (a reset after its FIN,
// which a read never takes, reads as the end of the stream), and once the
// server has reset the connection to reclaim memory (Reclaimed says so).
func (c *Conn) ClientBroke() error {
	p := c.clientBroke.Load()
	if p == nil || c.reclaimed() {
		return nil
	}
	return *p
}

// finBeforeBreak reports whether the client's FIN was in before its
// connection broke (a reset or a vanishing after the FIN, with bytes
// still unread before it): reads then say the end of the stream once the
// bytes are read, as a Linux socket's do (tcp_recvmsg returns 0 once the
// FIN is in, before it looks at the error), not the break, which is left
// for BrokenError. gVisor says the break: a relay took it for an upload
// cut short and reset the destination with no FIN, although the stack
// had acknowledged the whole upload and its FIN to the client. A break
// before the FIN never reads so: the stack takes a FIN in only in order,
// after every byte before it. RcvClosed is read only once the endpoint
// is no longer connected, when the stack writes it no more; the state's
// atomic load orders it after the FIN's write.
func (c *Conn) finBeforeBreak() bool {
	ep, ok := c.ep.(*tcp.Endpoint)
	if !ok {
		return false
	}
	switch tcp.EndpointState(ep.State()) {
	case tcp.StateError, tcp.StateClose:
		return ep.RcvClosed
	}
	return false
}

// errStackAborted is what reads say after a Write, or BrokenError, took
// the stack's report of its own abort of the connection (the stacks
// closing at the drain's end), in the stack's words: not the end of the
// stream, which a relay takes for the client's FIN and passes on, a clean
// end for an upload the shutdown cut. BrokenError says it too.
var errStackAborted = errors.New("operation aborted")

// ErrResetAfterFIN is BrokenError's error for a client that reset its
// connection after its FIN: it had ended its side cleanly. A client that
// closes its socket while the appliance's answer to its close (a GOAWAY,
// a close_notify) is on the way sends one as a matter of course. gVisor
// gives that reset the very error of its own abort of the connection
// (ErrAborted, "operation aborted"), which the stacks' close gives every
// connection still open; resetAfterFINState tells them apart, and this error
// says the client's reset in words of its own, so that a record written
// as the stacks close does not take it for their close (review rev32c F3).
var ErrResetAfterFIN = errors.New("connection reset by peer after its FIN")

// keepStackAbort notes terr, what the stack reported ended c, when it is
// the stack's own abort and c was neither closed nor reset to reclaim
// memory by the appliance (those say so themselves).
func (c *Conn) keepStackAbort(terr tcpip.Error) {
	if _, ok := terr.(*tcpip.ErrAborted); ok && !c.closed() && !c.reclaimed() && !c.resetAfterFINState() {
		c.stackAborted.Store(true)
	}
}

// resetAfterFINState reports whether c's endpoint ended on its client's
// reset after the client's FIN, and not on the stack's abort, which report
// the same error (ErrAborted): gVisor moves an endpoint that takes a RST
// in CLOSE-WAIT to CLOSED (handleReset, as Linux does), and one it aborts,
// the stack closing or the conn's own Abort, to the error state
// (resetConnectionLocked: any connected state, CLOSE-WAIT included). Each
// is final: an endpoint in CLOSED is no longer connected, so no abort
// resets it, and closing one in the error state leaves it there. The
// state is set with the error, under the endpoint's lock, which LastError
// takes: read after it, it is the one the error came with. No timing (the
// drain's flag, a mark the server's close sets) can tell them: a client
// may reset after the stacks begin closing and before they close.
func (c *Conn) resetAfterFINState() bool {
	return tcp.EndpointState(c.ep.State()) == tcp.StateClose
}

// abortError is BrokenError's error for terr, the stack's report, when it
// is ErrAborted and the conn was not reset to reclaim memory (that one
// says so, ErrMemoryReclaimed): the client's reset after its FIN, kept
// for the next caller (not as ClientBroke: a break after the FIN cut
// nothing the client sent), or the stack's abort (kept by keepStackAbort
// unless the conn is closed: its own Abort). Nil for any other report.
func (c *Conn) abortError(terr tcpip.Error) error {
	if _, ok := terr.(*tcpip.ErrAborted); !ok || c.reclaimed() {
		return nil
	}
	if c.resetAfterFINState() {
		c.resetAfterFIN.Store(true)
		return ErrResetAfterFIN
	}
	return errStackAborted
}

// abortKept is BrokenError's error once the stack's one report has been
// taken: the client's break a read, a write or BrokenError kept, or its
// reset after its FIN, or the stack's abort, that BrokenError or a Write
// took; nil for a clean close completing, and for a conn closed since.
func (c *Conn) abortKept() error {
	if why := c.ClientBroke(); why != nil || c.closed() {
		return why
	}
	switch {
	case c.resetAfterFIN.Load():
		return ErrResetAfterFIN
	case c.stackAborted.Load():
		return errStackAborted
	}
	return nil
}

// IsStackClose reports whether err says that the appliance's side ended a
// client's conn, not the client: the stack's abort of its endpoints as it
// closes (gVisor's ErrAborted, "operation aborted", in whichever words a
// read, a write or BrokenError gave it: gonet's, stackError's,
// errStackAborted), or the conn closed under its reader (net.ErrClosed: a
// UDP endpoint the stack's close closed, or Close). Not the client's
// reset (ECONNRESET), its reset after its FIN (ErrResetAfterFIN, which
// gVisor reports as it reports its abort, and BrokenError tells apart by
// the endpoint's state), its vanishing (ETIMEDOUT), its FIN (io.EOF), its
// port unreachable (ECONNREFUSED), nor the reclaim of memory
// (ErrMemoryReclaimed). err may be a tree (errors.Join): any part of it
// will do.
func IsStackClose(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, net.ErrClosed) || errors.Is(err, errStackAborted) {
		return true
	}
	switch u := err.(type) {
	case interface{ Unwrap() []error }:
		for _, e := range u.Unwrap() {
			if IsStackClose(e) {
				return true
			}
		}
		return false
	case interface{ Unwrap() error }:
		return IsStackClose(u.Unwrap())
	}
	// A leaf: the stack's own words, as gonet and stackError give them.
	return err.Error() == abortedText
}

// abortedText is the stack's words for its abort of an endpoint.
var abortedText = (&tcpip.ErrAborted{}).String()
