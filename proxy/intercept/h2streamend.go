package intercept

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/elazarl/goproxy"
	"golang.org/x/net/http2"
)

// Who ended an HTTP/2 stream.
//
// x/net's server (goproxy's, facing the client) cancels a stream's
// request context the same way whoever ends the stream: the client's
// RST_STREAM, its own RST_STREAM for a protocol error of the client's (a
// WINDOW_UPDATE of 0, DATA after END_STREAM, a stream window overflowed:
// PROTOCOL_ERROR, STREAM_CLOSED, FLOW_CONTROL_ERROR), the connection's
// end, its own GOAWAY for a connection error of the client's among them.
// A request saw only its context done, and its record said "the client
// went away" each time: of a client still connected, which the appliance
// had just sent an RST_STREAM or a GOAWAY (review records30 F1, F2).
//
// The appliance sees what ended each stream before the request does. The
// client's frames reach x/net through the client connection's reads,
// after the header list limit has followed them (h2limit.go): a client's
// RST_STREAM, and the frames x/net must answer with a reset whatever the
// stream's state (a WINDOW_UPDATE of 0, a PRIORITY on which the stream
// depends on itself), or whose state the Rapid Reset count follows
// (h2guard.go, h2guardbody.go), are noted there, before x/net has read
// them, so before it cancels the context. The server's writes are
// followed too (h2Frames): its RST_STREAMs, with their codes, and its
// GOAWAY; those are seen only once x/net flushes them, which may be just
// after it cancelled the context (it closes the stream once the reset is
// in its write buffer), so a request that finds nothing noted waits for
// them, at most h2EndWait, or for the connection's close (the client's
// end, which x/net cancels every stream for just before it closes the
// connection).
//
// A request knows its stream by the id x/net gave it, read from its body
// as x/net made it (h2StreamIDOf), before goproxy replaces the body of a
// request without one; a stream whose id cannot be read, or whose note
// was dropped (a client that keeps more than h2MaxEndNotes streams noted:
// h2notesbound.go), is
// recorded as before, as the client's going away. Nothing is guessed: a
// note says server only when the server reset that very stream, and a
// client's RST_STREAM noted first stays the client's; a reset the reader
// foresaw counts only if the writer saw it go out, or the server sent no
// GOAWAY for a connection error (endedLocked); a client's reset, only if
// x/net had processed it when that GOAWAY went out
// (clientBeforeGoAwayLocked), or, for the appliance's refusal, if the
// reader noted it first (h2refused.go).

// h2EndWait bounds a request's wait for what ended its stream, once its
// context is done with nothing noted yet: x/net flushes its reset at
// once, and closes the connection right after it ends it.
const h2EndWait = time.Second

// Who ended a stream, as far as the appliance saw.
const (
	h2EndedNot    = iota // nothing seen yet
	h2EndedClient        // the client's RST_STREAM
	h2EndedServer        // the server's RST_STREAM, for the client's protocol error
	// h2EndedUnknown: the note was dropped (h2MaxEndNotes), and with it
	// what came after: the stream is recorded as before.
	h2EndedUnknown
)

// h2StreamNote is what the appliance saw of one stream of an HTTP/2
// connection, from its HEADERS frame until its request's record is
// written (or it is dropped, h2MaxEndNotes). Its fields are guarded by
// its notes' mu.
type h2StreamNote struct {
	of    *h2StreamNotes
	id    uint32
	ended uint8 // h2Ended*
	code  http2.ErrCode
	// written: the server's reset (ended h2EndedServer) was seen going
	// out, not only foreseen by the reader as the client's frame came
	// (endedLocked).
	written bool
	claimed bool // a request of the appliance's handler took it up
	// ctx is the request's, once claimed: done once x/net has closed
	// the stream (clientBeforeGoAwayLocked).
	ctx context.Context
	// unsure: the client's reset was noted, and the server's GOAWAY for
	// a connection error written, before the request was claimed; claim
	// tells which x/net processed first.
	unsure bool
	// reject is the request x/net's server must answer 400 itself, as
	// the header block said it (h2reject.go).
	reject *h2Reject
	// out is the payload of the stream's DATA frames written to the
	// client's connection, and resetAt the notes' epoch when the client's
	// reset was noted (h2bodyout.go).
	out     int64
	resetAt uint64
}

