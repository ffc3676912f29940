package intercept

import (
	"errors"
	"net"
	"net/http"
)

// headLimitedConn counts what is read from the connection while a
// response head is read (limited): at most left bytes. It follows the
// heads as they pass (scan).
type headLimitedConn struct {
	net.Conn
	limited, over bool
	left          int64
	scan          headScan
}

func (c *headLimitedConn) Read(b []byte) (int, error) {
	if !c.limited {
		return c.Conn.Read(b)
	}
	if c.left == 0 {
		c.over = true
		return 0, errors.New("response head too large")
	}
	if int64(len(b)) > c.left {
		b = b[:c.left]
	}
	n, err := c.Conn.Read(b)
	c.left -= int64(n)
	c.scan.feed(b[:n])
	return n, err
}

// headScan notes which of the response heads read through it had a
// Content-Length or a Transfer-Encoding header field. net/http drops both
// from the parsed header once it has used them, and a response whose
// framing is faulty (RFC 9112 §6.1, §6.3: both fields; or
// Transfer-Encoding in HTTP/1.0) must end its connection: the upstream and
// the appliance may disagree on where it ends, and what follows would be
// taken for the next response.
//
// It reads lines as bufio.Reader.ReadLine, under http.ReadResponse, does:
// split at "\n", a "\r" before it dropped; a head ends with an empty line.
// It also sees what follows the final head (its body, read along), which
// is noted as further heads, never looked at.
type headScan struct {
	heads  int               // heads that have ended
	fields [max1xx + 1]uint8 // per head: fieldCL, fieldTE
	line   int               // bytes of the current line so far
	cr     bool              // the current line is "\r" so far
	name   string            // the field name the current line may begin with
	match  int               // how much of name it matched; -1: none
}

const (
	fieldCL = 1 << iota // Content-Length
	fieldTE             // Transfer-Encoding
)

func (s *headScan) feed(b []byte) {
	for _, ch := range b {
		if ch == '\n' {
			if s.line == 0 || (s.line == 1 && s.cr) {
				s.heads++
			}
			s.line, s.cr, s.name, s.match = 0, false, "", 0
			continue
		}
		if 'A' <= ch && ch <= 'Z' {
			ch += 'a' - 'A'
		}
		if s.line == 0 {
			s.cr = ch == '\r'
			switch ch {
			case 'c':
				s.name = "content-length"
			case 't':
				s.name = "transfer-encoding"
			default:
				s.match = -1
			}
		}
		s.line++
		switch {
		case s.match < 0:
		case s.match < len(s.name) && ch == s.name[s.match]:
			s.match++
		case s.match == len(s.name) && (ch == ' ' || ch == '\t'):
			// net/http takes "Content-Length :" for another field; a
			// laxer reader after the appliance may not.
		case s.match == len(s.name) && ch == ':':
			if s.heads < len(s.fields) {
				if s.name[0] == 'c' {
					s.fields[s.heads] |= fieldCL
				} else {
					s.fields[s.heads] |= fieldTE
				}
			}
			s.match = -1
		default:
			s.match = -1
		}
	}
}

// faulty reports whether resp, parsed from head n (counted from 0), has a
// framing its connection must not survive: a Transfer-Encoding with a
// Content-Length, or in an HTTP/1.0 response. A head the scan did not see
// end is taken for faulty.
func (s *headScan) faulty(n int, resp *http.Response) bool {
	if n >= s.heads || n >= len(s.fields) {
		return true
	}
	f := s.fields[n]
	return f&fieldTE != 0 && (f&fieldCL != 0 || !resp.ProtoAtLeast(1, 1))
}
