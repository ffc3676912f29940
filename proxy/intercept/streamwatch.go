package intercept

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"
)

// An HTTP/2 client can stall a stream without any write of the
// appliance's waiting: it reads the connection but grants the stream no
// window. goproxy's stream handler then waits in its write to the
// server's ResponseWriter for good, holding its 32 KiB copy buffer, the
// server's 4 KiB write buffer, two goroutines and what the upstream
// transport took of the body (about 95 KiB a stream was measured; 250
// streams a connection). The connection's write-stall watch never sees
// it, since the connection's own writes find room. So the write-stall
// bound watches each stream's relay as well: the handler reads the next
// piece of the body only once it has written the previous one whole, so
// the time since the latest read that brought bytes, while no read is
// under way, is how long a write to the client has waited. Past the
// write-stall timeout the session is ended as any stalled one is
// (Session.Abort: every connection reset, the records saying stalled).
//
// Progress is seen a piece at a time, and a client that reads slowly but
// steadily grants its window back as slowly: goproxy's 32 KiB piece at
// 2 KiB every 200 ms takes over 3 s. So a piece is at most
// maxStreamPiece, and each time writes have taken streamPieceTime in
// all, the pieces are cut (or grown) to what their rate writes in
// streamPieceTime, never less than minStreamPiece. A stream is then
// called stalled only when it takes less than about 4 KiB per timeout
// (16 KiB for the first slow piece after fast ones): some 400 bytes a
// second under the 10 s of critical memory.

// WriteWaiter is told when a write to the client begins to wait (true)
// and when it no longer does (false): the proxy's write-stall watch.
type WriteWaiter interface{ WriteWaiting(waiting bool) }

const (
	// streamPieceTime is how long a piece of a stream's body should take
	// to write at the stream's latest rate.
	streamPieceTime = 250 * time.Millisecond
	// minStreamPiece is x/net's per-stream write buffer: a smaller piece
	// costs the server a round trip per piece and saves nothing.
	minStreamPiece = 4 << 10
	// maxStreamPiece is one DATA frame of the default size: a fast
	// stream's pieces cost the server one round trip each, as goproxy's
	// 32 KiB would, for half the bytes.
	maxStreamPiece = 16 << 10
)

// streamWatch follows one response body's relay to an HTTP/2 client's
// stream; only the body's Read (one goroutine) uses it.
type streamWatch struct {
	ww      WriteWaiter
	unwatch func()
	at      time.Time // when the piece being written was read
	n       int       // its size; 0 when none is being written
	// The stream's rate, measured over pieces whose writes took
	// streamPieceTime in all: one piece's own is no measure, as x/net
	// takes up to 4 KiB into its buffer at once and writes it out with
	// the next piece.
	sent  int           // bytes of the pieces so far
	spent time.Duration // the time their writes took
	limit int           // the next piece's size at most
}

// watchStream has the session's stall watch follow rb, the body of a
// response to an HTTP/2 client's stream, when it has bytes to relay.
func (s *session) watchStream(rb *recordingBody) {
	if !s.h2 || s.WatchStream == nil || rb.tunnel || rb.ended.Load() {
		return
	}
	if ww, unwatch := s.WatchStream(); ww != nil {
		rb.stream = &streamWatch{ww: ww, unwatch: unwatch, limit: maxStreamPiece}
	}
}

// next is called as a read of the body begins: the previous piece has
// been written. It returns p cut to the next piece's size.
func (w *streamWatch) next(p []byte) []byte {
	w.ww.WriteWaiting(false)
	if w.n > 0 {
		w.sent += w.n
		w.spent += time.Since(w.at)
		w.n = 0
		if w.spent >= streamPieceTime {
			// Pieces of what that rate writes in streamPieceTime.
			w.limit = min(max(int(int64(w.sent)*int64(streamPieceTime)/int64(w.spent)), minStreamPiece), maxStreamPiece)
			w.sent, w.spent = 0, 0
		}
	}
	if len(p) > w.limit {
		p = p[:w.limit]
	}
	return p
}

// writing is called when a read brought n bytes, which goproxy writes to
// the client next.
func (w *streamWatch) writing(n int) {
	w.at, w.n = time.Now(), n
	w.ww.WriteWaiting(true)
}

// flushing is called as the server's write buffer is flushed after the
// body's end (streamEnd): a write to the client that may wait, as the
// last piece's did. One that waits already (the last read brought bytes
// with the end) goes on waiting from its read.
func (w *streamWatch) flushing() {
	if w.n == 0 {
		w.at = time.Now()
		w.ww.WriteWaiting(true)
	}
}

// flushed is called once that flush has returned: nothing of the body is
// left to wait on the client's window.
func (w *streamWatch) flushed() {
	w.n = 0
	w.ww.WriteWaiting(false)
}

// end ends the watch: the relay has ended.
func (w *streamWatch) end() {
	if w.unwatch != nil {
		w.unwatch()
	}
}

