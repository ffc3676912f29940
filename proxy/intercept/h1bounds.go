package intercept

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"

	"golang.org/x/net/http2"
)

// The boundaries of HTTP/1 requests.
//
// goproxy reads an HTTP/1 connection through two buffered readers of 4 KiB
// each. A client that pipelines, sending a request and the start of the
// next in one write (or before the response has ended), leaves that start
// in them: when the response ends goproxy parses it from its buffers and
// waits for the rest with no read of the connection bringing a byte, so
// the head deadline, armed by such a read, was never armed. Nothing
// outside goproxy can see its buffers; so they are kept from holding
// bytes of a next request at all. The client connection hands goproxy's
// HTTP/1 loop a request head up to its end and no further, then, once
// RoundTrip has the parsed request, its body up to its Content-Length;
// what the underlying read brought past either is kept here and handed
// out by the next read. When a response ends, goproxy's buffers are
// empty, and the bytes kept, if any, are the start of the next head: its
// 10 s start then, as a head's whose first byte was just read.
//
// A head ends at its first empty line, as net/http reads it: a line
// feed, after a line feed or a line feed and a carriage return ("\n\n",
// "\n\r\n"). net/http reads nothing past that line (its MIME reader peeks
// after every other line, for a continuation, but not after the last),
// nor past a body of known length, nor past a chunked body's end
// (chunks.go). Anything the boundaries did not expect has them given up
// for the connection (boundLoose): a read past a request (a WebSocket
// tunnel after its 101 reads the connection as a byte stream), a body
// whose end net/http found elsewhere than they did. A pipelined partial
// head behind that is bounded by the idle timeout only, and one that
// cannot be read is told by how goproxy's loop ends (unreadhead.go). A
// divergence only
// ever loses the boundaries: bytes are handed out in order and whole, and
// no read waits while bytes are kept. The one exception, up to four CR or
// LF bytes before a later head (skipLead), is armed only at a request's
// end the boundaries found where net/http did: never after a trailer
// net/http ended at a bare LF (lost), where such bytes may be the next
// request's own.
//
// A client that negotiated h2 by ALPN (or whose cleartext the sniffer took
// for h2c) is served by goproxy's HTTP/2 proxy, which looks for the
// preface and, when the bytes are not the preface, serves them with the
// same HTTP/1 loop: the connection is bounded from then on (readConn), as
// if it had been HTTP/1 from the start.
type h1Bounds struct {
	state uint8
	line  uint8 // at the end of the last read of a head or a trailer (chunks.go): lineMid, lineStart or lineCR
	left  int64 // of the body, in boundBody; of the chunk (chunks.go)
	// pending is what a read brought past a boundary, handed out first;
	// buf is its storage, kept while requests follow one another (a body
	// that came with its head, pipelined requests) and dropped when the
	// connection waits idle for the next: an idle connection holds none.
	pending, buf []byte
	// preface counts the bytes of the HTTP/2 client preface an h2
	// connection has sent so far, until they are all there, or a byte is
	// not the preface's (readConn).
	preface int
	// A chunked body's size line or trailer, so far (chunks.go).
	n   int
	sub uint8
	// lead is how many more CR or LF bytes may be dropped before the
	// next head begins (skipLead); skipped counts those dropped, for the
	// client's byte count.
	lead    int
	skipped int64
	// lost: the request just read ended where net/http had not ended it
	// (a trailer it ended at a bare LF, chunks.go): what is kept may be a
	// request net/http is reading already, so awaitHead arms no lead;
	// and goproxy's reader holds what followed net/http's end, the next
	// head's start, so awaitHead arms its deadline.
	lost bool
	// err came with the bytes of a read, which went out without it: it is
	// the next read's, once pending is out (bound).
	err error
	// blind and readFailed are what the session's end knows of a head
	// goproxy's reader may hold unseen (unreadhead.go).
	blind, readFailed atomic.Bool
}

// maxLeadingEmpty is how many CR or LF bytes before a head are dropped:
// RFC 9112 §2.2 asks a server to ignore at least one empty line before a
// request line (some clients send a CRLF after a request body), and
// net/http's server drops up to four such bytes. goproxy's http.ReadRequest
// drops none: it read the empty line as a malformed request line, closed
// the connection and had it recorded as a head that could not be read.
const maxLeadingEmpty = 4

// h1Bounds states.
const (
	boundHead  = iota // a head is read, up to its end
	boundAwait        // the head is out: RoundTrip says what the body is
	boundBody         // a body of known length is read, up to its end
	boundDone         // the request is out whole; the response is written
	boundLoose        // the boundaries are no longer known: nothing is held back
	// A chunked body (chunks.go):
	boundChunkLine // a chunk's size line, up to its line feed
	boundChunkData // a chunk's data, and the CRLF after it
	boundTrailer   // after the last chunk: the trailer, up to its end
)

// Where the last byte of a head read so far left its line.
const (
	lineMid   = iota // within a line: the request line, or a field's
	lineStart        // after a line feed
	lineCR           // after a line feed and a carriage return
)

