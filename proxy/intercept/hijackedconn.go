package intercept

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http2"
)

// hijackedConn is the client connection as goproxy sees it. It swallows the
// CONNECT response goproxy writes (our client never sent a CONNECT), counts
// bytes, bounds HTTP/1 request heads, and reports when goproxy closes it.
type hijackedConn struct {
	net.Conn
	swallow []byte
	// swallowEnd says swallow is a chunked response's end endChunked
	// wrote: goproxy's next writes must be the same bytes.
	swallowEnd bool
	in, out    atomic.Int64
	// werr is the first write to the client that failed: a response
	// whose last bytes it lost is no success (responseWriteErr).
	werr    atomic.Pointer[error]
	once    sync.Once
	onClose func() // run once, after the first Close

	limit headLimit // bounds HTTP/1 request heads and HTTP/2 header lists
	hold  writeHold // coalesces a response's small writes
	// frames follows what goproxy's HTTP/2 server writes, once the
	// client has sent the HTTP/2 preface; guarded by hold.mu, as every
	// write is.
	frames h2Frames
	// h1: goproxy's HTTP/1 loop serves it, on one goroutine (idle.go),
	// and bounds keeps its buffers to one request (h1bounds.go).
	h1     bool
	bounds h1Bounds
	// bodyFault is the error that broke an HTTP/1 request body, or the
	// drain's giving up on it: nothing after it is served (bodyfault.go).
	bodyFault atomic.Pointer[error]
	// answer is where the HTTP/1 request in flight stands for a client's
	// break, lastPiece whether its response's last bytes were read from
	// its body, lastWritten whether goproxy's write of them returned,
	// settled closed once a break that came as they went out is settled
	// (answer.go).
	answer      atomic.Int32
	lastPiece   atomic.Bool
	lastWritten atomic.Bool
	settled     atomic.Pointer[chan struct{}]
	// lastClosed: goproxy's last response closes the connection, so it
	// reads no head after it (headUnread).
	lastClosed atomic.Bool
	// lingers, when set, reports whether the connection, as goproxy
	// closes it, ends with a lingering close; lingering says one has
	// begun: reads return net.ErrClosed since (clientend.go).
	lingers   func() bool
	lingering atomic.Bool
	// destFailed, when set, reports whether a tunnel's destination failed (clientend.go).
	destFailed func() bool
	// upload follows goproxy's copy of a WebSocket tunnel's upload, which
	// reads here: the tunnel's end waits for it (uploadcopy.go).
	upload uploadCopy
	// unchunk undoes goproxy's chunking of an answer to an HTTP/1.0
	// request (http10.go).
	unchunk unchunk
}

// hijacker is the http.ResponseWriter goproxy gets for our CONNECT: it can
// only be hijacked. The sniffed bytes stay in the connection's own reader:
// goproxy replays a snapshot of whatever the hijacked reader has buffered,
// so handing it that reader would deliver them twice.
type hijacker struct {
	conn *hijackedConn
	hdr  http.Header
}

func (h *hijacker) Header() http.Header {
	if h.hdr == nil {
		h.hdr = make(http.Header)
	}
	return h.hdr
}

func (h *hijacker) Write(b []byte) (int, error) { return h.conn.Write(b) }

func (h *hijacker) WriteHeader(int) {}

func (h *hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	// goproxy only snapshots what the reader has buffered (nothing: it has
	// never read) and never writes through the writer: the smallest
	// buffers bufio allows spare 8 KiB of garbage per connection.
	return h.conn, bufio.NewReadWriter(bufio.NewReaderSize(h.conn, 16), bufio.NewWriterSize(h.conn, 16)), nil
}

// The head limit.

