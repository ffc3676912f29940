package intercept

import (
	"bytes"
	"errors"
	"net/http"
)

// Answers to HTTP/1.0 requests, unchunked.
//
// goproxy writes every HTTP/1 answer whose length it does not know
// chunked, and as HTTP/1.1, whatever the request's version: it decides so
// after its response filters (https.go), so no filter can stop it. RFC
// 9112 §6.1: a server must not send Transfer-Encoding in an answer to a
// request below HTTP/1.1, which may not understand it. An HTTP/1.0 client
// read the chunk framing as the body ("5\r\nhello\r\n0\r\n\r\n"), and its
// record said ok. Without forking goproxy, the client connection undoes
// it as goproxy writes: the head of such an answer loses its
// Transfer-Encoding and Trailer fields and says "Connection: close", the
// body's bytes go out without their framing (a chunk's size line and the
// CRLF after its data, the last chunk, the trailer section), and the
// connection closes after the answer (nextHead.Close), which is what
// delimits the body then: an HTTP/1.0 client that asked to keep it alive
// is not left waiting for more. A body the destination cut short ends the
// connection with a RST instead (clientend.go): the close would tell the
// client it had it all. Answers of a known length, and those with
// no body (HEAD, 1xx, 204, 304), pass as they are, but that a HEAD's
// loses its Transfer-Encoding and Trailer fields too (§6.1 holds for it,
// and nobodystatus.go drops a 204's or 304's). The decoding keeps no
// bytes: each write's data goes on as slices of it.

// Where an answer's unchunking stands (unchunk.state).
const (
	unchunkOff     uint8 = iota // nothing to undo: writes pass as they are
	unchunkHead                 // an answer to an HTTP/1.0 request: its head is gathered
	unchunkSize                 // a chunk's size line
	unchunkData                 // a chunk's data: left bytes
	unchunkDataEnd              // the CRLF after a chunk's data: left bytes
	unchunkTrailer              // the trailer section, up to its empty line
	unchunkDone                 // the body has ended: nothing follows it
)

// unchunk is the unchunking of the answer goproxy is writing; goproxy's
// goroutine only (RoundTrip, and its writes).
type unchunk struct {
	state  uint8
	noBody bool   // the request is a HEAD: its answer is a head alone
	digit  bool   // the size line has a digit
	rest   bool   // the size line is past its digits: an extension, white space
	line   int    // bytes of the trailer's line so far, but a CR
	left   int64  // of the chunk's data, or of its CRLF
	head   []byte // the head so far; then the head rewritten: kept for the connection
}

// errUnchunk fails goproxy's write of a chunked body the client connection
// cannot follow (net/http's chunked writer never writes one).
var errUnchunk = errors.New("a chunked response to an HTTP/1.0 request written with framing that cannot be undone")

// startUnchunk readies the client connection for the answer to req: one
// to a request below HTTP/1.1 is looked at (a HEAD's for its head alone).
// An HTTP/1.1 request leaves an idle state as it is: the per-request cost
// is one comparison.
func (c *hijackedConn) startUnchunk(req *http.Request) {
	u := &c.unchunk
	if req.ProtoAtLeast(1, 1) {
		if u.state != unchunkOff {
			u.state = unchunkOff
		}
		return
	}
	u.state, u.noBody, u.head = unchunkHead, req.Method == http.MethodHead, u.head[:0]
}

// cut reports whether an unchunked answer's body ended before its last
// chunk: goproxy stopped writing it (the destination's read failed, or
// the client went away), and the connection, which delimits it, must not
// end as if it were whole.
func (u *unchunk) cut() bool {
	return u.state == unchunkSize || u.state == unchunkData || u.state == unchunkDataEnd
}

// unchunking reports whether the answer being written is being unchunked:
// its connection ends with it.
func (c *hijackedConn) unchunking() bool { return c.unchunk.state > unchunkHead }

// writeUnchunked is Write for an answer to an HTTP/1.0 request; h.mu is
// held. Its head is gathered, then written as it is or rewritten; the body's
// data is written in slices of b, its framing dropped. It returns len(b)
// once all of b is taken.
func (c *hijackedConn) writeUnchunked(b []byte) (int, error) {
	u := &c.unchunk
	n := len(b)
	if u.state == unchunkHead {
		rest, err := c.unchunkHead(b)
		if err != nil {
			return 0, err
		}
		if b = rest; u.state == unchunkOff {
			if len(b) > 0 {
				if _, err := c.writeLocked(b); err != nil {
					return 0, err
				}
			}
			return n, nil
		}
	}
	for len(b) > 0 {
		data, rest, err := u.next(b)
		if err != nil {
			first := err
			c.werr.CompareAndSwap(nil, &first)
			return 0, err
		}
		if len(data) > 0 {
			if _, err := c.writeLocked(data); err != nil {
				return 0, err
			}
		}
		b = rest
	}
	return n, nil
}

