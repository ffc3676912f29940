package netstack

import (
	"errors"
	"net"

	"gvisor.dev/gvisor/pkg/tcpip"
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
// which gives the stack's error in its words only.
func (c *Conn) keepReadBreak(err error) bool {
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Err == nil || c.closed() {
		return false
	}
	for _, terr := range []tcpip.Error{&tcpip.ErrConnectionReset{}, &tcpip.ErrTimeout{}} {
		if oe.Err.Error() == terr.String() {
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