// goproxy reads HTTP/1 request heads with http.ReadRequest, which has no
// size limit: one client could grow a header line until the process runs
// out of memory. While a head is being read (from the end of one response
// to the next round trip) the client connection counts what goproxy reads
// against a limit, as net/http does with MaxHeaderBytes; goproxy's
// buffering lets a head overshoot it by a few KiB at most.
//
// An HTTP/2 client's header lists are bounded once its preface has come
// (h2limit.go); until then, and for good if the bytes are not the preface
// (a client that negotiated h2 and speaks HTTP/1, which goproxy then
// parses as such), the HTTP/1 limit holds.
type headLimit struct {
	max      int64 // 0: no limit; read and written by goproxy's reader only
	preface  int   // HTTP/2: preface bytes still to see; -1: not HTTP/2 after all
	inHead   atomic.Bool
	read     atomic.Int64
	tooLarge atomic.Bool
	// answered431: the HTTP/2 refusal of an oversized header list has
	// a 431 for its stream, which a trailer block's has not (h2refused.go).
	answered431 atomic.Bool
	// refused is the error of an HTTP/2 connection refused by a guard of
	// h2guard.go (an *h2GoAway), for the session's record, or
	// errHeadTooLarge, the header list limit's (tooLarge's record): one
	// refusal a connection, the reader's or the writer's (Read).
	refused atomic.Pointer[error]
	// unanswered is the HTTP/2 streams the client opened that the server
	// has not answered: h2guard.go.
	unanswered h2Unanswered
	// shuttingDown is Config.ShuttingDown (clientGone).
	shuttingDown func() bool
	// reclaimed is the client connection, if the packet stack may reset
	// it to reclaim memory (clientGone).
	reclaimed reclaimable
	// h2 measures header lists once the HTTP/2 preface has come; read
	// and written by the reader only. isH2 says so to the other
	// goroutines.
	h2   *h2HeaderLimit
	isH2 atomic.Bool
	// streams is h2.opened as of the last bytes handed to the server (not
	// those of a read the limit refused): what the session waits for
	// before it ends (goproxy.go).
	streams atomic.Int64

	// The head deadline: requestHeadTimeout from a head's first byte.
	// timed is set (with conn, whose deadline it is, and deadline, when)
	// while one is armed; timedOut once a read ran past it. unit is, for
	// HTTP/2, the frame or header block (h2HeaderLimit.units) it was last
	// armed for. conn, deadline and unit belong to the reader.
	conn     net.Conn
	deadline time.Time
	unit     uint64
	timed    atomic.Bool
	timedOut atomic.Bool
	// idle is the wait for a request: idle.go.
	idle clientIdle
}

// requestHeadTimeout bounds the rest of an HTTP/1 request head, or of an
// HTTP/2 client's preface, once its first byte has come: a client that
// left a head unfinished (under --max-header-bytes) held its flow, and
// the head so far, for good. The wait for the first byte is the idle
// timeout's (idle.go). Clients write a head at once; sniff.CompleteTimeout (3 s) bounds a
// flow's first bytes, a whole head of up to 64 KiB gets more, for slow
// paths: 10 s, as a response head (responseHeadTimeout). What follows
// the head, a body or a WebSocket tunnel, is not bounded by it.
var requestHeadTimeout = 10 * time.Second // a variable for tests

// errHeadTooLarge ends goproxy's read of an oversized request head.
var errHeadTooLarge = errors.New("request head too large")

// arm starts the limit for a new connection.
func (l *headLimit) arm(max int, h2 bool) {
	l.max = int64(max)
	if h2 {
		l.preface = len(http2.ClientPreface)
	}
	l.inHead.Store(true)
}

// headDone marks a request head as read: its body is not limited, nor
// given the head's deadline. An HTTP/2 connection's deadline is its
// reader's (timeH2): a stream's request says nothing of the frames after
// it.
func (l *headLimit) headDone() {
	l.inHead.Store(false)
	if !l.isH2.Load() {
		l.untime()
	}
}

// timeoutError says what the deadline ended, for the record.
func (l *headLimit) timeoutError() string {
	what := "request head"
	if l.isH2.Load() {
		what = "HTTP/2 header block or frame"
	}
	return fmt.Sprintf("%s not complete %v after its first byte", what, requestHeadTimeout)
}

// time arms the head deadline on c, the client connection, unless armed;
// untime disarms it.
func (l *headLimit) time(c net.Conn) {
	if !l.timed.Load() {
		l.setDeadline(c, time.Now())
	}
}

func (l *headLimit) setDeadline(c net.Conn, now time.Time) {
	l.conn, l.deadline = c, now.Add(requestHeadTimeout)
	l.idle.armed.Store(false)
	l.timed.Store(true)
	_ = c.SetReadDeadline(l.deadline)
}