// h2StreamNotes is a connection's notes, kept in h2Unanswered. Its zero
// value is ready.
type h2StreamNotes struct {
	mu sync.Mutex
	m  map[uint32]*h2StreamNote
	// goAway is the code of the server's first GOAWAY with one other
	// than NO_ERROR, once written (goneAway); refusal, the appliance's
	// refusal of the client, when that GOAWAY was its own (h2refused.go).
	goAway   http2.ErrCode
	goneAway bool
	refusal  *h2GoAway
	closed   bool // the connection was closed
	// listRefused: the refusal is the header list limit's, its stream
	// answered 431 (not a trailer block's); refusalCut: the GOAWAY
	// ended a request under way (h2refused.go).
	listRefused, refusalCut bool
	// graceful: the server's GOAWAY with NO_ERROR is out; byServer: the
	// server closed the connection on its own after it, and cut: a
	// request under way was ended so (h2graceful.go).
	graceful, byServer, cut bool
	// deaf: the reader read a connection error of the client's, with
	// no GOAWAY for an error out (h2graceful.go).
	deaf bool
	// epoch counts the clients' resets noted and the connection's close,
	// and closedAt is its value at the close: a write the writer began
	// before either counts (h2bodyout.go).
	epoch    atomic.Uint64
	closedAt uint64
	// writing: a write of the server's is under way, its DATA not yet
	// counted (h2bodyout.go).
	writing bool
	// changed is closed, and dropped, when the writer notes something or
	// the connection closes: a waiting request looks again (end).
	changed chan struct{}
	// onReject records a request x/net answered 400 itself
	// (h2reject.go); set by the session.
	onReject func(*h2Reject)
}

// open notes stream id, from its HEADERS frame.
func (n *h2StreamNotes) open(id uint32) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.m == nil {
		n.m = make(map[uint32]*h2StreamNote)
	}
	if len(n.m) >= h2MaxEndNotes {
		n.dropOlderLocked()
	}
	n.m[id] = &h2StreamNote{of: n, id: id}
}

// client notes the client's RST_STREAM on id, as the reader reads it:
// foreseen, as a reset of the server's is, for x/net takes the client's
// frames in their order on the wire, and processes none after one that
// broke the connection. One read once the server's GOAWAY for a
// connection error is out came after that error: nothing. One read
// before is weighed as that GOAWAY goes out (serverGoAway).
func (n *h2StreamNotes) client(id uint32) {
	n.mu.Lock()
	e := n.m[id]
	if e != nil && e.resetAt == 0 {
		// Whether or not it ends the stream for the server, the client
		// drops the stream's DATA from now on (h2bodyout.go; review
		// rev33f F3: one read after its own connection error).
		e.resetAt = n.epoch.Add(1)
	}
	if e != nil && e.ended == h2EndedNot && !n.goneAway && !n.deaf {
		e.ended = h2EndedClient
	}
	n.mu.Unlock()
}

// clientBeforeGoAwayLocked weighs e's client reset, noted by the reader,
// as the server's GOAWAY for a connection error goes out, or, if e was
// not claimed then, as it is claimed (unsure). x/net cancels a stream's
// context as it processes the client's RST_STREAM, before it goes on to
// the next frame, so before it processes the frame that broke the
// connection, and so before the GOAWAY it draws is written; a stream it
// has not closed by then had its reset come after that frame, which
// x/net never processes: the stream ends with the connection, its
// GOAWAY, as the tls record says (review rev30d F2). Its context is done
// otherwise only once the connection closes, a second after the GOAWAY.
// n.mu is held.
func (e *h2StreamNote) clientBeforeGoAwayLocked() {
	if e.ended != h2EndedClient {
		return
	}
	if e.ctx == nil {
		e.unsure = true
		return
	}
	e.unsure = false
	if e.ctx.Err() == nil {
		e.ended = h2EndedNot
	}
}

// serverResetCode reports whether code, on an RST_STREAM of the server's,
// says the client's protocol error: not REFUSED_STREAM (a stream it never
// served), nor the appliance's own (INTERNAL_ERROR, CANCEL: a handler that
// gave up), nor NO_ERROR (after a whole response).
func serverResetCode(code http2.ErrCode) bool {
	switch code {
	case http2.ErrCodeProtocol, http2.ErrCodeFlowControl, http2.ErrCodeStreamClosed, http2.ErrCodeFrameSize:
		return true
	}
	return false
}

