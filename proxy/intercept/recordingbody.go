package intercept

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/net/http2"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// recordingBody counts a response body and writes the request's record when
// goproxy closes it, i.e. once the response has reached the client, or
// failed to.
type recordingBody struct {
	io.ReadCloser
	read, written atomic.Int64
	// last is the size of the latest read: goproxy copies the body with
	// io.Copy (HTTP/1's Response.Write, its HTTP/2 handler), which reads
	// again only once it has written the last read whole.
	last atomic.Int64
	// lastData is the size of the latest read that brought bytes: the
	// piece a failed last write, or held bytes that failed to go out
	// after the end, lost (outcome).
	lastData atomic.Int64
	// ended: a read returned io.EOF (or there was no body to read).
	ended atomic.Bool
	// readErr is the first read error other than io.EOF.
	readErr atomic.Pointer[error]
	// tunnel: the body is a 101's, a WebSocket's way back.
	tunnel bool
	// passed is what a tunnel's copy towards the client
	// (recordingRWBody.WriteTo, once copying is set) wrote to it: a
	// read's bytes count towards bytes_in once their write returned
	// (outcome), not as read.
	passed        atomic.Int64
	copyingTunnel atomic.Bool
	// pass is that copy's write under way, which the record waits for
	// (tunnelPass.settle).
	pass tunnelPass
	// cutTail is why a tunnel's close reset the destination with the
	// client's upload not all delivered (upgradedBody.closeDelivering).
	cutTail atomic.Pointer[error]
	// writing is held by a tunnel's write to the destination
	// (recordingRWBody.Write) until its bytes are counted in written:
	// goproxy closes the tunnel as soon as either direction ends, and
	// the destination's end may come with the last write's bytes in its
	// socket, that write not yet returned, or returned and not yet
	// counted. Close takes it once the upstream is closed, which ends a
	// write still blocked, so that the record counts what went out.
	writing sync.Mutex
	// limit is the client connection's, which says whether its end was
	// the appliance's deadline (clientGone); nil in some tests.
	limit *headLimit
	// note is the HTTP/2 stream's, if it has one: what ended it
	// (h2streamend.go).
	note *h2StreamNote
	once sync.Once
	done recordEnder // writes the record: a requestState, or an endFunc
	// An HTTP/2 stream's progress watch, when set (streamwatch.go).
	stream *streamWatch
	// held is the request's charge to the client connection (held.go),
	// given back once the record is written; closed is set as Close
	// begins (keepHeld).
	held   atomic.Pointer[heldCharge]
	closed atomic.Bool
	// answerConn, for an HTTP/1 response of known length, whole, is told
	// as its last bytes are read (answer.go): goproxy's next write has
	// them.
	answerConn *hijackedConn
	whole      int64
	// bodiless: the response has no body (HEAD, 204, 304, Content-Length
	// 0): its one read, the end, relays nothing.
	bodiless bool
	// resp is the response whose body this is: its trailers, known once
	// the body has ended (trailers).
	resp *http.Response
	// reload decides the request (or the tunnel) again after a reload,
	// when set: the bytes of a read it denies do not go on, nor are they
	// counted. resetStream: the body is an HTTP/2 stream's, which such a
	// deny resets.
	reload      *tunnelReload
	resetStream bool
	// toStream: the body is relayed to an HTTP/2 client's stream by its
	// server's handler (inH2Handler): a failed read resets the stream
	// (Read). What went out on it, for a reset's record (resetAfter):
	// copying says streamEnd copies the body (one of a known length),
	// and notes what went out, the head (headGone) and the first gone
	// bytes of the body; else goproxy's
	// streaming copy does, which flushes each piece, and the head with
	// the first, before its next read. headless: the stream's reset (a
	// reload's, or a failed read's) came before the head went.
	toStream bool
	copying  atomic.Bool
	headGone atomic.Bool
	gone     atomic.Int64
	headless atomic.Bool
}