// read reads from c into b, handing out no byte past the boundary of the
// part of the request being read.
func (h *h1Bounds) read(c net.Conn, b []byte) (int, error) {
	h.pending = h.pending[h.skipLead(h.pending):]
	if len(h.pending) > 0 {
		n := copy(b, h.pending)
		k := h.take(b[:n])
		h.pending = h.pending[k:]
		return k, nil
	}
	if err := h.err; err != nil {
		h.err = nil
		return 0, err
	}
	for {
		n, err := c.Read(b)
		if k := h.skipLead(b[:n]); k > 0 {
			// Read on past dropped bytes: handed out as a read of none,
			// they would arm nothing but could end goproxy's reader
			// (io.ErrNoProgress). Bounded: each drop uses up lead.
			n = copy(b, b[k:n])
			if n == 0 && err == nil {
				continue
			}
		}
		return h.bound(b, n, err)
	}
}

// skipLead returns how many of the bytes p, read next, are CR or LF bytes
// before a head that are dropped (maxLeadingEmpty), and counts them. The
// first other byte begins the head: none are dropped after it.
func (h *h1Bounds) skipLead(p []byte) int {
	if h.lead == 0 || h.state != boundHead || len(p) == 0 {
		return 0
	}
	k := 0
	for k < len(p) && k < h.lead && (p[k] == '\r' || p[k] == '\n') {
		k++
	}
	h.lead -= k
	if k < len(p) {
		h.lead = 0
	}
	h.skipped += int64(k)
	return k
}

// bound hands out the bytes b[:n] just read up to the boundary of the
// part of the request being read, and keeps the rest. An error that came
// with bytes is the next read's, which brings none: a read that brought
// bytes is not the client's end (unreadhead.go's readFailed). crypto/tls
// returns a TLS 1.2 close_notify's io.EOF with the data before it, which
// may be a whole head goproxy cannot read. A timeout is not kept: the
// next read has the deadline then set.
func (h *h1Bounds) bound(b []byte, n int, err error) (int, error) {
	if n > 0 && err != nil {
		if !isTimeout(err) {
			h.err = err
		}
		err = nil
	}
	if k := h.take(b[:n]); k < n {
		h.buf = append(h.buf[:0], b[k:n]...)
		h.pending = h.buf
		return k, nil
	}
	return n, err
}

// take returns how many of the bytes p, read next, belong to the part of
// the request being read (all but none, when p is not empty), and moves
// on to the next part at its boundary.
func (h *h1Bounds) take(p []byte) int {
	switch h.state {
	case boundHead:
		if i := h.headEnd(p); i >= 0 {
			h.state = boundAwait
			return i
		}
	case boundBody:
		k := int(min(int64(len(p)), h.left))
		if h.left -= int64(k); h.left == 0 {
			h.state = boundDone
		}
		return k
	case boundChunkLine, boundChunkData, boundTrailer:
		return h.chunks(p)
	case boundAwait, boundDone:
		if len(p) > 0 {
			h.state = boundLoose // a read past the request: not one of goproxy's heads or bodies
		}
	}
	return len(p)
}

// headEnd returns the length of the head's bytes in p, the next read, if
// the head ends in it; -1 if not.
func (h *h1Bounds) headEnd(p []byte) int {
	for i := 0; i < len(p); {
		j := bytes.IndexByte(p[i:], '\n')
		if j < 0 {
			if h.line == lineStart && len(p)-i == 1 && p[i] == '\r' {
				h.line = lineCR
			} else {
				h.line = lineMid
			}
			return -1
		}
		rest := p[i : i+j] // of the line, before its line feed
		if h.line == lineStart && (len(rest) == 0 || len(rest) == 1 && rest[0] == '\r') ||
			h.line == lineCR && len(rest) == 0 {
			h.line = lineMid
			return i + j + 1
		}
		h.line = lineStart
		i += j + 1
	}
	return -1
}

// request takes the request whose head was handed out: its body is read
// up to its length, when known.
func (h *h1Bounds) request(req *http.Request) {
	h.blind.Store(false) // the head goproxy read: whatever it held was one
	switch {
	case h.state != boundAwait:
		h.state = boundLoose
	case len(req.TransferEncoding) == 1 && req.TransferEncoding[0] == "chunked":
		h.state, h.left, h.n, h.sub = boundChunkLine, 0, 0, 0
	case len(req.TransferEncoding) > 0 || req.ContentLength < 0:
		h.state = boundLoose
	case req.ContentLength == 0:
		h.state = boundDone
	default:
		h.state, h.left = boundBody, req.ContentLength
	}
}

