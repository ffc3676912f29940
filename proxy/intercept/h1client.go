package intercept

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

// upstreamTransport is what a session's requests go upstream through: an
// http.Transport, or h1Transport.
type upstreamTransport interface {
	RoundTrip(*http.Request) (*http.Response, error)
	// roundTripRechecked is RoundTrip for a request a reload may decide
	// again (reload, nil if none can): its checkHead, once the request
	// has its connection and before its head goes on it.
	roundTripRechecked(req *http.Request, reload *tunnelReload) (*http.Response, error)
	CloseIdleConnections()
}

// h1Transport carries the requests of a session whose client and upstream
// both speak HTTP/1 over one upstream connection at a time, in the calling
// goroutine. goproxy hands an HTTP/1 client's requests over one after
// another (the next is read once the previous response is written), so
// there is never more than one in flight, and the transport needs none of
// http.Transport's per-connection goroutines (a reader and a writer, parked
// for as long as the connection lives) nor its buffers while the
// connection is idle: its buffers come from pools for the duration of a
// request. That is most of what an idle bumped connection cost, and the
// goroutine hand-offs were much of a kept-alive request's CPU.
//
// Like http.Transport (as configured before: no compression, no proxy) it
// writes each request with http.Request.Write, reads the response with
// http.ReadResponse, skips 1xx responses but a 101 (whose body is then the
// connection, both ways, as net/http gives it), and keeps the connection
// for the next request when the response ended cleanly. Response heads are
// bounded in size (maxResponseHead) and, from their first byte, in time
// (responseHeadTimeout).
//
// Nothing reads a kept connection while it is idle (http.Transport has a
// goroutine for that), so before a kept connection carries a request it is
// probed (stale): anything the upstream sent meanwhile, a response nobody
// asked for, a "408 Request Timeout" or the end of the connection, means
// it is closed and the request goes on a new one. Nothing of the request
// was written yet, so that is safe for any method. A request a kept
// connection then fails to answer is sent once more on a new connection
// under net/http's rule (retryable): only a request without a body, and
// only when nothing of it was written or it is idempotent; and a request
// whose "Expect: 100-continue" body was still held, none of it read from
// the client, when no answer came at all and it may go twice (an
// idempotent method, or an idempotency key). A kept connection is closed
// after h1IdleTimeout, by a timer, not a goroutine.
//
// An exchange ends when the request's context does, and when the request
// body cannot be read (the client went away mid-upload): the connection
// is closed then, as http.Transport closes it, so that no read of the
// upstream waits on for nobody.
type h1Transport struct {
	dial func(ctx context.Context) (net.Conn, error) // pinned to the destination
	// idleTimeout is how long a kept connection waits for the next
	// request (0: h1IdleTimeout).
	idleTimeout time.Duration

	mu        sync.Mutex
	idle      net.Conn    // kept for the next request
	idleSince time.Time   // when idle was kept
	idleTimer *time.Timer // closes idle once it has waited idleTimeout; reused
	closed    bool        // CloseIdleConnections was called: keep nothing
}

// h1IdleTimeout is how long a kept connection waits for the next request:
// what http.Transport was configured with (IdleConnTimeout).
var h1IdleTimeout = 90 * time.Second // a variable for tests

// reuseForBody is how long a kept connection is trusted with a request
// whose body cannot be sent again. The probe before a request sees an
// upstream's close that has arrived, not one on its way: a request without
// a body can go again on a new connection when it meets one, one with a
// body cannot. Servers close idle connections after seconds (Apache after
// 5 s, nginx after 75 s); one that has been idle for less than this is
// unlikely to be closed right now.
const reuseForBody = 2 * time.Second

// maxResponseHead bounds a response head, on every upstream path (h1Transport,
// and http.Transport's MaxResponseHeaderBytes, which also bounds an HTTP/2
// upstream's header lists). net/http's default, 10 MiB, let a hostile
// origin pin 10 MiB per upstream connection with a head it never ends (8
// connections, 80 MB, for one HTTP/2 client flow). Real heads are a few
// KiB; large cookies and CSP headers stay well under 1 MiB, which is 16
// times the largest request head a client may send by default.
const maxResponseHead = 1 << 20

// responseHeadTimeout bounds the rest of a response head once its first
// byte has come. The wait for the first byte is not bounded (a long poll,
// a slow report), the rest is: an honest origin writes its head at once,
// and 10 s carries even a head at the size limit over a 1 Mbit/s path. A
// head that takes longer ends the request with a 502 and closes the
// connection, so that one the origin never ends pins nothing for good.
var responseHeadTimeout = 10 * time.Second // a variable for tests

// max1xx bounds the informational responses before a final one, on every
// upstream path (h1Transport, and http.Transport's through headDeadline).
// net/http has no such count: it bounds 1xx responses only by their size,
// and not even that once a Got1xxResponse hook is set.
const max1xx = 5