// keepHeld has b give back c, its request's charge, once its record is
// written (Close), or now if Close has begun already.
func (b *recordingBody) keepHeld(c *heldCharge) {
	if c == nil {
		return
	}
	b.held.Store(c)
	if b.closed.Load() {
		b.giveBackHeld()
	}
}

// giveBackHeld gives back the charge b keeps, if any: the first of Close
// and keepHeld to take it does.
func (b *recordingBody) giveBackHeld() {
	if c := b.held.Swap(nil); c != nil {
		c.giveBack()
	}
}

// testHookBodyRead, when set, runs as a read of a response body begins:
// the response's head has been decided and handed to goproxy.
var testHookBodyRead atomic.Pointer[func()]

func (b *recordingBody) Read(p []byte) (int, error) {
	if h := testHookBodyRead.Load(); h != nil {
		(*h)()
	}
	if b.stream != nil {
		p = b.stream.next(p) // the previous piece is written
	}
	n, err := b.ReadCloser.Read(p)
	if b.reload != nil && (n > 0 || err != nil && !b.tunnel) {
		// Also on a failed read: the request body's check may have
		// ended the request, and its upstream with it (not a tunnel's:
		// a failed read of it is the destination's). Before the bytes
		// are counted: the reload's abort may have the record written
		// at once. The body's end alone after a known length read
		// whole (net/http's read past a Content-Length, the client
		// having had every byte), or of a response without a body
		// (its head was decided and is all the client gets), relays
		// nothing: a reload since
		// reaches the next request, and only one that ended this one
		// already ends it here; deciding it reset a keep-alive
		// connection whose response was whole. Any other body's end
		// (a chunked body's last chunk, an HTTP/2 END_STREAM) is
		// relayed, trailer and all, and tells the client the response
		// is whole: decided like bytes.
		var rerr error
		if n == 0 && err == io.EOF && (b.bodiless || b.whole > 0 && b.read.Load() == b.whole) {
			if b.reload.ended() {
				rerr = errTunnelReloadDenied
			}
		} else {
			rerr = b.reload.check()
		}
		if rerr != nil {
			if b.resetStream {
				// Reset, as for a failed read below: the client must
				// not take what it had for the whole body. The reset
				// discards what the server holds unsent: only what
				// went out is counted (outcome takes last off).
				b.resetAfter()
				panic(http.ErrAbortHandler)
			}
			// goproxy wrote the previous read whole before this one
			// (last): this one brought nothing that went on.
			b.last.Store(0)
			return 0, rerr
		}
	}
	if n > 0 && b.stream != nil {
		b.stream.writing(n) // goproxy writes it next
	}
	if err != nil && err != io.EOF {
		first := err // only this escapes: a read that succeeds allocates nothing
		b.readErr.CompareAndSwap(nil, &first)
		if b.toStream {
			// goproxy's HTTP/2 handler stops at a failed read and returns
			// normally: the server would end the stream with END_STREAM,
			// and the client take a body cut short for a whole one: one
			// of no length (chunked, upstream) has nothing to check it
			// by, and one with a Content-Length is a malformed response
			// that an intermediary must not forward (RFC 9113 §8.1.1),
			// which a client or cache that trusts END_STREAM would store
			// whole. A handler that panics with ErrAbortHandler has the
			// server reset the stream instead (RST_STREAM,
			// INTERNAL_ERROR), as httputil.ReverseProxy does; the server
			// recovers it, and goproxy's deferred Close still writes the
			// record. The reset discards nothing the client would have
			// had: the server holds no bytes of the body as it is read
			// (streamEnd flushes each piece it would hold, goproxy's
			// streaming copy each piece), so the head and every piece
			// before are out. The bytes of this read never reach the
			// client: not counted. A reset before the head went (a
			// chunked answer's goes with its first bytes) left the
			// client no status.
			b.headless.Store(!b.headWent())
			panic(http.ErrAbortHandler)
		}
	}
	if b.read.Add(int64(n)) == b.whole && n > 0 && b.answerConn != nil {
		b.answerConn.lastPieceRead()
	}
	b.last.Store(int64(n))
	if n > 0 {
		b.lastData.Store(int64(n))
	}
	if err == io.EOF {
		b.ended.Store(true)
	}
	return n, err
}