// count takes the bytes b just read from the client. It returns
// errHeadTooLarge when they overran the limit, another error when they
// are HTTP/2 frames it cannot follow.
func (l *headLimit) count(b []byte) error {
	if l.h2 != nil {
		return l.feedH2(b)
	}
	if l.max == 0 {
		return nil
	}
	if l.preface > 0 {
		want := http2.ClientPreface[len(http2.ClientPreface)-l.preface:]
		k := min(len(b), len(want))
		switch {
		case string(b[:k]) != want[:k]:
			l.preface = -1
		case k == len(want):
			l.preface = 0
			l.h2 = newH2HeaderLimit(h2MaxHeaderList(l.max))
			l.h2.unanswered = &l.unanswered
			l.isH2.Store(true)
			return l.feedH2(b[k:])
		default:
			l.preface -= k
		}
	}
	if l.inHead.Load() && l.overHead(b) { // h1bounds.go: bytes and lines
		return errHeadTooLarge
	}
	return nil
}

// feedH2 measures HTTP/2 bytes, and publishes the streams they opened
// once they may reach the server.
func (l *headLimit) feedH2(b []byte) error {
	if err := l.h2.feed(b); err != nil {
		return err
	}
	if n := l.h2.opened; n != l.streams.Load() {
		l.idle.last.Store(l.h2.lastStream) // for an idle close's GOAWAY
		l.streams.Store(n)
	}
	return nil
}

// Read implements net.Conn: it counts the bytes, and ends an oversized
// request head or header list with a 431. The bytes that overran the limit
// are never returned.
func (c *hijackedConn) Read(b []byte) (int, error) {
	if c.lingering.Load() {
		return 0, net.ErrClosed
	}
	if c.hold.active.Load() {
		c.endHold()
	}
	if c.limit.unanswered.writerRefused.Load() != 0 {
		return 0, c.lingerRefused(b) // h2guard.go
	}
	n, err := c.readConn(b)
	if c.lingering.Load() {
		// goproxy closed the connection during the read (the HTTP/2
		// server's reader): what came is the linger's to drop.
		return 0, net.ErrClosed
	}
	if c.limit.unanswered.writerRefused.Load() != 0 {
		return 0, c.lingerRefused(b) // what came is not the server's
	}
	for n == 0 && c.limit.timed.Load() && isTimeout(err) {
		if h := c.limit.h2; h == nil || h.pending() {
			c.limit.timedOut.Store(true)
			break
		}
		// An HTTP/2 deadline whose frame or header block has ended
		// since (timeH2): disarmed now, and the read goes on.
		c.limit.untime()
		n, err = c.Conn.Read(b)
	}
	if n == 0 && c.limit.idle.armed.Load() && isTimeout(err) {
		c.limit.idle.out.Store(true)
	}
	c.in.Add(int64(n) + c.bounds.skipped) // with the empty lines dropped before a head
	c.bounds.skipped = 0
	if lerr := c.limit.count(b[:n]); lerr != nil {
		refused := lerr // only this escapes: a read within the limits allocates nothing
		switch {
		case c.limit.h2 == nil: // an HTTP/1 head
			if !c.limit.tooLarge.Swap(true) {
				c.write431()
			}
		case c.limit.refused.Load() == nil && c.limit.unanswered.ends.serverErrGoAway():
			// x/net's own GOAWAY for an error is out: it processes
			// nothing more, and the appliance refuses nothing (h2refused.go).
			c.linger(b)
			return 0, lerr
		case c.limit.refused.CompareAndSwap(nil, &refused):
			// An HTTP/2 connection is refused once: by the reader, or by
			// the writer (checkWrittenResets), whichever claims it first.
			c.limit.tooLarge.Store(lerr == errHeadTooLarge)
			c.limit.noteRefused(lerr) // for the records: h2refused.go
			c.refuseH2(b)             // its GOAWAY: h2limit.go's refusal
		default:
			// The writer refused the client while these bytes were
			// counted: its GOAWAY alone goes out, and its refusal is the
			// records' (review rev33a F2).
			return 0, c.lingerRefused(b)
		}
		return 0, lerr
	}
	if c.limit.unanswered.writerRefused.Load() != 0 {
		// The writer refused the client while the bytes were counted:
		// its GOAWAY may name a last stream before theirs, and the notes
		// have missed their resets. x/net never gets them
		// (checkWrittenResets).
		return 0, c.lingerRefused(b)
	}
	if n > 0 {
		switch {
		case c.limit.h2 != nil: // past the preface: h2limit.go's, and x/net's
			c.limit.timeH2(c.Conn)
		case c.limit.inHead.Load():
			c.limit.time(c.Conn)
		}
	}
	if err != nil {
		c.readEnded(n) // unreadhead.go
	}
	return n, err
}

