// Package sniff classifies a client's TCP stream by its first bytes — TLS
// ClientHello, HTTP/1.x request, HTTP/2 prior-knowledge preface, or anything
// else — without consuming them: it only peeks into a bufio.Reader, so the
// handler chosen next (bump, splice, HTTP proxy, byte relay) reads the stream
// from its first byte.
//
// It reads as leniently as the servers behind it: a hostile client picks
// whatever a server accepts and the classifier does not (a record version
// out of range, an alert before the ClientHello, a blank line before the
// request line) to pass as opaque bytes past the rules about names. What
// starts like TLS or HTTP but cannot be read is reported as such, with Err
// set, never as KindOther.
//
// The parsers (ParseClientHello, ParseHTTPRequest) read hostile input: they
// bound every length by the bytes present, never panic, and allocate at most
// in proportion to their input.
package sniff

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"
)

// BufferSize is the bufio.Reader size Sniff is designed for: one full TLS
// record (5-byte header + 2^14 bytes). It holds any ClientHello sent in a
// single record — a browser's with post-quantum key shares is about 1.8 KB,
// still far below — and any HTTP request head whose Host line lies within
// the first 16 KiB. A ClientHello fragmented over several records and larger
// than this is reported as KindTLS with Err wrapping ErrTooLarge; use a larger
// reader (up to 5 records + MaxClientHelloLen) if those must be parsed, at a
// memory cost per connection.
const BufferSize = recordHeaderLen + maxPlaintext

// CompleteTimeout bounds the time, from the first byte, for the rest of a
// ClientHello or request head to arrive: enough for a retransmission or
// two. A client that stalls longer is classified on what it sent (see
// Result.Err). It is also what a client pays that sends one byte which
// begins an HTTP method ('D', 'G'), or the first bytes of what could be an
// SSLv2-format ClientHello (a byte 0x80 or above, and on), and then waits
// for an answer.
const CompleteTimeout = 3 * time.Second

// ErrTooLarge means the ClientHello or request head did not fit the reader's
// buffer, so it was classified on its first bytes only.
var ErrTooLarge = errors.New("sniff: message larger than the peek buffer")

// NewReader returns a bufio.Reader of BufferSize over r, for Sniff.
func NewReader(r io.Reader) *bufio.Reader { return bufio.NewReaderSize(r, BufferSize) }

// Kind is the class of a connection.
type Kind uint8

// Kinds of connection.
const (
	// KindOther is anything not recognised, including a client that sends
	// nothing: relay bytes, decide on addresses only.
	KindOther Kind = iota
	// KindTLS starts with a TLS record of any type and version (first
	// byte 0x14–0x17): a ClientHello, possibly after records a server
	// skips, or, with Err set, something a TLS server would read as the
	// start of one, an SSLv2-format ClientHello (ErrSSLv2Hello) included.
	KindTLS
	// KindHTTP starts with an HTTP/1.x request line, possibly after blank
	// lines (Result.Blank).
	KindHTTP
	// KindHTTP2Cleartext starts with the HTTP/2 prior-knowledge preface
	// (h2c, "PRI * HTTP/2.0"). It is kept apart from KindHTTP because an
	// HTTP/1.x handler cannot serve it: relay it as bytes (it names no host
	// outside its HPACK-coded HEADERS frames) or deny it.
	KindHTTP2Cleartext
)

// String returns "other", "tls", "http" or "h2c".
func (k Kind) String() string {
	switch k {
	case KindTLS:
		return "tls"
	case KindHTTP:
		return "http"
	case KindHTTP2Cleartext:
		return "h2c"
	default:
		return "other"
	}
}