// h1Reader is a response's buffered reader and the head-limited view of
// the connection it reads through, pooled together: the view was an
// allocation of its own per request.
type h1Reader struct {
	br  *bufio.Reader
	src headLimitedConn
}

var h1Readers = sync.Pool{New: func() any { return &h1Reader{br: bufio.NewReaderSize(nil, 4<<10)} }}

// getReader returns a pooled reader of c's response heads and bodies,
// its heads limited to maxResponseHead.
func getReader(c net.Conn) *h1Reader {
	rd := h1Readers.Get().(*h1Reader)
	rd.src = headLimitedConn{Conn: c, left: maxResponseHead, limited: true}
	rd.br.Reset(&rd.src)
	return rd
}

// putReader returns rd to the pool, holding no connection.
func putReader(rd *h1Reader) {
	rd.br.Reset(nil)
	rd.src = headLimitedConn{}
	h1Readers.Put(rd)
}

// CloseIdleConnections closes the kept connection, and any kept later.
func (t *h1Transport) CloseIdleConnections() {
	t.mu.Lock()
	c := t.idle
	t.idle, t.closed = nil, true
	if t.idleTimer != nil {
		t.idleTimer.Stop()
	}
	t.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

func (t *h1Transport) timeout() time.Duration {
	if t.idleTimeout > 0 {
		return t.idleTimeout
	}
	return h1IdleTimeout
}

// keep offers c for the next request. Whatever the upstream sent after
// the response, in its last write or since, take's probe (stale) finds
// before c carries another request: one probe per request, not one at
// each end of the wait.
func (t *h1Transport) keep(c net.Conn) {
	t.mu.Lock()
	if t.closed || t.idle != nil {
		t.mu.Unlock()
		c.Close()
		return
	}
	t.idle, t.idleSince = c, time.Now()
	if t.idleTimer == nil {
		t.idleTimer = time.AfterFunc(t.timeout(), t.expire)
	} else {
		t.idleTimer.Reset(t.timeout())
	}
	t.mu.Unlock()
}

// expire closes the kept connection once it has waited the idle timeout.
// The one timer serves every connection kept in turn: a firing meant for
// an earlier one (stopped too late) finds the connection kept since too
// young, and leaves it.
func (t *h1Transport) expire() {
	t.mu.Lock()
	c := t.idle
	if c == nil || time.Since(t.idleSince) < t.timeout() {
		t.mu.Unlock()
		return
	}
	t.idle = nil
	t.mu.Unlock()
	c.Close()
}

// take returns the kept connection if it may carry req, else nil; one it
// may not is closed.
func (t *h1Transport) take(req *http.Request) net.Conn {
	t.mu.Lock()
	c, since := t.idle, t.idleSince
	t.idle = nil
	if c != nil {
		t.idleTimer.Stop()
	}
	t.mu.Unlock()
	if c == nil {
		return nil
	}
	if (!bodyless(req) && time.Since(since) > reuseForBody) || stale(c) {
		c.Close()
		return nil
	}
	return c
}

// RoundTrip implements upstreamTransport.
func (t *h1Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	return t.roundTripRechecked(req, nil)
}

// roundTripRechecked implements upstreamTransport.
func (t *h1Transport) roundTripRechecked(req *http.Request, reload *tunnelReload) (*http.Response, error) {
	used := usedConnOf(req.Context()) // redial.go
	if bs := bodySentOf(req.Context()); bs != nil {
		bs.counted.Store(true) // by writeRequest
	}
	heldBefore := false // a try's body held and kept back: the caller's to close
	for attempt := 0; ; attempt++ {
		c := t.take(req)
		reused := c != nil
		if c == nil {
			var err error
			if c, err = t.dial(req.Context()); err != nil {
				if heldBefore {
					// The held body, kept for this try: a RoundTrip
					// closes the body on every path.
					req.Body.Close()
				}
				return nil, err
			}
		}
		if err := reload.checkHead(); err != nil {
			// Denied after the dial, or on the try again after a kept
			// connection ended (an Expect: 100-continue request's body
			// still held): nothing of it goes, and the connection,
			// unused, is kept for the next request.
			t.keep(c)
			if heldBefore {
				req.Body.Close()
			}
			return nil, err
		}
		used.set(c)
		resp, held, err := t.exchange(c, req)
		if err == nil {
			if held {
				// Kept back by an early answer: its gate leaves the
				// close to the transport (expect.go).
				req.Body.Close()
			}
			return resp, nil
		}
		c.Close()
		if !reused || attempt > 0 || !retryable(req, err, held) {
			if held {
				req.Body.Close()
			}
			return nil, err
		}
		heldBefore = held
	}
}

// exchange writes req on c and reads its response head. A request without
// a body is written here; a body is written on a goroutine of its own,
// while the response is awaited (an upstream may answer before it has read
// all of it). Until the response body is closed, the end of the request's
// context closes c, and so does a failure to write the request (its body
// could not be read: the client went away), as net/http does.
//
// held reports a body that waited for the origin's "100 Continue" and
// was kept back, nothing of it read (expect.go): it is the caller's to
// close, or to send again.
func (t *h1Transport) exchange(c net.Conn, req *http.Request) (resp *http.Response, held bool, err error) {
	stop := context.AfterFunc(req.Context(), func() { c.Close() })
	var gate *expectGate // the body's, held for the origin's 100
	if expectsContinue(req) {
		gate = newExpectGate(req.Context(), req.Body)
	}
	resp, err = t.exchangeHead(c, req, gate, stop)
	// Decided for good by now (exchangeHead's end decides).
	held = gate.refused()
	if err != nil {
		stop()
		if cerr := req.Context().Err(); cerr != nil {
			return nil, held, fmt.Errorf("%w: %w", cerr, err)
		}
	}
	return resp, held, err
}

// writtenWhole is the report of a request written whole before its
// response is awaited (one without a body): closed, every receive takes
// its nil at once, and such a request needs no channel of its own.
var writtenWhole = func() chan error { c := make(chan error); close(c); return c }()

// exchangeHead is exchange but for the context: stop goes to the response
// body, which ends the context's hold on c when closed. gate, when not
// nil, holds req's body for the origin's 100.
func (t *h1Transport) exchangeHead(c net.Conn, req *http.Request, gate *expectGate, stop func() bool) (*http.Response, error) {
	// The request's writer reports on it once, and only one with a body
	// has a writer of its own to wait for.
	var wrote <-chan error = writtenWhole
	if gate != nil {
		req = req.WithContext(req.Context()) // a copy: the caller's keeps its body
		req.Body = gate
	}
	// Past the heads, or on a failure reading them, a body still held is
	// not sent: a 100 lets it go in the loop below.
	defer gate.decide(false)
	if bodyless(req) {
		if n, err := writeRequest(c, req); err != nil {
			if n == 0 {
				return nil, fmt.Errorf("%w: %w", errNothingWritten, err)
			}
			return nil, fmt.Errorf("writing the request: %w", err)
		}
	} else {
		report := make(chan error, 1)
		wrote = report
		go func() {
			_, err := writeRequest(c, req)
			report <- err
			if err != nil && !gate.refused() {
				// Ends the wait for a response too: an upstream waiting
				// for the rest of the body would never answer. A body
				// the origin refused is no failure: its answer is read.
				c.Close()
			}
		}()
	}
	rd := getReader(c)
	src, br := &rd.src, rd.br
	if _, err := br.Peek(1); err != nil {
		putReader(rd)
		// A body still held stays unread now, whatever the writer made
		// of the head: no answer came, and the request may go again
		// (retryable).
		gate.decide(false)
		if gate.refused() {
			return nil, fmt.Errorf("%w: %w", errNoAnswer, err)
		}
		// A body's writer that wrote its last bytes (an upstream that
		// read the whole upload and closed) may not have said so yet,
		// nor counted them for bytes_out: it is given writeSettle.
		if ok, werr := writeReport(wrote); ok && werr != nil {
			return nil, fmt.Errorf("writing the request: %w", werr)
		}
		return nil, fmt.Errorf("%w: %w", errNoAnswer, err)
	}
	var resp *http.Response
	n := 0
	continued := false // the origin asked for the held body
	for ; ; n++ {
		var err error
		resp, err = readResponseHead(c, br, req)
		if err != nil {
			over := src.over // before putReader clears it
			putReader(rd)
			if over {
				return nil, fmt.Errorf("response head larger than %d bytes", maxResponseHead)
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return nil, fmt.Errorf("response head not complete %v after its first byte: %w", responseHeadTimeout, err)
			}
			// After a 1xx (a 100 let a held body go) as before the
			// first byte: an upstream that read the whole upload and
			// closed may have its writer's count still to come.
			writeReport(wrote)
			return nil, fmt.Errorf("reading the response: %w", err)
		}
		if resp.StatusCode < 100 || resp.StatusCode > 199 || resp.StatusCode == http.StatusSwitchingProtocols {
			// A final answer (a 101 among them) before the origin's 100:
			// the held body is not sent, now, not after the wait.
			gate.decide(false)
			break
		}
		if resp.StatusCode == http.StatusContinue && gate != nil {
			gate.decide(true)
			continued = true
		}
		if n == max1xx {
			putReader(rd)
			return nil, errTooMany1xx
		}
	}
	src.limited = false // the head is read: the body is not limited
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// The body comes from the client's connection, which a tunnel
		// reads next: never both at once. An upgrade accepted before the
		// body was sent whole waits for it (roundTrip refuses WebSocket
		// upgrades with a body; this is for any that get here).
		if err := waitWritten(req, wrote, gate); err != nil {
			putReader(rd)
			return nil, err
		}
		// The connection is the response's body now, both ways; it is
		// never kept, and its reader holds what came after the head.
		resp.Body = &upgradedBody{br: br, conn: c, stop: stop, ended: make(chan struct{})}
		return resp, nil
	}
	// An invalid status (roundTrip refuses it) says the origin is not
	// speaking HTTP as it should: its connection is not kept. Nor is one
	// whose held body went without the origin's 100 (after the wait): an
	// origin that answered thinking it would not come may take it for the
	// next request.
	resp.Body = &h1Body{ReadCloser: resp.Body, t: t, conn: c, rd: rd, wrote: wrote, stop: stop,
		reuse: !resp.Close && !req.Close && !src.scan.faulty(n, resp) && invalidStatus(resp) == "" && (gate == nil || continued),
		eof:   resp.Body == http.NoBody}
	return resp, nil
}

