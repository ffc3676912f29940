package sniff

import (
	"bytes"
	"errors"
	"strings"
)

// ErrNotHTTP means the bytes do not start an HTTP/1.x request (nor the
// HTTP/2 prior-knowledge preface).
var ErrNotHTTP = errors.New("sniff: not an HTTP/1.x request")

// ErrMalformedHTTP means the bytes start with a known method and
// whitespace, possibly after whitespace, and the first line names HTTP
// ("HTTP/" in any case), but it is not a request line this parser accepts:
// several spaces, a tab or other whitespace for a space, whitespace before
// the method or after the version, a control byte in the target, a version
// other than 1.x. Lenient servers (nginx, Python's http.server) accept some
// of these, so such a head must never pass as opaque bytes: it is HTTP
// whose Host cannot be read.
var ErrMalformedHTTP = errors.New("sniff: malformed HTTP/1.x request line")

// H2Preface is the client connection preface of HTTP/2 with prior knowledge
// (RFC 9113 §3.4). Its first line looks like an HTTP/1.x request line with
// the method PRI; no HTTP/1.x request uses that method.
const H2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// methods are the request methods recognised as HTTP: RFC 9110's, PATCH,
// the common WebDAV ones, and PRI for the HTTP/2 preface. Methods are
// case-sensitive. A request with another method is classified as other TCP
// (relayed as bytes, matched on address only).
var methods = [...]string{
	"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "PRI",
	"PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "SEARCH", "REPORT",
}

const maxMethodLen = len("PROPPATCH")

// protos avoids allocating the version string.
var protos = [...]string{
	"HTTP/1.0", "HTTP/1.1", "HTTP/1.2", "HTTP/1.3", "HTTP/1.4",
	"HTTP/1.5", "HTTP/1.6", "HTTP/1.7", "HTTP/1.8", "HTTP/1.9",
}

// HTTPRequest is the head of an HTTP/1.x request, as far as it was parsed.
type HTTPRequest struct {
	// Method is one of the recognised methods; "PRI" for the HTTP/2 preface.
	Method string
	// Target is the request-target as sent: origin-form ("/a?b"),
	// absolute-form ("http://host/a"), authority-form ("host:443", CONNECT)
	// or "*".
	Target string
	// Proto is "HTTP/1.0", "HTTP/1.1" (any "HTTP/1.<digit>"), or "HTTP/2.0"
	// for the prior-knowledge preface.
	Proto string
	// Host is the trimmed value of the first Host header field, "" when the
	// head ended (or the input did) before one. It may carry a port.
	Host string
}

// Authority returns the host (and port, if any) the request names: for
// CONNECT the target; for an absolute-form target its authority, which RFC
// 9112 §3.2.2 says takes precedence over the Host header (and which Go's
// net/http uses as Request.Host, so policy must look at the same name);
// otherwise the Host header.
func (r *HTTPRequest) Authority() string {
	if r.Method == "CONNECT" {
		return r.Target
	}
	if rest, ok := cutSchemePrefix(r.Target); ok {
		if i := strings.IndexAny(rest, "/?#"); i >= 0 {
			rest = rest[:i]
		}
		if i := strings.LastIndexByte(rest, '@'); i >= 0 {
			rest = rest[i+1:] // drop userinfo
		}
		return rest
	}
	return r.Host
}

// Hostname returns Authority without a port and without the brackets of an
// IPv6 literal, e.g. "example.com" for "example.com:8080", "::1" for
// "[::1]:80".
func (r *HTTPRequest) Hostname() string {
	a := r.Authority()
	if strings.HasPrefix(a, "[") {
		if i := strings.IndexByte(a, ']'); i > 0 {
			return a[1:i]
		}
		return a
	}
	if i := strings.LastIndexByte(a, ':'); i >= 0 && strings.IndexByte(a, ':') == i {
		return a[:i]
	}
	return a
}

func cutSchemePrefix(t string) (string, bool) {
	for _, s := range [...]string{"http://", "https://"} {
		if len(t) >= len(s) && strings.EqualFold(t[:len(s)], s) {
			return t[len(s):], true
		}
	}
	return "", false
}

func lookupMethod(b []byte) string {
	for _, m := range methods {
		if string(b) == m {
			return m
		}
	}
	return ""
}

func isMethodPrefix(b []byte) bool {
	for _, m := range methods {
		if len(b) <= len(m) && string(b) == m[:len(b)] {
			return true
		}
	}
	return false
}

// targetByte reports bytes allowed in a request-target: anything visible.
// Bytes ≥ 0x80 are let through because real clients send raw UTF-8 paths;
// the HTTP handler downstream decides whether to accept them.
func targetByte(c byte) bool { return c > ' ' && c != 0x7f }