// resetAfter notes, as a reload resets the stream b is relayed to, what
// its client had of it: the body bytes flushed to the stream (the latest
// read's may still be held in the server's buffer, a known-length body's
// up to 4 KiB, and the head with them), and whether the head went.
func (b *recordingBody) resetAfter() {
	read := b.read.Load()
	gone := b.gone.Load()
	if b.toStream && !b.copying.Load() {
		// goproxy's streaming copy flushed each piece before this read.
		gone = read
	}
	b.last.Store(read - gone)
	b.headless.Store(b.toStream && !b.headWent())
}

// headWent reports whether the head of the response whose body b is went
// out to the client's HTTP/2 stream: streamEnd notes it; goproxy's
// streaming copy sends it with the first piece, flushed before the next
// read.
func (b *recordingBody) headWent() bool {
	if b.copying.Load() {
		return b.headGone.Load()
	}
	return b.read.Load() > 0
}

// inH2Handler reports whether req is served by an HTTP/2 server's stream
// handler, goproxy's for h2 and h2c clients: the one goroutine on which a
// panic is recovered. The server puts itself in the context of each
// stream's request; goproxy's HTTP/1 loop, whose goroutine recovers
// nothing (a panic there ends the appliance), reads requests with a bare
// context, whatever version their request line claims.
func inH2Handler(req *http.Request) bool {
	return req.ProtoMajor == 2 && req.Context().Value(http.ServerContextKey) != nil
}