// readConn reads the connection, within the request's boundaries when
// goproxy's HTTP/1 loop serves it. An h2 connection is watched until its
// preface has come: the first byte that is not the preface's has goproxy
// serve it with its HTTP/1 loop, on this goroutine, and the connection is
// HTTP/1's from there (c.h1), the bytes of this read bounded already.
// Its idle timer (idle.go) stays, as harmless as redundant: a request
// stops it, and a head under way defers it. goproxy waits for the
// preface's 24 bytes before it decides: a first head shorter than that,
// with more behind it, is read past, and the boundaries given up.
func (c *hijackedConn) readConn(b []byte) (int, error) {
	if c.h1 {
		if c.bodyFault.Load() != nil {
			return 0, io.EOF // past a chunk that broke its body: no request (bodyfault.go)
		}
		if c.limit.tooLarge.Load() {
			// A head refused: every read after says so. net/textproto
			// can drop the refusal's error (bufio's ReadLine returns a
			// partial line without it, skipSpace ignores it) and read
			// on: that read waited for bytes the client had no reason
			// to send, the connection held to the head deadline (10 s)
			// after its 431 and recorded as timed out
			// (TestH1HeadTooLargeEndsPromptly).
			return 0, errHeadTooLarge
		}
		return c.bounds.read(c.Conn, b)
	}
	n, err := c.Conn.Read(b)
	h := &c.bounds
	if h.preface == len(http2.ClientPreface) {
		return n, err
	}
	want := http2.ClientPreface[h.preface:]
	k := min(n, len(want))
	if string(b[:k]) == want[:k] {
		h.preface += k
		return n, err
	}
	c.h1 = true
	// What came before was the preface's start: handed out already, it
	// is the head's start too. Should it hold a head's end (a client that
	// sent "PRI * HTTP/2.0" and an empty line, but no more of the
	// preface), the boundaries are lost from the start.
	if seen := clientPreface[:h.preface]; h.take(seen) < len(seen) {
		h.state = boundLoose
	}
	return h.bound(b, n, err)
}

var clientPreface = []byte(http2.ClientPreface)

// awaitHead arms the wait for the next request as a response ends: the
// head deadline at once when the start of a head was read already (a
// pipelined one), else the idle deadline (idle.go), which the head's first
// byte replaces.
func (c *hijackedConn) awaitHead() {
	h := &c.bounds
	switch h.state {
	case boundDone:
		lost := h.lost
		h.state, h.line = boundHead, lineMid
		if !lost {
			h.lead = maxLeadingEmpty
		}
		h.lost = false
		// Empty lines kept are not the start of a head: the wait for
		// one stays the idle one.
		h.pending = h.pending[h.skipLead(h.pending):]
		// After a trailer net/http ended at a bare LF, its reader holds
		// the bytes from there to the CRLF CRLF the bounds read to, at
		// least that CRLF: the next head has begun, though no read will
		// bring a byte of it if it is whole there, and a head that
		// cannot be read is marked begun for its record (headUnread).
		if len(h.pending) > 0 || lost {
			c.limit.time(c.Conn)
			return
		}
	case boundBody, boundChunkLine, boundChunkData, boundTrailer:
		// net/http found the body's end before the boundaries did (a
		// chunked body they read otherwise): what they would hand out
		// as its rest may be a head.
		h.state = boundLoose
	}
	if len(h.pending) == 0 {
		h.buf = nil
	}
	c.limit.idleDeadline(c.Conn)
}

// The head limit's charge for lines. --max-header-bytes bounds a head's
// bytes, not what net/http's parse makes of them: each field becomes a
// map entry, a key string and a []string, in goproxy's request and in the
// transport's copy, held for as long as the origin takes to answer (an
// origin that never does: for as long as the client keeps the
// connection). A head of 4-6 byte fields ("1a:") held about 17 times its
// bytes, 1 MiB a connection for a 60 KB head, where one 60 KB field held
// 120 KiB. So each line of a head costs h1LineCharge beside its bytes, about
// what a field costs the appliance beyond them (~100 bytes measured), as
// HTTP/2's list size charges 32 a field, with room for ten lines'
// charge (h1LineSlack) as net/http's HTTP/2 conversion allows for ten
// fields: a head of tiny fields the limit lets through holds less than
// twice one of a single field, and an ordinary head of a few dozen
// fields loses a few KiB of its 64.
const (
	h1LineCharge = 64
	h1LineSlack  = 10 * h1LineCharge
)

// overHead adds the cost of b, the next bytes of a request head, to what
// the head has cost, and reports whether that is over the limit: their
// bytes, and h1LineCharge for each line they end.
func (l *headLimit) overHead(b []byte) bool {
	cost := int64(len(b)) + h1LineCharge*int64(bytes.Count(b, newline))
	return l.read.Add(cost) > l.max+h1LineSlack
}

var newline = []byte{'\n'}

// headTooLarge says the head limit's refusal with the limit it holds heads
// to, as overHead measures them: max, --max-header-bytes, with room for
// ten lines' charge, each line charged beside its bytes. The words named
// max, 640 bytes short of a head that passes, where the header list
// limit's name the limit it enforces: both are said the same way
// (headerListTooLarge).
func headTooLarge(max int64) string {
	return fmt.Sprintf("request head larger than %d bytes (its bytes and %d a line)", max+h1LineSlack, h1LineCharge)
}
