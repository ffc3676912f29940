package intercept

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// An HTTP/1 request body the destination may leave unread, chunked or of
// a Content-Length, and a chunked one whose framing breaks.
//
// Past a chunk net/http cannot read, what the client sent is no request
// (RFC 9112 §7.1): serving it as one is how a request is smuggled behind
// another. When the framing error is known before the response head goes
// out, the client gets a 400 and its connection closes
// (refuseMalformedBody). But the destination may answer before it has read
// the body (an early 401 or 413, or one that ignores bodies): the round
// trip then succeeds, and the bad chunk is found afterwards, by the
// transport's writer still sending the body or by the drain of the rest
// of it once the response has ended. goproxy's HTTP/1 loop then read what
// followed the bad chunk as the next request, decided, relayed and
// recorded it, while the first request's record said ok.
//
// faultBody catches that error whenever it comes, on whichever read, and
// marks the client connection (hijackedConn.bodyFault). From then on
// nothing of the connection is served: the response under way ends with
// the connection (nextHead sets its Close, so goproxy's loop stops), the
// connection's reads end (readConn), and a head goproxy had buffered
// already is refused unserved and unrecorded (RoundTrip). The request's
// record keeps the status the client got, with result error and the
// body's fault (roundTrip's rb.done, which reads the body to its end or
// its fault before it writes the record, within drainMax and drainWait:
// past them the connection ends after the answer all the same).
//
// Any error reading the body but its end counts, not only the chunked
// reader's: past any of them the framing is lost (a trailer net/http
// refuses leaves what follows it unread, a request head among it). The
// record names a framing error (chunkedBodyErrors) a malformed body, and
// any other the client's stopping its body (roundTrip's rb.done): after
// a whole answer, the request is ok all the same.
type faultBody struct {
	io.ReadCloser
	cc *hijackedConn
	// reading counts the reads inside the inner body's Read, noting those
	// whose error is in hand and not yet noted. net/http's body, after a
	// trailer it refuses, closes itself inside the read that returns the
	// error, and a later Close returns nil: a Close (nextHead's, drain's)
	// taken between that read's return and its note would see no fault,
	// and goproxy would go on to the next head. Close waits for such a
	// note (settle). No lock is held across the inner read: with
	// "Expect: 100-continue" and an early answer goproxy sends no 100, and
	// its body's Close returns at once, not draining a body the client
	// was never asked to send, while the transport's writer may still be
	// blocked reading it. A lock held by that read would have the Close
	// wait for the client.
	reading, noting atomic.Int32
	fault           atomic.Pointer[error]
	// expect100: the request asked for "100 Continue" before its body;
	// closing: the connection ends after the response anyway, as goproxy
	// decided before writing it (nextHead sets it before the drain);
	// started: the body has been read. goproxy sends the 100 at the first
	// read, if its answer has not gone out yet: a body never read was
	// never asked for.
	expect100 bool
	closing   atomic.Bool
	started   atomic.Bool
	// drained runs drainRest once, for the first Close: the transport's
	// writer's (net/http closes a request body when it stops writing it)
	// or goproxy's (rb.done's drain). notRead is what it gave up on;
	// quiet, that it read nothing, the body being moot (drain).
	drained sync.Once
	notRead error
	quiet   bool
	// length is the body's Content-Length, -1 for a chunked one; n what
	// has been read of it, by the transport's writer or the drain.
	length int64
	n      atomic.Int64
}

// How much of a body the destination did not read is read once its
// answer has ended, looking for the body's end (where the next request's
// head starts) or its fault: at most drainMax bytes, for at most
// drainWait, as net/http's server reads at most 256 KiB of a body its
// handler left unread. Unbounded, a client that trickles its body on
// after the answer held the request's record back (lost on a crash) and
// the connection open for good, and one that stopped its upload on an
// early answer waited with the appliance. Past either bound the
// connection ends after the answer, and the record is written at once.
// A Content-Length body with more than drainMax left is not read at all,
// as net/http's server does not: it could not end within the bound.
const (
	drainMax  = 256 << 10
	drainWait = 2 * time.Second
)