// outcome says how the relay of the body ended: the record's result, its
// error ("" when ok), and bytes_in, the body bytes passed on to the client
// connection. A body closed before its end, with no read failing, is one
// goproxy stopped writing: the client went away (a write to it failed, or
// an HTTP/2 client reset the stream, which cancels ctx), and the bytes of
// the latest read are not counted; the client's own buffers may still have
// held some it never read. A read failing is the destination's doing
// (cut short, reset, timed out), unless ctx was cancelled first. A
// tunnel's end is its own: ok, unless a read from the destination failed,
// or a write to it (upgradedBody.writeFailed), or the client broke its
// connection (broke: reset, timeout for a vanished one).
//
// The last read can bring the body's end with its bytes (n, io.EOF: a
// net/http body of known length that arrives in one read), before goproxy
// writes them: ended says nothing about that write. A ctx already done at
// Close says it failed, or came too late: it is done before the close only
// for an HTTP/2 client's stream, which the client reset, or whose
// connection ended, before the server could end the stream (END_STREAM
// goes out only once the handler, which closes the body, returns). Nothing
// here knows whether those bytes reached the client: not counted, as for
// any write that failed. A ctx not yet done at Close says the body is
// out: under a stream watch the server's per-stream write buffer was
// flushed at the body's end (streamEnd), and what the server sends once
// the handler returns, the stream's end, waits on no window
// (docs/records.md says so). An HTTP/1 client's context is done only after the
// close: there werr, the first write to the client connection that failed
// (hijackedConn.responseWriteErr), says whether the last write failed, or
// the bytes it held back failed to go out once the body had ended. Either
// way the latest read is not counted; the result is timeout when the
// write ran out of time, error otherwise, as for a write that failed
// before the body's end. A client that went away by breaking its
// connection (broke, its reset or its vanishing, as the connection kept
// it: netstack.Conn.ClientBroke) makes it reset (timeout for a vanished
// one), "the client's connection broke: ...", as the client watch's
// Abort says it: the writer may take the reset from the stack before the
// watch does, and the record is written before the session ends.
func (b *recordingBody) outcome(ctx context.Context, werr, broke error) (result, errText string, delivered int64) {
	delivered = b.read.Load()
	var err error
	if p := b.readErr.Load(); p != nil {
		err = *p
	}
	switch {
	case b.tunnel:
		if b.copyingTunnel.Load() {
			delivered = b.passed.Load()
		}
		// Either side may end a tunnel, the client first as well (goproxy
		// then closes the body: nothing failed), unless it broke its
		// connection (reset, or vanished): the tunnel is a request under
		// way, cut, as the client watch's Abort says, which may come
		// after this record. A read that failed (not one cut by the
		// tunnel's own close: upgradedBody) is the destination's doing.
		if p := b.cutTail.Load(); p != nil {
			// The client broke after its FIN; the destination never
			// acknowledged the rest of its upload, and was reset.
			return "reset", fmt.Sprintf("WebSocket tunnel, after %d bytes from the destination: the client's connection broke after its FIN, and %v", delivered, *p), delivered
		}
		if broke != nil {
			return clientBreakResult(broke), fmt.Sprintf("WebSocket tunnel, after %d bytes from the destination: the client's connection broke: %v", delivered, broke), delivered
		}
		if err != nil && !errors.Is(err, net.ErrClosed) {
			return bodyResult(err), fmt.Sprintf("WebSocket tunnel from the destination, after %d bytes: %v", delivered, err), delivered
		}
		if f, ok := b.ReadCloser.(interface{ writeFailed() error }); ok {
			if werr := f.writeFailed(); werr != nil {
				// The read ended cleanly, or by the tunnel's own close,
				// which the failed write brought about: the reset was
				// the write's.
				return writeResult(werr), fmt.Sprintf("WebSocket tunnel to the destination, after %d bytes: %v", b.written.Load(), werr), delivered
			}
		}
		return "ok", "", delivered
	case b.ended.Load() && ctx.Err() == nil && werr == nil:
		return "ok", "", delivered
	}
	// Past the ok above: what a body of known length's DATA frames
	// carried into the client's connection (h2bodyout.go), asked once, as
	// it may wait for a write under way.
	var out int64
	outOK := false
	if !b.tunnel && b.copying.Load() {
		out, outOK = b.note.dataSent()
	}
	switch {
	case b.ended.Load() && err == nil && werr == nil && outOK && out >= delivered && !b.trailers():
		// A body of known length whose every byte went out in the
		// stream's DATA frames before its context was done: a client
		// that closed without waiting for END_STREAM (h2bodyout.go).
		return "ok", "", delivered
	case err == nil || ctx.Err() != nil || werr != nil || errors.Is(err, context.Canceled):
		switch {
		case werr != nil && err == nil:
			// The write that failed, or held its bytes back; the body's
			// end may have come after it, in a read of its own.
			delivered -= b.lastData.Load()
		case err == nil:
			if outOK {
				delivered = min(out, delivered) // what went out, counted
			} else {
				delivered -= b.last.Load() // the write that failed
			}
		}
		result, detail := "error", ""
		if werr != nil {
			detail = " (writing to it: " + werr.Error() + ")"
			if isTimeout(werr) {
				result = "timeout"
			}
		}
		if broke != nil && result == "error" {
			result = clientBreakResult(broke)
			detail += "; the client's connection broke: " + broke.Error()
		}
		result, why := b.limit.streamGone(b.note, ctx, nil, result, fmt.Sprintf("before the response ended (%d body bytes passed on)", delivered), detail)
		return result, why, delivered
	}
	return bodyResult(err), fmt.Sprintf("response body from the destination, after %d bytes: %v", delivered, err), delivered
}

// clientOutcome is rb's outcome (recordingBody.outcome) for a response
// rt passed on to the client, ctx the request's: on an HTTP/1 client
// connection, with the first write to it that failed; and with the
// client's break of its connection, if it has broken it. Called from
// rb.done.
func (rt *roundTripper) clientOutcome(ctx context.Context, rb *recordingBody) (result, why string, delivered int64) {
	var werr error
	if !rt.s.h2 {
		werr = rt.cc.responseWriteErr()
	}
	broke := rt.s.clientBroke()
	if rb.tunnel {
		broke = rt.s.awaitBreakTaken()
		if broke != nil && rt.s.finBreak.Load() && clientBreakResult(broke) == "reset" {
			// A reset after the client's FIN cuts nothing (the tls
			// record says ok: noteClientBreak). The stack keeps no
			// reset that comes in CLOSE-WAIT (ErrResetAfterFIN), but
			// keeps one that meets the appliance's own FIN, not yet
			// acknowledged (LAST-ACK, CLOSING: a destination's
			// half-close relayed), as a plain reset.
			broke = nil
		}
	}
	return rb.outcome(ctx, werr, broke)
}