// The end of a stream's body is a write too. x/net's server holds up to
// 4 KiB of a stream's body in its write buffer, and goproxy copies a body
// of known length with io.Copy, which leaves the buffer's last bytes for
// later: for the server's final flush, after goproxy's handler has
// returned and closed the body (so after the watch has ended), or for
// goproxy's own flush before a response's trailers, after the body's last
// read. Each waits on the stream's window, for good if the client grants
// none: its handler and buffers pinned, the stream's slot taken, nothing
// counted as stalled, and the record saying ok for bytes the client never
// had. (goproxy's streaming copy, for a body of no known length, flushes
// each piece before it reads the next: that wait is watched already.)
//
// So such a body copies itself to the server (io.WriterTo, which io.Copy
// uses) and, at its end, flushes the server's buffer while the watch
// still times the write. What the server writes after that is no DATA
// that waits on the window: the trailers' HEADERS, or an empty DATA frame
// with END_STREAM (x/net sends one after a flush, 9 bytes more than a
// response that ends with its last DATA frame).
//
// The server's buffer holds the head too (x/net sends HEADERS with the
// first bytes it writes out), and a body's first bytes when they are
// fewer than 4 KiB: an origin that sends the head and a few bytes, then
// waits (a long poll, a progress stream of a known length, a slow
// origin), had its client get nothing, not even the head, until 4 KiB or
// the end came. So the copy flushes the head before its first read, as
// an HTTP/1 client has it at once, and flushes each piece of 4 KiB or
// less, which the server would hold: the origin had nothing more for now
// (a read asks for 4 KiB at least), or the watch cut the read to 4 KiB.
// A piece of more than 4 KiB goes out whole without a flush (the server's
// buffer, empty, passes it on in DATA frames, and the Write returns once
// they are handed to the connection); so the buffer is empty after each
// piece, and each piece, flushed or not, is counted as gone (gone: what a
// reload's reset counts). Only a piece under 4 KiB is sent on its own
// rather than joined with the next, which comes later anyway (a fast
// origin fills its reads), as goproxy's streaming copy does already. That
// copy, for a body of no known length or an event stream, writes the head
// and flushes only after the first piece: there the head still waits for
// the first bytes. (A head flushed alone changes no field: x/net sniffs
// no Content-Type from the first bytes, dropHopByHop, requestguard.go,
// turns that off for every answer to an HTTP/2 client.)

// streamPieces holds the buffers streamEnd copies through.
var streamPieces = sync.Pool{New: func() any {
	b := make([]byte, maxStreamPiece)
	return &b
}}

// streamEnd is the body, as goproxy gets it, of a response relayed to an
// HTTP/2 client's stream; watch is its stream watch, if any, and rb its
// recordingBody, told what went out (flushed).
type streamEnd struct {
	io.ReadCloser
	watch *streamWatch
	rb    *recordingBody
}

// WriteTo copies the body to w, the server's ResponseWriter, as io.Copy
// would, flushing the head first and each piece the origin sent short of
// what was asked, then flushes w under the watch: also when the copy
// failed, as a body the destination cut short leaves its last bytes held
// as well. A flush that fails (the client reset the stream, or the
// session was aborted) fails the copy, as a write would.
func (b *streamEnd) WriteTo(w io.Writer) (n int64, err error) {
	// The body hands out at most maxStreamPiece at a time: a pooled buffer
	// of that size, not io.Copy's 32 KiB made for every response.
	bufp := streamPieces.Get().(*[]byte)
	defer streamPieces.Put(bufp)
	rw, ok := w.(http.ResponseWriter)
	if !ok {
		return io.CopyBuffer(w, b.ReadCloser, *bufp) // not the server's: nothing it holds
	}
	rc := http.NewResponseController(rw)
	b.rb.copying.Store(true)
	if err := b.flushWatched(rc); err != nil {
		return 0, fmt.Errorf("flushing the response head: %w", err)
	}
	b.rb.headGone.Store(true)
	n, err = b.copyFlushing(w, rc, *bufp)
	ferr := b.flushWatched(rc)
	if err == nil && ferr != nil {
		err = fmt.Errorf("flushing the end of the body: %w", ferr)
	}
	return n, err
}

// copyFlushing copies the body to w through buf, flushing (rc) each piece
// the server would hold (4 KiB or less), and notes each piece as gone.
func (b *streamEnd) copyFlushing(w io.Writer, rc *http.ResponseController, buf []byte) (n int64, err error) {
	for {
		nr, er := b.ReadCloser.Read(buf)
		if nr > 0 {
			nw, ew := w.Write(buf[:nr])
			n += int64(nw)
			if ew == nil && nw != nr {
				ew = io.ErrShortWrite
			}
			if ew != nil {
				return n, ew
			}
			// x/net's per-stream buffer (bufio, 4 KiB) is empty here:
			// the head and every piece before went out. A piece of more
			// than 4 KiB passes it whole: the Write returned once its
			// DATA frames were handed to the connection, out as a flush
			// would have it. One of 4 KiB or less stays in the buffer,
			// even one that filled its read: flushed, as part of the
			// piece's write, which the watch times until the next read.
			if nr <= minStreamPiece {
				if fe := rc.Flush(); fe != nil && !errors.Is(fe, http.ErrNotSupported) {
					return n, fmt.Errorf("flushing the body: %w", fe)
				}
			}
			b.rb.gone.Store(b.rb.read.Load())
		}
		if er == io.EOF {
			return n, nil
		}
		if er != nil {
			return n, er
		}
	}
}

// flushWatched flushes the server's buffer as a write the watch times,
// when there is a watch: the head before the body, or the body's end.
// Not supported is nothing held.
func (b *streamEnd) flushWatched(rc *http.ResponseController) error {
	if b.watch != nil {
		b.watch.flushing()
	}
	err := rc.Flush()
	if b.watch != nil {
		b.watch.flushed()
	}
	if errors.Is(err, http.ErrNotSupported) {
		return nil
	}
	if err == nil {
		b.rb.gone.Store(b.rb.read.Load())
	}
	return err
}

// relayedToStream returns a response body's recordingBody when it has
// bytes to relay to an HTTP/2 client's stream, else nil.
func relayedToStream(body io.ReadCloser) *recordingBody {
	if rb, ok := body.(*recordingBody); ok && rb.toStream && !rb.tunnel && !rb.ended.Load() {
		return rb
	}
	return nil
}