// Result is what Sniff learnt.
type Result struct {
	// Kind is the class; KindOther when nothing (or nothing known) came.
	Kind Kind
	// Hello is the parsed ClientHello when Kind is KindTLS and Err is nil.
	Hello ClientHello
	// HTTP is the request head when Kind is KindHTTP (Method and Target at
	// least, when Err is nil) or KindHTTP2Cleartext.
	HTTP HTTPRequest
	// Err is non-nil when Kind is not KindOther but the message could not
	// be read whole: malformed (ErrMalformed, ErrMalformedHTTP), larger
	// than the buffer (ErrTooLarge), or cut short because the client
	// stopped sending or closed (wrapping the timeout or io.EOF). A stream
	// cut short is TLS from its first three bytes, HTTP from a known method
	// and a space: the names (SNI, Host) are missing or partial, and the
	// caller must not let such a stream past rules that need them. An HTTP
	// head cut short or too large can still be served by an HTTP handler,
	// which reads it whole; one that is ErrMalformedHTTP cannot.
	Err error
	// Blank is how many CR and LF bytes came before the HTTP request line
	// (KindHTTP, KindHTTP2Cleartext; 0 otherwise). Servers ignore them (RFC
	// 9112 §2.2), and so does classification; net/http does not, so the
	// caller discards them before handing the stream to it.
	Blank int
	// Peeked is how many bytes were examined. All of them are still
	// buffered in the reader.
	Peeked int
}

// ReadDeadliner is the part of net.Conn that Sniff needs.
type ReadDeadliner interface {
	SetReadDeadline(t time.Time) error
}

// Sniff classifies the connection whose bytes br reads (br must read from
// conn) by peeking, never reading, so every byte stays buffered in br for
// the next consumer. Give it a reader of at least BufferSize (NewReader).
//
// It waits for the first byte with no time limit: until one comes, the
// connection ends, or a deadline set through conn by someone else passes (a
// destination that speaks first); a client that sends nothing by then is
// KindOther. Once the client has sent something it peeks as far as needed
// (the whole ClientHello, or the request line and the first Host header)
// for at most CompleteTimeout more, and returns as soon as the class is
// certain. It always clears the read deadline before returning.
//
// The error is non-nil only when reading failed other than by timeout or EOF
// (e.g. a reset), or the deadline could not be set: the connection is then
// unusable, though Result still says what was seen. A timeout or EOF is
// part of the classification (see Result.Err), not an error.
func Sniff(br *bufio.Reader, conn ReadDeadliner) (Result, error) {
	return sniff(br, conn, 0, CompleteTimeout)
}

// sniff is Sniff with a limit on the wait for the first byte (wait > 0);
// the rest has complete from the first byte, whatever wait was.
func sniff(br *bufio.Reader, conn ReadDeadliner, wait, complete time.Duration) (res Result, err error) {
	defer func() {
		if derr := conn.SetReadDeadline(time.Time{}); derr != nil && err == nil {
			err = fmt.Errorf("sniff: clearing read deadline: %w", derr)
		}
	}()
	if br.Buffered() == 0 {
		var first time.Time // zero: no limit
		if wait > 0 {
			first = time.Now().Add(wait)
		}
		if err := conn.SetReadDeadline(first); err != nil {
			return Result{}, fmt.Errorf("sniff: setting read deadline: %w", err)
		}
		if _, perr := br.Peek(1); perr != nil {
			if endOfInput(perr) {
				return Result{Kind: KindOther}, nil
			}
			return Result{Kind: KindOther}, fmt.Errorf("sniff: waiting for the first bytes: %w", perr)
		}
	}
	if err := conn.SetReadDeadline(time.Now().Add(complete)); err != nil {
		return Result{}, fmt.Errorf("sniff: setting read deadline: %w", err)
	}
	for {
		buf, _ := br.Peek(br.Buffered())
		res, need := classify(buf, nil)
		if need == 0 {
			return res, nil
		}
		if need > br.Size() {
			res, _ = classify(buf, fmt.Errorf("%w: %d bytes needed, buffer holds %d", ErrTooLarge, need, br.Size()))
			return res, nil
		}
		if _, perr := br.Peek(need); perr != nil {
			buf, _ = br.Peek(br.Buffered())
			res, _ = classify(buf, perr)
			if endOfInput(perr) {
				return res, nil
			}
			return res, fmt.Errorf("sniff: reading: %w", perr)
		}
	}
}