// errBodyNotRead marks the connection once the drain gave up: nothing
// more is read from it (readConn), and the response closes it (nextHead).
var errBodyNotRead = errors.New("the rest of the request body was not read")

// noteWait bounds Close's wait for a read inside the inner body's Read
// when the Close returns: with net/http's body none is (its Close takes
// the lock its Read holds), bar the instructions between that Read's
// return and the count of its error; goproxy's 100-continue body returns
// from Close with the writer's read still blocked on the client, which
// has found no error.
const noteWait = 5 * time.Millisecond

// testHookNoting, when set, runs in a read of b whose error is counted in
// noting and not yet noted.
var testHookNoting atomic.Pointer[func(*faultBody)]

// errAfterBodyFault ends goproxy's loop at a head it read after a body
// whose framing broke.
var errAfterBodyFault = errors.New("a request head after a chunked body that could not be read: not served")

// watchBodyFault wraps req's body, an HTTP/1 one, chunked or of a
// Content-Length, in a faultBody; any other body (HTTP/2's, whose server
// bounds what it discards) is left as it is. It returns the faultBody,
// or nil. Both framings: goproxy's Content-Length body, from
// http.ReadRequest, reads all of its declared length when closed, with no
// deadline, however slowly it comes.
func watchBodyFault(req *http.Request, cc *hijackedConn) *faultBody {
	if inH2Handler(req) || bodyless(req) {
		return nil
	}
	length := req.ContentLength
	switch {
	case len(req.TransferEncoding) == 1 && req.TransferEncoding[0] == "chunked":
		length = -1
	case len(req.TransferEncoding) != 0 || length <= 0:
		return nil
	}
	fb := &faultBody{ReadCloser: req.Body, cc: cc, length: length,
		expect100: headerHasToken(req.Header, "Expect", "100-continue")}
	req.Body = fb
	return fb
}

func (b *faultBody) Read(p []byte) (int, error) {
	if !b.started.Load() {
		b.started.Store(true)
	}
	b.reading.Add(1)
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	if err != nil {
		b.noting.Add(1) // before reading drops: settle sees one or the other
	}
	b.reading.Add(-1)
	if err != nil {
		if h := testHookNoting.Load(); h != nil {
			(*h)(b)
		}
		b.note(err)
		b.noting.Add(-1)
	}
	return n, err
}

// Close reads what is left of the body to its end or its fault, within
// drainMax and drainWait (drainRest), then closes it: goproxy's body,
// read by http.ReadRequest, would read all of it, however long it went
// on. The read finds a framing error in what the destination never read.
func (b *faultBody) Close() error {
	b.drained.Do(b.drainRest)
	err := b.ReadCloser.Close()
	b.note(err)
	b.settle()
	return err
}

// settle waits for the note of any read whose error is in hand, and at
// most noteWait for one still inside the inner body's Read.
func (b *faultBody) settle() {
	var until time.Time
	for b.noting.Load() > 0 || b.reading.Load() > 0 {
		if b.noting.Load() == 0 {
			now := time.Now()
			if until.IsZero() {
				until = now.Add(noteWait)
			} else if now.After(until) {
				return
			}
		}
		time.Sleep(50 * time.Microsecond)
	}
}

// note keeps err, the first error reading the body other than its end.
// A read after a close (the transport's writer, once the
// body was drained) is no fault of the body's: its end, or its fault,
// was seen by the close.
func (b *faultBody) note(err error) {
	if err == nil || err == io.EOF || errors.Is(err, http.ErrBodyReadAfterClose) {
		return
	}
	fault := err // only this escapes: the body's close, its error nil, allocates nothing
	b.fault.CompareAndSwap(nil, &fault)
	b.cc.bodyFault.CompareAndSwap(nil, &fault)
}

// drain reads the rest of the body and closes it (Close), and returns
// the error that broke it, if one did (fault), or, when the read gave up,
// what it gave up on (notRead); b may be nil.
func (b *faultBody) drain() (fault, notRead error) {
	if b == nil {
		return nil, nil
	}
	_ = b.Close()
	if b.quiet || b.notRead != nil {
		return nil, b.notRead // what its cut made the reads say is no fault
	}
	if p := b.fault.Load(); p != nil {
		return *p, nil
	}
	return nil, nil
}

