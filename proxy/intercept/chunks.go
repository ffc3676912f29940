package intercept

import "math"

// A chunked request body's end, as net/http finds it.
//
// net/http's chunked reader (net/http/internal/chunked.go) reads a size
// line up to its line feed, then the chunk's data and the two bytes after
// it (a CRLF, or the body is malformed), up to a chunk of size 0; the
// body's reader then reads the trailer (transfer.go, readTrailer): if its
// first two bytes are a CRLF, that is the end; else it peeks until the
// bytes from the trailer's start end in a CRLF CRLF, within its 4 KiB
// buffer, and reads the trailer's fields, which end at or before that
// point. Nothing is read past it. The boundaries follow the same framing
// and hand goproxy's reader no byte past that end.
//
// They need to agree with net/http only on bodies net/http accepts: one it
// refuses ends the connection. A size line net/http accepts is 1 to 16
// hex digits, then optional white space or a ";" and an extension, then a
// CRLF: its size is its leading hex digits, and it ends at its first line
// feed, whatever else it holds. A line without a leading digit, or longer
// than net/http allows, or a size past int64, a trailer longer than its
// buffer, gives the boundaries up (boundLoose) rather than guess. Should
// net/http still end the body elsewhere (a trailer whose fields end at a
// bare LF before the CRLF CRLF), the boundaries are lost, never a byte
// (h1Bounds): net/http's reader peeks on up to that CRLF CRLF, and reads
// what follows its empty line as the next request, so the bounds read to
// the CRLF CRLF too, and mark the end lost (trailerLine), which keeps
// awaitHead from dropping CR or LF bytes that may be that request's.

// Bounds on what the chunk framing may hold, as net/http's: a size line
// and a trailer that fit its reader's 4 KiB buffer (ReadSlice's,
// seeUpcomingDoubleCRLF's).
const (
	maxChunkLine = 4096
	maxTrailer   = 4096
)

// maxChunkPrefix is the largest size whose next digit (up to 15) and the
// CRLF after the chunk's data still fit in an int64: a line that goes past
// it gives the boundaries up. net/http takes up to 16 hex digits, a size
// no client sends.
const maxChunkPrefix = (math.MaxInt64 - 15 - 2) >> 4

// chunks takes the bytes p of a chunked body, read next, and returns how
// many of them are the body's: all of them, unless it ends in p.
func (h *h1Bounds) chunks(p []byte) int {
	for i := 0; i < len(p); {
		switch h.state {
		case boundChunkData:
			if h.left < 0 {
				// An overflowed count, which maxChunkPrefix keeps from
				// being: stepping i back by it would index before p's
				// start, a panic in the connection's goroutine.
				h.state = boundLoose
				return len(p)
			}
			k := int(min(int64(len(p)-i), h.left))
			i += k
			if h.left -= int64(k); h.left == 0 {
				h.state, h.n, h.sub = boundChunkLine, 0, 0
			}
		case boundChunkLine:
			c := p[i]
			i++
			if h.n++; h.n > maxChunkLine {
				h.state = boundLoose
				return len(p)
			}
			if !h.sizeLine(c) {
				h.state = boundLoose
				return len(p)
			}
		case boundTrailer:
			c := p[i]
			i++
			h.n++
			empty := h.trailerLine(c)
			if h.trailerEnd(c) {
				h.state = boundDone
				return i
			}
			if empty {
				// net/http's trailer ended here, at an empty line a bare
				// LF ended, before the CRLF CRLF its reader peeks for:
				// what follows is the next request's, as far as that
				// CRLF CRLF and maybe past it.
				h.lost = true
			}
			if h.n >= maxTrailer {
				h.state = boundLoose
				return len(p)
			}
		default: // loose or done: the body's end passed in p, or was lost
			return i
		}
	}
	return len(p)
}

// Where a size line is (h.sub, in boundChunkLine).
const (
	sizeStart  = iota // no digit yet
	sizeDigits        // within the size's digits
	sizeRest          // past them: white space or an extension
)

// sizeLine takes the size line's next byte, c. It returns false for a
// line the boundaries do not follow.
func (h *h1Bounds) sizeLine(c byte) bool {
	if c == '\n' {
		switch {
		case h.sub == sizeStart:
			return false
		case h.left == 0: // the last chunk
			h.state, h.n, h.sub, h.line, h.lost = boundTrailer, 0, 0, lineStart, false
		default:
			h.state, h.left = boundChunkData, h.left+2 // and its CRLF
		}
		return true
	}
	if h.sub == sizeRest {
		return true
	}
	d, ok := hexDigit(c)
	switch {
	case ok:
		if h.left > maxChunkPrefix { // past what h.left, and its CRLF, can count
			return false
		}
		h.left, h.sub = h.left<<4|int64(d), sizeDigits
	case h.sub == sizeStart:
		return false
	default:
		h.sub = sizeRest
	}
	return true
}

func hexDigit(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// trailerLine takes the trailer's next byte, c, and reports whether it
// ends an empty line, where net/http's reader of the trailer's fields
// (textproto's ReadMIMEHeader) ends it: a line feed at a line's start or
// after a carriage return there, the line's start being the trailer's or
// the byte after a line feed. h.line is where c's line stands.
func (h *h1Bounds) trailerLine(c byte) bool {
	switch {
	case c == '\n':
		empty := h.line != lineMid
		h.line = lineStart
		return empty
	case c == '\r' && h.line == lineStart:
		h.line = lineCR
	default:
		h.line = lineMid
	}
	return false
}

// trailerEnd takes the trailer's next byte, c, and reports whether the
// trailer ends with it: its first two bytes are a CRLF, or the bytes so
// far end in a CRLF CRLF. h.sub is how much of a CRLF CRLF they end in.
func (h *h1Bounds) trailerEnd(c byte) bool {
	switch {
	case c == '\r' && h.sub == 2:
		h.sub = 3
	case c == '\r':
		h.sub = 1
	case c == '\n' && (h.sub == 1 || h.sub == 3):
		h.sub++
	default:
		h.sub = 0
	}
	return h.sub == 4 || h.sub == 2 && h.n == 2
}
