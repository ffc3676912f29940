package intercept

import (
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// A tunnel's copy toward the client, and its count (bytes_in).
//
// goproxy ends a tunnel, and closes its body (which writes its record), as
// soon as either direction's copy ends: the upload's copy ends on the
// client's end, its break, a reload's deny (its write's recheck aborts the
// session), a failed write to the destination; the other copy may then be
// inside a write to the client. A piece counts once its write has
// returned (WriteTo), and the record did not wait for that write: a
// client could read a piece, then send the bytes a reload denies, and the
// record, written before the write that had put the piece in its socket
// returned, said bytes_in 0 (1 run in 60 of TestReloadEndsWebSocketTunnel
// under -race). The record now waits for a write under way (settle), at
// most tunnelPassBound, and counts what it wrote, whichever ending came
// first; no write begins after it.

// tunnelPassBound bounds how long a tunnel's record waits for a write to
// the client under way: the time the client connection's close gives such
// a write (hijackedConn.Close), so the client gets as much of it as it did
// before the wait. A write that is not waiting for room in the client's
// send buffer returns at once; one cut at the bound counts what it wrote.
// A variable for tests.
var tunnelPassBound = 5 * time.Second

// errTunnelOver ends a tunnel's copy toward the client whose record is
// being written: its last read's bytes are neither written nor counted.
var errTunnelOver = errors.New("the WebSocket tunnel has ended")

// tunnelPass is a tunnel's write to the client under way, as its record
// sees it.
type tunnelPass struct {
	// mu is held by a write to the client until its bytes are counted.
	mu sync.Mutex
	// busy: a write holds mu, or is about to; over: the record is being
	// written, and no write may begin. Each side stores its own, then
	// loads the other's (sequentially consistent atomics): a write that
	// begins is seen by settle, or sees over and writes nothing.
	busy, over atomic.Bool
	// to is the client, set before the first busy.
	to io.Writer
}

// write writes piece to the client, w, and adds what it wrote to passed,
// before settle may go on; after settle has begun it writes nothing.
func (p *tunnelPass) write(w io.Writer, piece []byte, passed *atomic.Int64) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.busy.Store(true)
	defer p.busy.Store(false)
	if p.over.Load() {
		return 0, errTunnelOver
	}
	n, err := w.Write(piece)
	passed.Add(int64(n))
	if err == nil && n < len(piece) {
		err = io.ErrShortWrite
	}
	return n, err
}

// settle waits, before the tunnel's record is written, for a write to the
// client under way to return and be counted, and keeps any other from
// beginning. A write still waiting for room is bounded by
// tunnelPassBound, through the client's write deadline, cleared after
// (the client connection's close sets its own). A writer with no
// deadline (a test's) is waited for.
func (p *tunnelPass) settle() {
	p.over.Store(true)
	var dl interface{ SetWriteDeadline(time.Time) error }
	if p.busy.Load() {
		if d, ok := p.to.(interface{ SetWriteDeadline(time.Time) error }); ok {
			dl = d
			_ = dl.SetWriteDeadline(time.Now().Add(tunnelPassBound))
		}
	}
	p.mu.Lock()
	p.mu.Unlock()
	if dl != nil {
		_ = dl.SetWriteDeadline(time.Time{})
	}
}

// WriteTo is goproxy's copy of the destination's side of the tunnel to
// the client, w (io.Copy takes it): a read's bytes count towards bytes_in
// once their write to the client has returned, and only what it wrote
// (passed). Counted as read, the record counted bytes whose write failed
// (a client's reset after its FIN), or that it came before: the record
// is written as soon as the read that brought them with the
// destination's end has ended the direction. That end now comes only
// once they are written (readEnded), so that the tunnel's end waits for
// their write; and a tunnel the other direction ended has its record
// wait for the write under way (tunnelPass).
func (b *recordingRWBody) WriteTo(w io.Writer) (int64, error) {
	b.copyingTunnel.Store(true)
	b.pass.to = w // before the first write's busy: settle reads it after
	u, _ := b.ReadCloser.(*upgradedBody)
	buf := make([]byte, 32<<10)
	var total int64
	for {
		n, rerr := b.recordingBody.Read(buf)
		var werr error
		if n > 0 {
			var wn int
			wn, werr = b.pass.write(w, buf[:n], &b.passed)
			total += int64(wn)
		}
		if u != nil {
			u.readEnded()
		}
		switch {
		case errors.Is(werr, errTunnelOver):
			return total, nil // the tunnel's own end
		case werr != nil:
			return total, werr
		case rerr == io.EOF:
			return total, nil
		case rerr != nil:
			return total, rerr
		}
	}
}
