package intercept

import (
	"fmt"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/hostconn"
)

// A tunnel whose client broke after its FIN while goproxy's write of the
// upload waits on a destination that takes nothing was never ended:
// goproxy closes the tunnel only once one of its copies ends, the one
// towards the client waiting on a read of the silent destination and the
// upload's in that write; so the linger's bound (boundWrite, from Close)
// and the stacks' close (the linger's stop) never began, and only the
// write-stall timeout (15 minutes by default) ended it, its records lost
// at shutdown. So the break itself bounds that write (BoundTunnelUpload).

// BoundTunnelUpload bounds the write of the session's WebSocket tunnel's
// upload still under way when its client broke after its FIN, by the
// linger's bound from now, and ends it at once when the stacks close:
// the write cut, goproxy ends the tunnel, whose end finds the upload's
// tail not delivered (closeDelivering). It returns at once; a tunnel whose
// copy of the upload is over needs nothing.
func (s *Session) BoundTunnelUpload() {
	u := s.tunnel.Load()
	if u == nil || u.upload == nil || u.upload.overNow() {
		return
	}
	u.uploadBounded.Store(true)
	go u.boundUploadNow()
}

// StallAbort is the result and error of the write-stall watch's abort of
// the session, err the stall's: those of a WebSocket tunnel's upload tail
// not delivered when its client broke after its FIN with goproxy's write
// of the upload still under way (BoundTunnelUpload), as the same tunnel
// whose write is not blocked gets them from its linger, bounded by the
// write-stall timeout in force too (docs/records.md, websocket); else
// stalled, err.
func (s *Session) StallAbort(err error) (string, error) {
	if u := s.tunnel.Load(); u != nil && u.uploadBounded.Load() && !u.upload.overNow() {
		return "reset", fmt.Errorf("the client's connection broke after its FIN, and %w: %w", errTailUndelivered, err)
	}
	return "stalled", err
}

// boundUploadNow is BoundTunnelUpload's wait: until the upload's copy is
// over, the session aborted, or the bound passed, cutting the write at
// the stacks' close.
func (u *upgradedBody) boundUploadNow() {
	bound := u.lingerBound()
	u.bounded.Store(true) // a timeout of the write is the appliance's cut
	_ = u.conn.SetWriteDeadline(time.Now().Add(bound))
	t := time.NewTimer(bound)
	defer t.Stop()
	for {
		woken := hostconn.LingersWoken()
		if u.shuttingDown != nil && u.shuttingDown() {
			u.shutCut.Store(true) // before the cut: cutError names it
			_ = u.conn.SetWriteDeadline(time.Now())
			return
		}
		select {
		case <-u.upload.over():
			return
		case <-u.aborted: // nil (never) outside a session
			return
		case <-t.C:
			return
		case <-woken:
		}
	}
}