// endOfInput reports the errors that mean "no more bytes for now": the
// deadline passed, or the client half-closed. They end sniffing but are left
// for the next consumer to see again (a closed stream keeps returning EOF).
// ETIMEDOUT says Timeout() too, but it is the client vanishing (its
// keepalives or retransmissions unanswered), which broke the connection:
// no deadline of sniffing's own.
func endOfInput(err error) bool {
	if errors.Is(err, io.EOF) || errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	if errors.Is(err, syscall.ETIMEDOUT) {
		return false
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// classify examines buf. With stop == nil it returns need > 0 when more
// bytes could change the answer. With stop != nil no more bytes will come
// (stop says why) and it classifies on what is there, need always 0.
func classify(buf []byte, stop error) (Result, int) {
	res := Result{Kind: KindOther, Peeked: len(buf)}
	if len(buf) == 0 {
		return res, 0
	}
	if isRecordType(buf[0]) {
		h, err := ParseClientHello(buf)
		nm, needMore := err.(*NeedMoreError) // unwrapped: errors.As would cost an allocation per connection
		switch {
		case err == nil:
			res.Kind, res.Hello = KindTLS, h
		case needMore:
			if stop == nil {
				return res, nm.Need
			}
			// Three bytes (a record type and a version) are as sure a sign
			// of TLS as we will get from a client that stopped. Fewer stay
			// "other": no TLS library writes them alone, and a binary
			// protocol may.
			if len(buf) >= 3 {
				res.Kind = KindTLS
				res.Err = fmt.Errorf("incomplete ClientHello (%d of at least %d bytes): %w", len(buf), nm.Need, stop)
			}
		case errors.Is(err, ErrNotTLS):
		default:
			res.Kind, res.Err = KindTLS, err
		}
		return res, 0
	}
	if buf[0]&0x80 != 0 { // maybe an SSLv2-format hello
		// 0x85 and 0xa0 are also whitespace that a server may drop before
		// a request line (isSpace); an SSLv2-format hello has message type
		// 1 in its third byte, which no request has.
		r, need := classifySSLv2(res, buf, stop)
		if r.Kind != KindOther || need > 0 || !isSpace(buf[0]) {
			return r, need
		}
	}

	// Servers skip blank lines before the request line (RFC 9112 §2.2;
	// nginx any number of them), so a client may send them to hide the
	// request from a classifier that does not. Skip them too, as far as
	// the buffer goes.
	blank := 0
	for blank < len(buf) && (buf[blank] == '\r' || buf[blank] == '\n') {
		blank++
	}
	if blank == len(buf) {
		if stop == nil {
			return res, blank + 1
		}
		// A buffer full of them may still end in a request: it cannot be
		// read, and must not pass as opaque bytes. A client that stopped
		// after a few is "other", like one that stopped after "G".
		if errors.Is(stop, ErrTooLarge) {
			res.Kind = KindHTTP
			res.Err = fmt.Errorf("%w: %d bytes of CR and LF and no request line yet", ErrMalformedHTTP, blank)
		}
		return res, 0
	}
	req, err := ParseHTTPRequest(buf[blank:])
	nm, needMore := err.(*NeedMoreError)
	switch {
	case err == nil:
		res.Kind, res.HTTP, res.Blank = KindHTTP, req, blank
		if req.Method == "PRI" {
			res.Kind = KindHTTP2Cleartext
		}
	case errors.Is(err, ErrMalformedHTTP):
		res.Kind, res.HTTP, res.Blank, res.Err = KindHTTP, req, blank, err
	case needMore:
		if stop == nil {
			return res, blank + nm.Need
		}
		// A known method and a space make it HTTP to any HTTP handler, which
		// decides each request on its own Host once it has come whole. A
		// stalled beginning of a method ("GE") stays "other": one-byte
		// commands of binary protocols look the same. A buffer full of
		// whitespace, like one full of blank lines, may still end in a
		// request that a server drops the whitespace before.
		if req.Method == "" && errors.Is(stop, ErrTooLarge) && allSpace(buf[blank:]) {
			res.Kind = KindHTTP
			res.Err = fmt.Errorf("%w: %d bytes of whitespace and no request line yet", ErrMalformedHTTP, len(buf))
		}
		if req.Method != "" {
			res.Kind, res.HTTP, res.Blank = KindHTTP, req, blank
			if req.Method == "PRI" {
				res.Kind = KindHTTP2Cleartext
			}
			res.Err = fmt.Errorf("incomplete request head (%d bytes): %w", len(buf), stop)
		}
	}
	return res, 0
}

func allSpace(b []byte) bool {
	for _, c := range b {
		if !isSpace(c) {
			return false
		}
	}
	return true
}