// ParseHTTPRequest parses the start of an HTTP/1.x request from b: the
// request line `METHOD SP target SP HTTP/1.x CRLF` (a bare LF is accepted,
// as RFC 9112 §2.2 allows), then header lines until the first Host field or
// the end of the head. Blank lines before the request line are the
// caller's to skip (see Result.Blank). It returns:
//
//   - nil once the request line is complete and either a Host field or the
//     blank line ending the head has been seen;
//   - a *NeedMoreError (ErrNeedMore) while b could still become that; the
//     returned HTTPRequest then holds what was parsed so far (Method alone,
//     or the whole request line without Host);
//   - ErrMalformedHTTP when a known method and whitespace (isSpace),
//     possibly after whitespace, begin a first line that names HTTP but is
//     not a valid request line (Method is set);
//   - ErrNotHTTP otherwise, including HTTP/0.9 requests (no version),
//     unknown or lower-case methods, and lines of other protocols that
//     share methods (RTSP and SIP "OPTIONS", Redis inline "GET key").
//
// The HTTP/2 prior-knowledge preface (H2Preface) is returned as Method
// "PRI", Target "*", Proto "HTTP/2.0", once all 24 bytes are present. The
// rest of the head is not validated: the HTTP handler that consumes the
// bytes next parses them properly.
func ParseHTTPRequest(b []byte) (HTTPRequest, error) {
	var req HTTPRequest
	lead := 0
	for lead < len(b) && isSpace(b[lead]) {
		lead++
	}
	m := b[lead:]
	sp := indexSpace(m[:min(len(m), maxMethodLen+1)])
	if sp < 0 {
		if len(m) <= maxMethodLen && isMethodPrefix(m) {
			return req, needMore(len(b) + 1)
		}
		return req, ErrNotHTTP
	}
	req.Method = lookupMethod(m[:sp])
	if req.Method == "" {
		return HTTPRequest{}, ErrNotHTTP
	}
	// From here on, whatever is not a valid request line is judged by
	// badLine: a known method and whitespace may begin a line that lenient
	// servers still take for HTTP. Python's http.server splits the line on
	// any whitespace and drops it before the method, Tomcat takes a tab
	// for a space: whitespace before the method, or other than one space
	// after it, is such a line, never opaque bytes.
	if lead > 0 || m[sp] != ' ' {
		return badLine(b, lead, req.Method)
	}
	if req.Method == "PRI" {
		n := min(len(b), len(H2Preface))
		if string(b[:n]) != H2Preface[:n] {
			return badLine(b, 0, req.Method)
		}
		if n < len(H2Preface) {
			return req, needMore(len(H2Preface))
		}
		return HTTPRequest{Method: "PRI", Target: "*", Proto: "HTTP/2.0"}, nil
	}

	rest := b[sp+1:]
	i := 0
	for i < len(rest) && rest[i] != ' ' {
		if !targetByte(rest[i]) {
			return badLine(b, 0, req.Method)
		}
		i++
	}
	if i == len(rest) {
		return req, needMore(len(b) + 1)
	}
	if i == 0 {
		return badLine(b, 0, req.Method)
	}
	target := rest[:i]
	rest = rest[i+1:]

	const version = "HTTP/1."
	n := min(len(rest), len(version))
	if string(rest[:n]) != version[:n] {
		return badLine(b, 0, req.Method)
	}
	if len(rest) < len(version)+1 {
		return req, needMore(len(b) + len(version) + 1 - len(rest))
	}
	d := rest[len(version)]
	if d < '0' || d > '9' {
		return badLine(b, 0, req.Method)
	}
	rest = rest[len(version)+1:]
	switch {
	case len(rest) == 0, len(rest) == 1 && rest[0] == '\r':
		return req, needMore(len(b) + 1)
	case rest[0] == '\n':
		rest = rest[1:]
	case rest[0] == '\r' && rest[1] == '\n':
		rest = rest[2:]
	default:
		return badLine(b, 0, req.Method)
	}
	req.Target = string(target)
	req.Proto = protos[d-'0']

	for {
		nl := bytes.IndexByte(rest, '\n')
		if nl < 0 {
			return req, needMore(len(b) + 1)
		}
		line := rest[:nl]
		rest = rest[nl+1:]
		line = bytes.TrimSuffix(line, []byte{'\r'})
		if len(line) == 0 {
			return req, nil // end of the head, no Host
		}
		const host = "host:"
		if len(line) >= len(host) && strings.EqualFold(string(line[:len(host)]), host) {
			req.Host = string(bytes.Trim(line[len(host):], " \t"))
			return req, nil
		}
	}
}

// badLine judges a first line that begins, at b[from:], with a known
// method and whitespace but is not a valid request line: ErrMalformedHTTP
// once the line is complete and names HTTP, ErrNotHTTP once it is complete
// and does not (an RTSP, SIP or Redis line), and need-more until its LF has
// come.
func badLine(b []byte, from int, method string) (HTTPRequest, error) {
	nl := bytes.IndexByte(b[from:], '\n')
	if nl < 0 {
		return HTTPRequest{Method: method}, needMore(len(b) + 1)
	}
	if !namesHTTP(b[from : from+nl]) {
		return HTTPRequest{}, ErrNotHTTP
	}
	return HTTPRequest{Method: method}, ErrMalformedHTTP
}

// isSpace reports the bytes some server takes for whitespace in a request
// line: Python's http.server splits it with str.split() after decoding it
// as Latin-1, so HT, LF, VT, FF, CR, 0x1c-0x1f, SP, 0x85 and 0xa0.
func isSpace(c byte) bool {
	switch c {
	case ' ', '\t', '\n', '\v', '\f', '\r', 0x1c, 0x1d, 0x1e, 0x1f, 0x85, 0xa0:
		return true
	}
	return false
}

func indexSpace(b []byte) int {
	for i, c := range b {
		if isSpace(c) {
			return i
		}
	}
	return -1
}

// namesHTTP reports whether line contains "HTTP/" in any case.
func namesHTTP(line []byte) bool {
	const h = "http/"
	for i := 0; i+len(h) <= len(line); i++ {
		j := 0
		for j < len(h) && lower(line[i+j]) == h[j] {
			j++
		}
		if j == len(h) {
			return true
		}
	}
	return false
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}