// unchunkHead takes b, bytes of the head, and returns what follows the
// head in it. Once the head is whole it is written: rewritten when the
// answer is chunked (a HEAD's, that said chunked, loses that alone), else
// as it is (unchunkOff).
func (c *hijackedConn) unchunkHead(b []byte) ([]byte, error) {
	u := &c.unchunk
	head, rest := b, []byte(nil)
	if i := bytes.Index(b, []byte("\r\n\r\n")); i >= 0 && len(u.head) == 0 {
		head, rest = b[:i+4], b[i+4:] // the usual case: goproxy writes the head whole
	} else {
		k := len(u.head)
		u.head = append(u.head, b...)
		i := bytes.Index(u.head[max(0, k-3):], []byte("\r\n\r\n"))
		if i < 0 {
			return nil, nil
		}
		i += max(0, k-3) + 4
		rest = b[i-k:]
		head = u.head[:i]
	}
	out, chunked := rewriteHead(head, u.head[len(u.head):], !u.noBody)
	u.state = unchunkOff
	if out != nil {
		u.head = out[:0] // its storage, for the connection's next such head
		head = out
	}
	if chunked {
		u.state, u.digit, u.rest, u.left = unchunkSize, false, false, 0
	}
	if _, err := c.writeLocked(head); err != nil {
		return nil, err
	}
	return rest, nil
}

// rewriteHead returns head without its Transfer-Encoding, Trailer,
// Connection and Keep-Alive fields, with "Connection: close" after its
// status line, appended to buf; and whether the answer is chunked with a
// body to undo (else out is nil). With body false (a HEAD's answer), out
// is head without its Transfer-Encoding and Trailer fields, or nil when it
// has none, and chunked is false: there is nothing to undo or to delimit.
// A head it leaves as it is costs no allocation: the fields are looked at
// before anything is built (an answer of a known length built a head and
// threw it away: 3 allocations per HTTP/1.0 request).
func rewriteHead(head, buf []byte, body bool) (out []byte, chunked bool) {
	status, fields, _ := bytes.Cut(head, []byte("\r\n"))
	// "HTTP/1.1 200 OK": the code at [9:12], as net/http writes it.
	if len(status) < 12 {
		return nil, false
	}
	code := status[9:12]
	if code[0] < '2' || string(code) == "204" || string(code) == "304" {
		return nil, false
	}
	chunked, framed := framing(fields)
	if (body && !chunked) || !framed {
		return nil, false
	}
	out = append(buf, status...)
	if body {
		out = append(out, "\r\nConnection: close"...)
	}
	out = append(out, "\r\n"...)
	for len(fields) > 0 {
		var line []byte
		line, fields, _ = bytes.Cut(fields, []byte("\r\n"))
		name, _, _ := bytes.Cut(line, []byte(":"))
		switch {
		case len(line) == 0, bytes.EqualFold(name, []byte("Transfer-Encoding")), bytes.EqualFold(name, []byte("Trailer")):
			continue
		case body && (bytes.EqualFold(name, []byte("Connection")) || bytes.EqualFold(name, []byte("Keep-Alive"))):
			continue
		}
		out = append(append(out, line...), "\r\n"...)
	}
	return append(out, "\r\n"...), body
}

// framing reports whether a head's fields say Transfer-Encoding: chunked,
// and whether they have a Transfer-Encoding or a Trailer field at all.
func framing(fields []byte) (chunked, framed bool) {
	for len(fields) > 0 {
		var line []byte
		line, fields, _ = bytes.Cut(fields, []byte("\r\n"))
		name, value, _ := bytes.Cut(line, []byte(":"))
		switch {
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			chunked, framed = chunked || bytes.EqualFold(bytes.TrimSpace(value), []byte("chunked")), true
		case bytes.EqualFold(name, []byte("Trailer")):
			framed = true
		}
	}
	return chunked, framed
}

// next takes b, bytes of the chunked body, and returns the body's data at
// its start (maybe none) and what follows that.
func (u *unchunk) next(b []byte) (data, rest []byte, err error) {
	switch u.state {
	case unchunkData:
		k := int(min(int64(len(b)), u.left))
		if u.left -= int64(k); u.left == 0 {
			u.state, u.left = unchunkDataEnd, 2
		}
		return b[:k], b[k:], nil
	case unchunkDone:
		return nil, nil, nil // goproxy writes nothing after the end (endChunked)
	}
	for i, ch := range b {
		switch u.state {
		case unchunkDataEnd:
			if ch != "\r\n"[2-u.left] {
				return nil, nil, errUnchunk
			}
			if u.left--; u.left == 0 {
				u.state, u.digit, u.rest = unchunkSize, false, false
			}
		case unchunkSize:
			if err := u.sizeByte(ch); err != nil {
				return nil, nil, err
			}
			if u.state == unchunkData {
				return nil, b[i+1:], nil
			}
		case unchunkTrailer:
			switch {
			case ch == '\n' && u.line == 0:
				u.state = unchunkDone
				return nil, nil, nil
			case ch == '\n':
				u.line = 0
			case ch != '\r':
				u.line++
			}
		}
	}
	return nil, nil, nil
}

// sizeByte takes the next byte of a size line: hex digits, then
// anything (an extension) up to its line feed.
func (u *unchunk) sizeByte(ch byte) error {
	if ch == '\n' {
		switch {
		case !u.digit:
			return errUnchunk
		case u.left == 0:
			u.state, u.line = unchunkTrailer, 0
		default:
			u.state = unchunkData
		}
		return nil
	}
	if u.rest {
		return nil
	}
	d, ok := hexDigit(ch)
	switch {
	case ok && u.left <= maxChunkPrefix:
		u.left, u.digit = u.left<<4|int64(d), true
	case ok:
		return errUnchunk
	case !u.digit:
		return errUnchunk
	default:
		u.rest = true
	}
	return nil
}