// noteOutcome puts a result other than "ok" and why in rec, after the
// note rec.Error already holds, if any (a trust-page bucket's, an audited
// destination check's).
func noteOutcome(rec *records.Record, result, why string) {
	if result == "ok" {
		return
	}
	rec.Result = result
	if rec.Error != "" {
		why = rec.Error + "; " + why
	}
	rec.Error = why
}

// bodyResult names why reading a response body failed, for the Result
// field: reset, timeout, or error (a body cut short by a close). An HTTP/2
// stream reset is a reset: net/http's own StreamError type is unexported,
// but converts itself to x/net's (errors.As, by its fields). That is the
// destination's RST_STREAM, or the one the transport sent it for a
// protocol error of its own; the error text says which.
func bodyResult(err error) string {
	var se http2.StreamError
	if errors.Is(err, syscall.ECONNRESET) || errors.As(err, &se) {
		return "reset"
	}
	return records.DialResult(err)
}

// writeResult names why a write to a tunnel's destination failed, for the
// Result field: a reset, also when the write came after the reset was
// taken (EPIPE: endedHere has left out the appliance's own end), and the
// appliance's reset at its shutdown (relayDestinationEnd); else as
// bodyResult.
func writeResult(err error) string {
	if errors.Is(err, syscall.EPIPE) || errors.Is(err, errShutdownLingering) {
		return "reset"
	}
	return bodyResult(err)
}

// trailers reports whether the response has trailers, announced or come
// with the body's end: goproxy sends them after the body's Close.
func (b *recordingBody) trailers() bool {
	return b.resp != nil && len(b.resp.Trailer) > 0
}

// testHookBodyClose, when set, runs as a response body's Close begins.
var testHookBodyClose atomic.Pointer[func(*recordingBody)]

func (b *recordingBody) Close() error {
	if h := testHookBodyClose.Load(); h != nil {
		(*h)(b)
	}
	if b.stream != nil {
		b.stream.end()
	}
	err := b.ReadCloser.Close()
	if b.tunnel {
		b.writing.Lock() // the write under way, if any, has returned and is counted
		b.writing.Unlock()
		b.pass.settle() // and so has the one toward the client
	}
	if errors.Is(err, errTailUndelivered) || errors.Is(err, errDestinationResetLingering) {
		cut := err // only this escapes: every other Close allocates nothing
		b.cutTail.Store(&cut)
	}
	b.closed.Store(true)
	b.once.Do(func() {
		// After the record, and however done returns.
		defer b.giveBackHeld()
		b.done.endRecord()
	})
	return err
}

type recordingRWBody struct {
	*recordingBody
	w      io.Writer
	reload *tunnelReload // the client's side's; nil: no reload can reach it
}

// Read reads the destination's side of the tunnel; bytes read after a
// reload that ends the tunnel are not passed on, nor counted
// (recordingBody.reload). A read that ended the direction ends it only
// once counted (upgradedBody.readEnded).
func (b *recordingRWBody) Read(p []byte) (int, error) {
	n, err := b.recordingBody.Read(p)
	if u, ok := b.ReadCloser.(*upgradedBody); ok {
		u.readEnded()
	}
	return n, err
}

// Write writes the client's side of the tunnel, unless a reload has ended
// it.
func (b *recordingRWBody) Write(p []byte) (int, error) {
	if b.reload != nil {
		if err := b.reload.check(); err != nil {
			return 0, err
		}
	}
	b.writing.Lock()
	defer b.writing.Unlock()
	n, err := b.w.Write(p)
	b.written.Add(int64(n))
	return n, err
}
