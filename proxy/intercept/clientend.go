package intercept

import (
	"errors"
	"net"
	"time"
)

// How a client's connection ends once goproxy is done with it.
//
// goproxy closes the client connection as soon as its last answer is
// written: a WebSocket tunnel whose destination ended, an HTTP/1 answer
// with Connection: close or to an HTTP/1.0 request (http10.go), an
// HTTP/2 connection its server ended. Most of that answer may still be
// in the stack's send queue then, and gVisor, as Linux, answers data
// unread or arriving on a closed connection with a RST: that discards
// the send queue, and the client loses the answer's tail while the
// records say it had it all. Bumped, a client that half-closed after its
// upload (close_notify, then FIN) and reads on may have its close_notify
// arrive after that Close (held back by Nagle behind its unacknowledged
// upload); bumped or not, a keep-alive client may have sent its next
// request while the answer was coming (128 KiB of a 1 MiB answer reached
// such a cleartext client, the record ok). So the connection ends as
// net/http's server ends one (closeWriteAndWait): half-closed
// (close_notify, then FIN after the answer) and read, what comes
// dropped, until the client's end, and only then closed (lingerClose).
//
// The linger is lingerClose's: the client's end, at most drainMax bytes
// for at most drainWait (2 s, the bound of the other lingers: the body
// drain's and the HTTP/2 refusal's). What it waits for is bytes the
// client sent before it saw the appliance's end, which arrive within a
// round trip or a retransmission or two; a client that never closes
// keeps its connection 2 s past the session, no longer (the
// close_notify's write before it is bounded by tls.Conn's 5 s). The
// session ends first (its records, Done, what a drain waits for), and
// the linger runs after it: an HTTP/1 connection's on goproxy's own
// goroutine, whose Close it is and which ends with it (an HTTP/1.0
// client's every request is a connection: no goroutine more for each),
// an HTTP/2 one's on a goroutine of its own, the HTTP/2 server's Close
// coming before its own end. The stacks' closing ends its read at once,
// as does a reset.

// Close writes what is still held, then closes the connection, or
// begins its lingering close (above). A write blocked on a client that
// stopped reading (a WebSocket tunnel whose other direction ended) holds
// h.mu: the deadline, set first, ends it, as tls.Conn.Close bounds its
// close_notify.
func (c *hijackedConn) Close() error {
	c.limit.unanswered.notes().connClosed(c.closedByServer()) // a request waiting on what ended its stream: h2streamend.go
	h := &c.hold
	_ = c.Conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	h.mu.Lock()
	c.flushLocked()
	h.active.Store(false)
	h.mu.Unlock()
	var err error
	switch {
	case c.h1 && c.unchunk.cut():
		// An unchunked answer's body is delimited by the close: closed,
		// a body the destination cut short would look whole to the
		// client, and so would a close_notify. A RST says it was not
		// (http10.go), once the client has what was written.
		go abortWhenSent(c.Conn)
	case c.h1 && c.bodyFault.Load() != nil:
		// A request body left unread, or broken while the client may
		// still be sending: closed at once, the connection would be
		// reset, and the answer with it (lingerClose). Its record is
		// written after the linger: it waits for the body's end.
		err = lingerClose(c.Conn)
	case c.destFailed != nil && c.destFailed() && c.lingers != nil && c.lingers():
		// A WebSocket tunnel whose destination's side failed (a reset,
		// a TLS failure): its way back was cut short, and a close_notify
		// and a FIN would tell the client it had all of it (a body cut
		// short, above). A RST says it was not, once the client has
		// what was written.
		go abortWhenSent(c.Conn)
	case c.lingers != nil && c.lingers():
		// A second Close (the HTTP/2 server's, after goproxy's) leaves it
		// to the linger; one after an abort (lingers false) closes.
		if !c.lingering.CompareAndSwap(false, true) {
			break
		}
		if !c.h1 {
			go func() { _ = lingerClose(c.Conn) }()
			break
		}
		if c.onClose != nil {
			c.once.Do(c.onClose)
		}
		_ = lingerClose(c.Conn)
		return nil
	default:
		err = c.Conn.Close()
	}
	if c.onClose != nil {
		c.once.Do(c.onClose)
	}
	return err
}

// abortWhenSent resets c's socket (beneath TLS and the plaintext tap,
// socketOf), once the client has acknowledged all that was written to
// it, or after drainWait: a reset throws away the send queue, and the
// client lost most of a body written before the cut (96 KiB of 2 MiB)
// while the record counted it all. A connection that cannot say is reset
// at once. The socket, not c: c's Close would end a bumped one with a
// close_notify and a FIN, which say the body was whole. A tap's stream
// is ended here, as nothing closes c after this.
func abortWhenSent(c net.Conn) {
	sock := socketOf(c)
	if q, ok := sock.(interface{ SendQueued() (int, error) }); ok {
		end := time.Now().Add(drainWait)
		for poll := time.Millisecond; time.Now().Before(end); poll = min(2*poll, 50*time.Millisecond) {
			if n, err := q.SendQueued(); err != nil || n == 0 {
				break
			}
			time.Sleep(poll)
		}
	}
	Abort(sock)
	if p, ok := c.(*plaintextConn); ok {
		p.endStream(true)
	}
}

// tunnelDestinationFailed reports whether the session's WebSocket tunnel
// ended on its destination's failure: a read of it that failed, not at
// its end nor by the tunnel's own close or the session's abort.
func (s *session) tunnelDestinationFailed() bool {
	u := s.tunnel.Load()
	if u == nil {
		return false
	}
	p := u.failed.Load()
	return p != nil && !errors.Is(*p, net.ErrClosed)
}

// lingersAtEnd reports whether the session's client connection ends with
// a lingering close as goproxy closes it: a session that ends on its own.
// Not one aborted (its connections reset already: nothing more to read or
// to deliver), nor one whose client broke its connection, nor once the
// stacks are closing: the records of those say the connection's end was
// not a clean one.
func (s *session) lingersAtEnd() bool {
	if s.abortedFromOutside() || s.clientBroke() != nil {
		return false
	}
	if r, ok := s.Client.(reclaimable); ok && r.Reclaimed() != nil {
		return false
	}
	return s.ic.cfg.ShuttingDown == nil || !s.ic.cfg.ShuttingDown()
}