// isTimeout reports whether err, from a read, is the head deadline's.
// Not errors.Is(err, os.ErrDeadlineExceeded): over the stack the client
// connection's deadline error is gonet's own ("i/o timeout", Timeout()
// true), which that misses (TestInterceptedHeadDeadlineRecorded). A
// client's TCP timeout (its keepalives or retransmissions unanswered) is
// no deadline: netstack's Read says it as ETIMEDOUT once the break was
// kept, a net.Error whose Timeout() is true, so it is ruled out by name
// (TestInterceptedClientTimeoutMidHead).
func isTimeout(err error) bool {
	ne, ok := errors.AsType[net.Error](err)
	return ok && ne.Timeout() && !errors.Is(err, syscall.ETIMEDOUT)
}

// write431 answers an oversized head, after any response bytes still held:
// they are what the client's previous request was waiting for. An HTTP/2
// client gets its refusal between two of the server's frames.
func (c *hijackedConn) write431() {
	const body = "gwlbproxy: request head too large\n"
	h := &c.hold
	_ = c.Conn.SetWriteDeadline(time.Now().Add(5 * time.Second)) // before the lock: see Close
	h.mu.Lock()
	defer h.mu.Unlock()
	if c.limit.h2 != nil {
		f := &c.frames
		if f.final != nil || f.sealed {
			return // the appliance's GOAWAY is out or on its way: never a second
		}
		// A GOAWAY of the server's written since the refusal was decided
		// caps the refusal's last stream, and its 431 (h2goawaylast.go):
		// under h.mu, every one written is noted.
		f.final = c.limit.h2.refusal(f.started)
		with431 := c.limit.h2.answers431()
		c.limit.answered431.Store(with431)
		if !with431 {
			c.limit.unanswered.ends.without431() // h2refused.go
		}
		if c.frames.atBoundary() {
			c.writeFinal()
		} // else the server's next write completes its frame, then it goes
		return
	}
	c.flushLocked()
	h.active.Store(false)
	_, _ = io.WriteString(writerFunc(c.write), "HTTP/1.1 431 Request Header Fields Too Large\r\n"+
		"Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"+
		"Content-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body)
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// nextHead re-arms the head limit when goproxy closes a response body,
// which it does once the response is written, before it reads the next
// request. The request's own body is closed first: goproxy closes it only
// afterwards, and closing drains what the upstream did not read (a denied
// upload, an early 413), bytes that are no head. When that body's framing
// broke, there is no next head: the connection ends after resp, whose
// Close goproxy looks at once it has written it (bodyfault.go).
type nextHead struct {
	io.ReadCloser
	cc      *hijackedConn
	reqBody io.ReadCloser
	resp    *http.Response
	// trailer is resp.Trailer as it was before Response.Write began,
	// which is what it writes after the body: nil when the head declared
	// none, though the body's end may set a map of undeclared fields
	// (net/http's TrailerPrefix, every HTTP/2 origin's trailer) that it
	// never writes (endChunked).
	trailer http.Header
}

func (b *nextHead) Close() error {
	if fb, ok := b.reqBody.(*faultBody); ok {
		fb.closing.Store(b.resp.Close) // goproxy's decision, before the drain (rb.done)
	}
	rb, whole := b.ReadCloser.(*recordingBody)
	whole = whole && b.cc.h1 && rb.ended.Load()
	if whole {
		// goproxy has made the response's last write but for a chunked
		// one's end, which endChunked writes next (wroteLast, answer.go).
		b.cc.lastPieceRead()
	}
	if b.cc.h1 {
		b.endChunked()
	}
	if whole {
		// Once it went out, the request is over (answer.go), before the
		// drain of its body and its record.
		b.cc.responseWritten()
	}
	err := b.ReadCloser.Close()
	if b.reqBody != nil {
		_ = b.reqBody.Close()
	}
	if b.cc.bodyFault.Load() != nil || b.cc.unchunking() {
		// On goproxy's goroutine, which reads it next. An unchunked
		// answer's body ends with the connection (http10.go).
		b.resp.Close = true
	}
	b.cc.lastClosed.Store(b.resp.Close)
	b.cc.limit.read.Store(0)
	b.cc.limit.inHead.Store(true)
	if b.cc.h1 {
		b.awaitHead() // unreadhead.go
	}
	return err
}

// endChunked writes the end of a chunked response goproxy's HTTP/1 loop
// is writing, once its body has ended: its trailer section, if any, and
// the last CRLF. The client connection then drops goproxy's own write of
// them. net/http's Response.Write writes them only after it closes the
// response body, and that close reads the rest of the request body first
// (a drain of up to drainWait): a client that stopped its upload on an
// early answer waited for the answer's end as long. And the record,
// written at that close, sends what is held to learn whether the client
// got it: a response's end written after it would leave as a TLS record,
// segment and datagram of its own. The trailer is
// written as Response.Write writes it: Header.Write of the map it took
// when it began (b.trailer), whose fields the body's end has filled in;
// none when that was nil, whatever map the body's end set since. Any
// other end, and goproxy's write would not be the one swallowed: the
// client would read a stray byte as the start of its next answer.
func (b *nextHead) endChunked() {
	r := b.resp
	if len(r.TransferEncoding) == 0 || r.TransferEncoding[0] != "chunked" ||
		r.Request != nil && r.Request.Method == http.MethodHead {
		return // what Response.Write writes after the close differs
	}
	if r.StatusCode < 200 || r.StatusCode == http.StatusNoContent || r.StatusCode == http.StatusNotModified ||
		r.ContentLength == 0 {
		// No body (an origin may still say chunked): Response.Write ends
		// it itself, with a body of its own, and this close comes after.
		return
	}
	if rb, ok := b.ReadCloser.(*recordingBody); !ok || !rb.ended.Load() || b.cc.werr.Load() != nil {
		return // not the end of a whole body: goproxy is closing it after a failure
	}
	end := crlf
	if b.trailer != nil {
		var buf bytes.Buffer
		_ = b.trailer.Write(&buf)
		end = append(buf.Bytes(), crlf...)
	}
	if _, err := b.cc.Write(end); err != nil {
		return
	}
	b.cc.flushHeld()
	b.cc.swallow, b.cc.swallowEnd = end, true // goproxy's goroutine: its next writes are these
}

var crlf = []byte("\r\n")

// write writes b to the client; h.mu is held. Once the client speaks
// HTTP/2 it follows the server's frames, and after an HTTP/2 refusal it
// writes nothing more.
func (c *hijackedConn) write(b []byte) (int, error) {
	if !c.limit.isH2.Load() {
		return c.rawWrite(b)
	}
	f := &c.frames
	if f.sealed {
		return 0, errHeadTooLarge
	}
	if !f.firstDone {
		b = f.patchSettings(b) // h2guard.go
	}
	f.before = c.limit.unanswered.ends.writeBegins() // h2bodyout.go; advance ends it
	if f.final == nil {
		n, err := c.rawWrite(b)
		if f.advance(b[:n], &c.limit.unanswered) {
			c.checkWrittenResets() // h2guard.go
			if err == nil && f.final != nil && f.atBoundary() {
				c.writeFinal()
			}
		}
		return n, err
	}
	k := f.toBoundary(b)
	n, err := c.rawWrite(b[:k])
	f.advance(b[:n], &c.limit.unanswered)
	if err != nil {
		return n, err
	}
	if f.atBoundary() {
		c.writeFinal()
	}
	if n < len(b) {
		return n, errHeadTooLarge
	}
	return n, nil
}

// writeFinal writes the HTTP/2 refusal and seals the connection; h.mu is
// held and the server's frames are whole.
func (c *hijackedConn) writeFinal() {
	f := &c.frames
	_, _ = c.rawWrite(f.final)
	f.final, f.sealed = nil, true
}

func (c *hijackedConn) rawWrite(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.out.Add(int64(n))
	if err != nil {
		first := err // only this escapes: a write that succeeds allocates nothing
		c.werr.CompareAndSwap(nil, &first)
	}
	return n, err
}

// responseWriteErr writes what an HTTP/1 response left held, then returns
// the first write to the client that failed, if one did. goproxy calls it
// (through the response body's Close) once it has made the response's
// last write: held or failed, that write says nothing to goproxy, which
// goes on as if the client had it, nor to the body, which saw its end. A
// failed write ends goproxy's loop, so the first one is this response's,
// or one before it whose record says so already.
func (c *hijackedConn) responseWriteErr() error {
	c.hold.mu.Lock()
	c.flushLocked()
	c.hold.mu.Unlock()
	if p := c.werr.Load(); p != nil {
		return *p
	}
	return nil
}
