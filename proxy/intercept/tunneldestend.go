package intercept

import (
	"errors"
	"fmt"
	"os"
	"time"
)

// A destination's half-close (its FIN, or TLS close_notify and FIN) ends
// goproxy's copy towards the client, and with it the tunnel, while the
// client may still be sending: goproxy closes the upstream as soon as one
// direction ends. Closed then, the destination got the end of a stream
// the client never ended, cut short where goproxy's copy stood (a plain
// FIN over cleartext, a clean TLS end when that copy was idle), and the
// records said ok. A half-close ends sending, not reading: on a direct
// connection the destination would still get all the client sends. So the
// tunnel relays it as a half-close (relayDestinationEnd).

// relayDestinationEnd relays the destination's end of its side, which
// ended the tunnel (Close, u.ended), as a half-close: the client is told
// (its side of the tunnel's end: close_notify, FIN), and the upload goes
// on until its copy is over (the client's own end, all of it written),
// bounded by the linger's bound (the write-stall timeout, when shorter:
// the session's stall watch bounds a write blocked meanwhile), the
// session's abort, or the client's break. A copy not over by the bound
// leaves the client's upload cut: the destination is reset, never given
// the end of a stream the client did not end, and the error returned and
// kept for the records (writeFailed: a timeout, the bound's) says so;
// nil otherwise, and Close ends the upstream as usual. A destination
// whose read ended on the connection's error (a reset) is not waited
// for: it reads nothing more.
func (u *upgradedBody) relayDestinationEnd() error {
	if u.upload == nil || u.endClient == nil || u.readErr.Load() != nil || u.upload.overNow() {
		return nil
	}
	u.endClient()
	bound := u.lingerBound()
	t := time.NewTimer(bound)
	defer t.Stop()
	select {
	case <-u.upload.over():
		return nil
	case <-u.aborted: // nil (never) outside a session: its reason is the records'
		return nil
	case <-u.clientBreak: // nil too: Close's broken path settles it
		return nil
	case <-t.C:
	}
	if u.upload.overNow() {
		return nil
	}
	// Kept as the upload's failed write for the tunnel's record
	// (writeFailed), and told to the connection's (onTailCut): the
	// appliance's bound, a timeout, cut it.
	cut := fmt.Errorf("%w within the %v bound: the destination was reset, the rest of the client's upload not relayed: %w",
		errUploadUnended, bound, os.ErrDeadlineExceeded)
	u.noteWriteErr(cut)
	u.closing.Store(true)
	u.stop()
	return u.resetTail(socketOf(u.conn), cut)
}

// errUploadUnended says a tunnel's destination ended its side and its
// client did not end its own within the bound (relayDestinationEnd).
var errUploadUnended = errors.New("the destination ended its side, and the client had not ended its own")

// halfClose ends the sending side of the client's connection (a TLS
// close_notify, then the socket's FIN), after what its writes hold, and
// reports whether the client was told: a tunnel's destination ended its
// side (relayDestinationEnd), and goproxy's copy towards the client,
// ended by it, writes nothing more.
func (c *hijackedConn) halfClose() bool {
	h := &c.hold
	h.mu.Lock()
	defer h.mu.Unlock()
	c.flushLocked()
	if h.err != nil {
		return false
	}
	return halfClose(c.Conn)
}