// server notes the server's reset of id with code, for the client's
// protocol error: from the reader, as the client's frame that draws it
// comes in; from the writer (written), as the reset goes out. A stream
// the client reset first stays the client's. Once the server has sent a
// GOAWAY for a connection error, it reads no more frames: those that come
// reset nothing.
func (n *h2StreamNotes) server(id uint32, code http2.ErrCode, written bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	e := n.m[id]
	if e == nil {
		return
	}
	if written {
		// A reset, whatever its code, is no 400 (h2reject.go).
		e.reject = nil
		if code == http2.ErrCodeRefusedStream && !e.claimed {
			delete(n.m, id) // no request will take it up: h2notesbound.go
			return
		}
	}
	if written && e.ended == h2EndedServer && !e.written {
		// The reset the reader foresaw, going out.
		e.written = true
		if serverResetCode(code) {
			e.code = code
		}
		n.changedLocked()
		return
	}
	if e.ended != h2EndedNot || !serverResetCode(code) || (n.goneAway || n.deaf) && !written {
		return
	}
	e.ended, e.code, e.written = h2EndedServer, code, written
	if written {
		n.changedLocked()
	}
}

// endedLocked is what ended e's stream as noted so far, and its reset's
// code. A reset the reader foresaw and the writer has not seen going out
// is none once the server has sent a GOAWAY for a connection error: x/net
// processes no frame read after the one that broke the connection (the
// client's frame may have come in the same read, after it, the reader
// noting it before x/net's writer had the GOAWAY out), and writes no
// frame it had queued once that GOAWAY is out (its scheduler pops none
// after an error GOAWAY). Either way no RST_STREAM reaches the client,
// and the stream ends with the connection: the GOAWAY is what ended it
// (review rev30b F2). x/net cancels a stream it reset only once the reset
// is written, so a request that finds the reset foreseen and no GOAWAY
// has its stream ended by that reset, seen going out or not yet. n.mu is
// held.
func (e *h2StreamNote) endedLocked() (uint8, http2.ErrCode) {
	if e.ended == h2EndedServer && !e.written && e.of.goneAway {
		return h2EndedNot, 0
	}
	return e.ended, e.code
}

// serverGoAway notes a GOAWAY the server wrote, with code.
func (n *h2StreamNotes) serverGoAway(code http2.ErrCode) {
	n.mu.Lock()
	if code == http2.ErrCodeNo {
		// A graceful one: the streams under way go on, unless the
		// server closes the connection after it (h2graceful.go).
		n.graceful = true
		n.mu.Unlock()
		return
	}
	n.goneAwayLocked(code, nil)
	n.mu.Unlock()
}

// goneAwayLocked notes the first GOAWAY for a connection error, with
// code: the server's, or the appliance's refusal of the client (refusal
// set, h2refused.go). The server's weighs the client's resets noted so
// far against it (clientBeforeGoAwayLocked), for x/net processes no frame
// read after the one it answers; the refusal's leaves them the client's:
// the reader noted them before the refusal (h2refused.go). n.mu is held.
func (n *h2StreamNotes) goneAwayLocked(code http2.ErrCode, refusal *h2GoAway) {
	if n.goneAway {
		return
	}
	n.goAway, n.goneAway, n.refusal = code, true, refusal
	if refusal == nil {
		for _, e := range n.m {
			e.clientBeforeGoAwayLocked()
		}
	}
	n.changedLocked()
}

// connClosed notes the client connection's close; byServer, by the
// server on its own, the client's side whole (h2graceful.go).
func (n *h2StreamNotes) connClosed(byServer bool) {
	n.mu.Lock()
	if !n.closed {
		n.byServer = byServer && n.graceful && !n.goneAway
		n.closedAt = n.epoch.Add(1)
	}
	n.closed = true
	n.changedLocked()
	n.mu.Unlock()
}

func (n *h2StreamNotes) changedLocked() {
	if n.changed != nil {
		close(n.changed)
		n.changed = nil
	}
}

// serverEnd returns the code of the server's GOAWAY for a connection
// error, if it sent one.
func (n *h2StreamNotes) serverEnd() (http2.ErrCode, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.goAway, n.goneAway
}

// claim takes up the note of stream id for the request the appliance's
// handler serves on it, whose context is ctx; nil if there is none.
func (n *h2StreamNotes) claim(id uint32, ctx context.Context) *h2StreamNote {
	n.mu.Lock()
	defer n.mu.Unlock()
	e := n.m[id]
	if e != nil {
		e.claimed, e.ctx = true, ctx
		e.reject = nil // served by the appliance: no 400 of x/net's
		if e.unsure {
			e.clientBeforeGoAwayLocked()
		}
	}
	return e
}

// release drops e, its request's record written.
func (e *h2StreamNote) release() {
	n := e.of
	n.mu.Lock()
	if n.m[e.id] == e {
		delete(n.m, e.id)
	}
	n.mu.Unlock()
}