// readResponseHead reads one response head from br, c's reader: its first
// byte with no time limit, the rest within responseHeadTimeout.
func readResponseHead(c net.Conn, br *bufio.Reader, req *http.Request) (*http.Response, error) {
	if _, err := br.Peek(1); err != nil {
		return nil, err
	}
	_ = c.SetReadDeadline(time.Now().Add(responseHeadTimeout))
	resp, err := http.ReadResponse(br, req)
	_ = c.SetReadDeadline(time.Time{})
	return resp, err
}

// waitWritten waits until req, whose response has come, has been written
// whole, or its context ends (which closes the connection, and with it
// the write). A held body the origin never asked for (gate refused) is
// written as far as it goes: the head.
func waitWritten(req *http.Request, wrote <-chan error, gate *expectGate) error {
	select {
	case err := <-wrote:
		// Not errors.Is: net/http wraps a body's read error in a type
		// that does not unwrap.
		if err != nil && !gate.refused() {
			return fmt.Errorf("writing the request: %w", err)
		}
		return nil
	case <-req.Context().Done():
		return fmt.Errorf("the request body was not sent whole: %w", req.Context().Err())
	}
}

// h1Body is a response's body. Read to its end and closed, it gives the
// connection back for the next request (when neither side asked to close
// it, the response's framing was sound, the request was written whole and
// its reader holds nothing past the body; what the upstream sends later
// take's probe finds) and its buffer to the pool; closed early, it
// closes the connection.
type h1Body struct {
	io.ReadCloser
	t      *h1Transport
	conn   net.Conn
	rd     *h1Reader
	wrote  <-chan error
	stop   func() bool // ends the request context's hold on conn
	reuse  bool
	eof    bool
	closed bool
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

// Close implements io.Closer.
func (b *h1Body) Close() error {
	if b.closed {
		return nil
	}
	b.closed = true
	// False when the request's context has ended, and closed conn.
	live := b.stop()
	var err error
	if b.eof {
		// Not before: net/http's body would read the rest to its end, a
		// whole download the client no longer wants.
		err = b.ReadCloser.Close()
	}
	keep := live && b.reuse && b.eof && b.rd.br.Buffered() == 0
	if b.eof {
		// A response read whole: the request's writer may have written
		// its last bytes and not yet said so, nor counted them for
		// bytes_out, read after this Close (bodysent.go).
		keep = requestWritten(b.wrote) && keep
	}
	if !keep {
		b.conn.Close() // ends a request body still being written too
	}
	putReader(b.rd)
	if keep {
		b.t.keep(b.conn)
	}
	return err
}

// writeSettle is how long a response's end waits for its request's
// writer to report: a body written by its own goroutine may have gone out
// whole and its report not yet come (the goroutine not yet run again), and
// taking that for an upstream that answered early threw a reusable
// connection away (the next request paid a new dial, and a handshake).
const writeSettle = 20 * time.Millisecond

// requestWritten reports whether the request's writer, which reports on
// wrote, wrote it whole: at once when it has reported, else after up to
// writeSettle. Past that the upstream answered while the body was still
// going out, and the connection is not kept.
func requestWritten(wrote <-chan error) bool {
	ok, werr := writeReport(wrote)
	return ok && werr == nil
}

// writeReport returns whether the request's writer reported on wrote, at
// once or within writeSettle, and its report.
func writeReport(wrote <-chan error) (bool, error) {
	select {
	case werr := <-wrote:
		return true, werr
	default:
	}
	t := time.NewTimer(writeSettle)
	defer t.Stop()
	select {
	case werr := <-wrote:
		return true, werr
	case <-t.C:
		return false, nil
	}
}