// drainRest reads the rest of the body, within drainMax and drainWait.
// Past either it gives up (cut), and says so in notRead. A body the
// connection's end makes moot after "Expect: 100-continue" is not read
// at all: goproxy closes the connection after an answer that came before
// it sent the 100 (closing), and the client rightly never sends that body.
// The transport's writer's close may come before goproxy's decision: a
// body it never read was never asked for either (started). The connection
// is cut either way, so that a body the client sends all the same is
// never read as a head.
func (b *faultBody) drainRest() {
	if b.expect100 && (b.closing.Load() || !b.started.Load()) {
		b.quiet = true
		b.cut()
		return
	}
	if b.length >= 0 {
		switch left := b.length - b.n.Load(); {
		case left == 0:
			return // read whole: its end needs no read of the connection
		case left > drainMax:
			b.notRead = fmt.Errorf("%w (more than %d KiB after the response)", errBodyNotRead, drainMax>>10)
			b.cut()
			return
		}
	}
	c := b.cc.Conn
	_ = c.SetReadDeadline(time.Now().Add(drainWait))
	_, err := io.CopyN(io.Discard, b, drainMax+1)
	b.settle() // a fault the transport's writer found, noted
	p := b.fault.Load()
	switch {
	case err == nil: // drainMax+1 bytes, and no end (chunked only)
		b.notRead = fmt.Errorf("%w (more than %d KiB after the response)", errBodyNotRead, drainMax>>10)
	case p == nil: // its end
		_ = c.SetReadDeadline(time.Time{})
		return
	case isTimeout(*p): // the deadline just set: no other is armed while a body is read
		b.notRead = fmt.Errorf("%w (not ended %v after the response)", errBodyNotRead, drainWait)
	default:
		return // its fault: the connection ends with it (nextHead)
	}
	b.cut()
}

// cut gives up on the body: the connection is marked, so that nothing
// more is read from it and the response closes it, and a read of it
// under way (the transport's writer's) ends now.
func (b *faultBody) cut() {
	err := errBodyNotRead
	b.cc.bodyFault.CompareAndSwap(nil, &err)
	_ = b.cc.Conn.SetReadDeadline(time.Now())
}

// malformedBody reports whether err, a request body's, is a framing
// error of its own (net/http's words for it), not the client's going
// away: the record calls the body malformed.
func malformedBody(err error) bool {
	return containsAny(err.Error(), chunkedBodyErrors)
}

// lingerAfterMax is how long lingerClose waits, at most, once it has read
// drainMax bytes and the client still sends.
const lingerAfterMax = 500 * time.Millisecond

// lingerClose closes c, a client connection answered with a request body
// left unread (or one ending on its own: clientend.go), as
// net/http's server closes one (closeWriteAndWait): it
// half-closes c (a TLS connection's close_notify, then the socket's FIN)
// and reads and discards what the client still sends, up to its end, at
// most drainMax bytes for at most drainWait, then closes it. Past
// drainMax it reads no more but waits lingerAfterMax (within drainWait):
// the bytes it read may well have been sent before the answer, and the
// client, its writes now held by the full window, reads the answer and
// stops. Closed
// at once, with the client's bytes unread or still coming, the connection
// is reset (Linux and gVisor both answer unread data with a RST), and a
// client that meets the reset on its next write gives up before it reads
// the answer: curl then reports a send failure, not the 403 or 413 its
// record says it had.
func lingerClose(c net.Conn) error {
	if halfClose(c) {
		end := time.Now().Add(drainWait)
		_ = c.SetReadDeadline(end)
		if n, err := io.CopyN(io.Discard, c, drainMax); n == drainMax && err == nil {
			// No event says the client has read the answer: a bounded
			// wait, net/http's rstAvoidanceDelay. It does not end when
			// the connection is closed under it (the stacks' closing, a
			// reclaim), so it is kept as short as net/http's.
			time.Sleep(min(time.Until(end), lingerAfterMax))
		}
	}
	return c.Close()
}