// look returns what ended e's stream, as noted so far: h2Ended* and the
// reset's code, and the code of the server's GOAWAY, if it sent one
// (goneAway).
func (e *h2StreamNote) look() (ended uint8, code, goAway http2.ErrCode, goneAway bool) {
	n := e.of
	n.mu.Lock()
	defer n.mu.Unlock()
	ended, code = e.endedLocked()
	return ended, code, n.goAway, n.goneAway
}

// end is look, once something is noted: with nothing noted yet, it waits
// for the writer's note or the connection's close, at most h2EndWait.
func (e *h2StreamNote) end() (ended uint8, code, goAway http2.ErrCode, goneAway bool) {
	n := e.of
	var timer *time.Timer
	expired := false
	for {
		n.mu.Lock()
		ended, code = e.endedLocked()
		goAway, goneAway = n.goAway, n.goneAway
		if ended != h2EndedNot || goneAway || n.closed || expired {
			n.mu.Unlock()
			if timer != nil {
				timer.Stop()
			}
			return ended, code, goAway, goneAway
		}
		if n.changed == nil {
			n.changed = make(chan struct{})
		}
		ch := n.changed
		n.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(h2EndWait)
		}
		select {
		case <-ch:
		case <-timer.C:
			expired = true
		}
	}
}

// h2StreamNoteOf returns the note noteH2Stream left on the ProxyCtx of
// goproxy's request, or nil.
func h2StreamNoteOf(ctx *goproxy.ProxyCtx) *h2StreamNote {
	if ctx == nil {
		return nil
	}
	e, _ := ctx.UserData.(*h2StreamNote)
	return e
}

// releaseIfAny is release for a note that may be nil.
func (e *h2StreamNote) releaseIfAny() {
	if e != nil {
		e.release()
	}
}

// noteH2Stream is goproxy's request filter: it leaves the note of an
// HTTP/2 request's stream, if there is one, on the request's ProxyCtx,
// where RoundTrip takes it up (h2StreamNoteOf). It runs before goproxy
// replaces the body of a request without one, which is the only part of
// the request x/net made that knows its stream. goproxy makes a ProxyCtx
// for each request (each stream's, handleH2MitmStream) and hands it, as
// it handed it to the filters, to RoundTrip; its UserData, the parent's
// copied, is nil, as the appliance sets none on the parent. Not in the
// request's context: that cost a context and a copy of the request, two
// allocations for every HTTP/2 request (review rev30b F5).
func noteH2Stream(req *http.Request, ctx *goproxy.ProxyCtx) (*http.Request, *http.Response) {
	if req.ProtoMajor != 2 {
		return req, nil
	}
	rt, _ := ctx.RoundTripper.(*roundTripper)
	if rt == nil || rt.cc == nil {
		return req, nil
	}
	id := h2StreamIDOf(req.Body)
	if id == 0 {
		return req, nil
	}
	if e := rt.cc.limit.unanswered.notes().claim(id, req.Context()); e != nil {
		ctx.UserData = e
	}
	return req, nil
}

// h2BodyLayout is where x/net's request body keeps its stream's id: the
// indexes of the field requestBody.stream and of stream.id.
type h2BodyLayout struct {
	typ        reflect.Type // *http2.requestBody
	stream, id int
}

var h2Layout atomic.Pointer[h2BodyLayout]

// h2StreamIDOf returns the id of the HTTP/2 stream whose request's body,
// as x/net's server made it, is body; 0 if body is no such body. x/net
// exports no stream id: it is read from the body's unexported fields
// (requestBody.stream.id, set as the stream opens, before its handler
// starts, and never changed), each checked for its name and kind, so
// that another x/net, laid out otherwise, makes it 0, which records the
// stream as before (TestH2StreamIDOf says so).
func h2StreamIDOf(body io.ReadCloser) uint32 {
	v := reflect.ValueOf(body)
	if v.Kind() != reflect.Pointer || v.IsNil() {
		return 0
	}
	l := h2Layout.Load()
	if l == nil || l.typ != v.Type() {
		if l = h2LayoutOf(v.Type()); l == nil {
			return 0
		}
		h2Layout.Store(l)
	}
	st := v.Elem().Field(l.stream)
	if st.IsNil() {
		return 0
	}
	return uint32(st.Elem().Field(l.id).Uint())
}

