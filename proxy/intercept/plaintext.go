package intercept

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
)

// Plaintext receives the decrypted bytes of every bumped connection, as
// the client sent them inside TLS and as it was sent back (HTTP/1 as
// written, HTTP/2 as its frames), e.g. to synthesize them as packets for
// an IDS (package capture). It must be safe for concurrent use.
type Plaintext interface {
	// OpenPlaintext begins a bumped connection's plaintext, once its
	// client's TLS handshake is done; nil when it is not wanted.
	OpenPlaintext(PlaintextFlow) PlaintextStream
}

// PlaintextFlow names a bumped connection, as its record does.
type PlaintextFlow struct {
	Endpoint   string // the GWLB endpoint, vpce-…
	FlowCookie string // the GWLB flow cookie, 8 hex digits
	Client     netip.AddrPort
	Dest       netip.AddrPort // the original destination
	SNI        string
}

// PlaintextStream takes one bumped connection's plaintext. Its methods are
// called from the connection's reader and writer, possibly at once, and
// must never block: they are on the data path.
type PlaintextStream interface {
	FromClient(b []byte) // decrypted bytes read from the client
	FromServer(b []byte) // bytes written to the client, before encryption
	ClientClosed()       // the client ended its side (close_notify)
	// ServerClosed: the appliance had ended its side of the client's
	// connection (close_notify, FIN), and the client had it all, when a
	// reset came (called right before ClientReset or ServerReset): a
	// lingering close, a tunnel whose destination ended its side.
	ServerClosed()
	// ClientReset: reading from the client failed other than by its end
	// of data (a reset, most often); the stream ends aborted, with no FIN.
	ClientReset()
	// ServerReset: the appliance reset the client's connection (a write
	// that stalled, a reload's deny, the shutdown, an answer delimited by
	// the close that the destination cut short); the stream ends aborted
	// from the destination's side, with no FIN, as the client saw it.
	ServerReset()
	Close() // the connection is closed; called once, last
}

// tapPlaintext hands the bumped client connection's plaintext to the
// configured Plaintext, if any, from here on: s.client (its TLS side) is
// wrapped so that what is read from it and written to it is copied.
func (s *session) tapPlaintext() {
	pt := s.ic.cfg.Plaintext
	if pt == nil {
		return
	}
	st := pt.OpenPlaintext(PlaintextFlow{
		Endpoint: s.Record.Endpoint, FlowCookie: s.Record.FlowCookie,
		Client: netip.AddrPortFrom(s.Subject.Client, s.Record.ClientPort), Dest: s.Subject.Dest,
		SNI: s.Record.SNI,
	})
	if st == nil {
		return
	}
	s.client = &plaintextConn{Conn: s.client, st: st, broke: s.clientBroke, aborted: s.applianceEnded}
}

// plaintextConn copies what is read from and written to a bumped client
// connection to its PlaintextStream.
type plaintextConn struct {
	net.Conn
	st PlaintextStream
	// broke is what broke the client's connection when its client did
	// (Session.clientBroke), nil otherwise.
	broke func() error
	// aborted reports whether the appliance reset the client's
	// connection (session.applianceEnded); reading says a read failed,
	// which during the stacks' close is their reset.
	aborted func(reading bool) bool
	reset   atomic.Bool // a read has ended the stream with the client's RST
	once    sync.Once
	// halfClosed: the appliance ended its side and read on (a lingering
	// close, a tunnel whose destination ended first: halfCloseErr).
	halfClosed atomic.Bool
}

// clientReset ends the stream with the client's RST.
func (c *plaintextConn) clientReset() {
	c.reset.Store(true)
	c.serverEnded()
	c.st.ClientReset()
}

// serverEnded shows the appliance's FIN before a reset ends the stream,
// when the appliance had ended its side and the client acknowledged that
// FIN first: it had the whole stream from the appliance and its end. A
// FIN still queued behind bytes the client had not taken is not shown:
// the reset threw both away.
func (c *plaintextConn) serverEnded() {
	if !c.halfClosed.Load() {
		return
	}
	if q, ok := socketOf(c.Conn).(interface{ FINAcked() bool }); ok && q.FINAcked() {
		c.st.ServerClosed()
	}
}

// Read implements net.Conn.
func (c *plaintextConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.st.FromClient(b[:n])
	}
	switch {
	case err == nil:
	case c.clientBroke():
		// The client reset or vanished: it aborted, whatever this read
		// says of it (the end of the stream, or the appliance's close,
		// once the client watch has aborted the session for the break).
		c.clientReset()
	case errors.Is(err, io.EOF):
		c.st.ClientClosed()
	case errors.Is(err, net.ErrClosed), errors.Is(err, io.ErrClosedPipe), isTimeout(err):
		// The appliance closed the connection or its read deadline fired:
		// nothing the client did. Close ends the stream; after a deadline
		// the connection may read on (an HTTP/2 frame deadline on an idle
		// client), and a reset would end the capture there. isTimeout, not
		// os.ErrDeadlineExceeded: on the stack the deadline error is
		// gonet's own (TestPlaintextIdleH2Deadline).
	case c.aborted != nil && c.aborted(true):
		// The appliance's reset (the reclaim's, the stacks' close), which
		// the read may take before the session's Abort comes.
		c.reset.Store(true)
		c.serverEnded()
		c.st.ServerReset()
	default:
		c.clientReset()
	}
	return n, err
}

// applianceEnded reports whether the appliance reset the session's client
// connection: its Abort, or the packet stack's reset to reclaim memory;
// or, the stacks closing (the drain's end), which resets every
// connection, for a read that failed (reading) or a connection the client
// watch saw broken (a write cut, before the watch's Abort came). Not for
// a clean end then: the client got FINs, and its close is no break.
func (s *session) applianceEnded(reading bool) bool {
	if s.abortedFromOutside() {
		return true
	}
	if r, ok := s.Client.(reclaimable); ok && r.Reclaimed() != nil {
		return true
	}
	shutting := s.ic.cfg.ShuttingDown != nil && s.ic.cfg.ShuttingDown()
	return shutting && (reading || s.brokenSeen.Load() && !s.finBreak.Load())
}

// Write implements net.Conn: what reached the client (n bytes) is copied.
func (c *plaintextConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if n > 0 {
		c.st.FromServer(b[:n])
	}
	return n, err
}

// Close implements net.Conn. The stream ends with the client's RST when
// the client broke its connection, though no read saw it (nothing reads
// the client while an HTTP/1 request waits on its destination), with the
// destination's when the appliance reset the connection (Session.Abort),
// and with FINs otherwise.
func (c *plaintextConn) Close() error {
	err := c.Conn.Close()
	c.endStream(false)
	return err
}

// endStream ends the stream as Close does; reset says the appliance
// reset the connection beneath the tap (abortWhenSent), which nothing
// closes then.
func (c *plaintextConn) endStream(reset bool) {
	c.once.Do(func() {
		switch {
		case c.reset.Load():
		case c.clientBroke():
			c.serverEnded()
			c.st.ClientReset()
		case reset || (c.aborted != nil && c.aborted(false)):
			c.serverEnded()
			c.st.ServerReset()
		}
		c.st.Close()
	})
}

// clientBroke reports whether the client broke its connection (a reset,
// or its vanishing), as the client conn kept it.
func (c *plaintextConn) clientBroke() bool {
	return c.broke != nil && c.broke() != nil
}