// h2LayoutOf returns the layout of t if it is x/net's *requestBody, as
// h2StreamIDOf reads it; nil if not.
func h2LayoutOf(t reflect.Type) *h2BodyLayout {
	if t.Kind() != reflect.Pointer {
		return nil
	}
	b := t.Elem()
	if b.Kind() != reflect.Struct || b.PkgPath() != "golang.org/x/net/http2" || b.Name() != "requestBody" {
		return nil
	}
	sf, ok := b.FieldByName("stream")
	if !ok || len(sf.Index) != 1 || sf.Type.Kind() != reflect.Pointer || sf.Type.Elem().Kind() != reflect.Struct {
		return nil
	}
	idf, ok := sf.Type.Elem().FieldByName("id")
	if !ok || len(idf.Index) != 1 || idf.Type.Kind() != reflect.Uint32 {
		return nil
	}
	return &h2BodyLayout{typ: t, stream: sf.Index[0], id: idf.Index[0]}
}

// streamGone is clientGone (h2limit.go) for the request whose stream's
// note is e (nil for none), whose context is ctx, and whose body's read
// failed with bodyErr, if it did: an HTTP/2
// stream's says what ended the stream when the appliance's server did,
// not the client: `error`, and "reset by the appliance's HTTP/2 server
// for the client's protocol error (RST_STREAM <code>)", or, for the
// server's GOAWAY, "the appliance's HTTP/2 server closed the connection
// ... (GOAWAY <code>)". Not `reset`: that result says the client reset
// (docs/records.md); this client is still there, and got the server's
// reset or GOAWAY for what it sent.
func (l *headLimit) streamGone(e *h2StreamNote, ctx context.Context, bodyErr error, result, when, detail string) (string, string) {
	if e == nil {
		return l.clientGone(result, when, detail)
	}
	ended, code, goAway, goneAway := e.look()
	if ended == h2EndedUnknown {
		return l.clientGone(result, when, detail)
	}
	if se, ok := errors.AsType[http2.StreamError](bodyErr); ended == h2EndedNot && ok && se.StreamID == e.id && serverResetCode(se.Code) {
		// x/net closes a stream's body with the StreamError that
		// closed the stream: the client's RST_STREAM (noted before x/net
		// read it), or its own reset, just written, which the writer may
		// not have seen yet. The body's error may come just before the
		// request's context is done.
		ended, code = h2EndedServer, se.Code
	}
	if ended == h2EndedNot && !goneAway {
		if l.endedByAppliance() || ctx.Err() == nil {
			// The appliance's deadline, reclaim or shutdown; or a
			// stream not ended (a request ended otherwise: a reload's
			// deny): nothing to wait for.
			return l.clientGone(result, when, detail)
		}
		ended, code, goAway, goneAway = e.end()
	}
	switch {
	case ended == h2EndedServer:
		return "error", fmt.Sprintf("reset by the appliance's HTTP/2 server for the client's protocol error (RST_STREAM %v) %s%s", code, when, detail)
	case ended == h2EndedNot && goneAway:
		return "error", e.of.goAwayCut(goAway) + " " + when + detail
	case ended == h2EndedNot && e.of.cutByServer():
		return "error", errClosedAfterGraceful + " " + when + detail // h2graceful.go
	}
	return l.clientGone(result, when, detail)
}

// serverGoAwayError says the server's GOAWAY with code, for the records.
func serverGoAwayError(code http2.ErrCode) string {
	why := "the client's protocol error"
	if code == http2.ErrCodeEnhanceYourCalm {
		why = "the load the client's frames put on it"
	}
	return fmt.Sprintf("the appliance's HTTP/2 server closed the connection for %s (GOAWAY %v)", why, code)
}

// noteServerGoAway puts the server's GOAWAY for a connection error, if it
// sent one, or the appliance's refusal, in the session's tls record:
// `error`, unless something else ended it first, or it is the header list
// limit's refusal and ended no request (h2refused.go).
func (rt *roundTripper) noteServerGoAway() {
	n := rt.cc.limit.unanswered.notes()
	code, ok := n.serverEnd()
	if rt.s.Record.Error != "" {
		return
	}
	switch {
	case ok && n.listRefusalAlone():
		return // as after an HTTP/1 431: the deny record says it
	case ok:
		rt.s.Record.Error = n.goAwayError(code)
	case n.cutRequest():
		rt.s.Record.Error = errClosedAfterGraceful // h2graceful.go
	default:
		return
	}
	if rt.s.Record.Result == "ok" {
		rt.s.Record.Result = "error"
	}
}

// notes returns u's stream notes.
func (u *h2Unanswered) notes() *h2StreamNotes { return &u.ends }

// noteServerReset notes the server's reset of id with code, drawn by the
// client's frame just read; u may be nil.
func (u *h2Unanswered) noteServerReset(id uint32, code http2.ErrCode) {
	if u != nil {
		u.ends.server(id, code, false)
	}
}
