package intercept

import (
	"net/textproto"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// The resets x/net makes for a request's body and trailers, counted as
// the client's frame that draws them comes in (h2guard.go's Rapid Reset
// count), like the others: counted as written, a client that stopped
// reading kept them queued, and had x/net's 250 handlers per connection
// with no GOAWAY and no refusal record (review r4s26 F2). Each is x/net's
// rule, as its server applies it (server.go, frame.go):
//
//   - DATA past the request's content-length: x/net holds a request whose
//     HEADERS left its body open to the value of its first content-length
//     field (strconv.ParseUint(v, 10, 63); 0 if that fails), and resets
//     the stream (PROTOCOL_ERROR) at the DATA frame whose data, padding
//     aside, takes the body past it.
//   - A trailer block with a pseudo-header field, a field name or value
//     HTTP/2 does not allow, or, when the request announced trailers (a
//     trailer field naming one other than Transfer-Encoding, Trailer and
//     Content-Length), a field that may not be a trailer
//     (httpguts.ValidTrailerHeader): PROTOCOL_ERROR.
//
// Not so DATA over the stream's flow-control window: x/net counts the
// window it grants as it queues its WINDOW_UPDATE, not as it writes it,
// and what it queued behind a client that stopped reading the appliance
// does not see; the window it could track from the writes would be
// smaller than x/net's, and count resets x/net does not make. Those stay
// counted as written (checkWrittenResets). A client draws that reset
// only once it has sent 1 MiB (x/net's window a stream, and a
// connection) more than the handlers have read.

// h2Stream is what the reset count keeps of an unanswered stream.
type h2Stream struct {
	ended bool // the client ended its side (END_STREAM)
	// declared is the body length x/net holds the request to (-1: none),
	// body the data its DATA frames brought, padding aside.
	declared, body int64
	trailers       bool // the request announced trailer fields
}

// h2Block is what the reset count reads of the header block being
// decoded: of a request's, its first content-length and whether it
// announces trailers; of a trailer block's, whether x/net resets it.
type h2Block struct {
	declared     int64 // -1: no content-length field
	announces    bool
	bad          bool // a pseudo-header field, or a name or value x/net refuses
	notTrailer   bool // a field that may not be a trailer
	sawDeclaring bool // a content-length field came
	// req is what x/net's 400 for a request would say (h2reject.go).
	req h2RequestFields
}

func (b *h2Block) reset() { *b = h2Block{declared: -1} }

// field takes a field of the block, as x/net's frame reader would: for a
// request, newStream set, only its first content-length and the names its
// trailer fields announce matter.
func (b *h2Block) field(f hpack.HeaderField, newStream bool) {
	if newStream {
		b.req.field(f) // h2reject.go
		switch f.Name {
		case "content-length":
			if !b.sawDeclaring {
				b.sawDeclaring = true
				if n, err := strconv.ParseUint(f.Value, 10, 63); err == nil {
					b.declared = int64(n)
				} else {
					b.declared = 0
				}
			}
		case "trailer":
			for key := range strings.SplitSeq(f.Value, ",") {
				if b.announces {
					break
				}
				switch textproto.CanonicalMIMEHeaderKey(textproto.TrimString(key)) {
				case "Transfer-Encoding", "Trailer", "Content-Length":
				default:
					b.announces = true
				}
			}
		}
		return
	}
	if b.bad {
		return
	}
	if !httpguts.ValidHeaderFieldValue(f.Value) || strings.HasPrefix(f.Name, ":") || !validFieldName(f.Name) {
		b.bad = true
		return
	}
	if !httpguts.ValidTrailerHeader(f.Name) {
		b.notTrailer = true
	}
}

// validFieldName is x/net's validWireHeaderFieldName: a token, in lower
// case.
func validFieldName(v string) bool {
	if v == "" {
		return false
	}
	for _, r := range v {
		if !httpguts.IsTokenRune(r) || 'A' <= r && r <= 'Z' {
			return false
		}
	}
	return true
}

// blockEnd takes the end of a header block read whole: a request's
// declares its body, a trailer block x/net resets draws that reset.
func (l *h2HeaderLimit) blockEnd() {
	b := &l.block
	if l.newStream {
		l.unanswered.declare(l.blockStream, b.declared, b.announces)
		l.unanswered.reject(l.blockStream, &b.req) // h2reject.go
		return
	}
	if l.unanswered.badTrailers(l.blockStream, b.bad, b.notTrailer) {
		l.checkResets()
	}
}

// dataEnd takes the end of a DATA frame on a stream: the data it brought,
// its padding aside, which x/net's reset draws if it takes the body past
// the request's content-length. A padding longer than the frame is a
// connection error, which x/net ends the connection for.
func (l *h2HeaderLimit) dataEnd() {
	n := l.length
	if l.flags&h2FlagPadded != 0 {
		if n == 0 || l.pad > n-1 {
			return
		}
		n -= 1 + l.pad
	}
	if l.unanswered.data(l.stream, int64(n)) {
		l.checkResets()
	}
}

// declare sets the body length of the request on id, and whether it
// announced trailers.
func (u *h2Unanswered) declare(id uint32, declared int64, trailers bool) {
	if u == nil {
		return
	}
	u.mu.Lock()
	if s, ok := u.m[id]; ok {
		s.declared, s.trailers = declared, trailers
		u.m[id] = s
	}
	u.mu.Unlock()
}

// data takes n bytes of data on id: if id is unanswered and they take its
// body past its declared length, x/net resets it, which data counts and
// reports.
func (u *h2Unanswered) data(id uint32, n int64) bool {
	if u == nil {
		return false
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	s, ok := u.m[id]
	switch {
	case !ok:
		return false
	case s.declared >= 0 && s.body+n > s.declared:
		u.takeLocked(id)
		u.caused.Add(1)
		u.ends.server(id, http2.ErrCodeProtocol, false)
		return true
	}
	s.body += n
	u.m[id] = s
	return false
}

// badTrailers takes a trailer block on id read whole: bad, or notTrailer
// when the request announced trailers, and x/net resets id, which
// badTrailers counts, if id is unanswered, and reports.
func (u *h2Unanswered) badTrailers(id uint32, bad, notTrailer bool) bool {
	if u == nil || !bad && !notTrailer {
		return false
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	s, ok := u.m[id]
	if !ok || !bad && !s.trailers {
		return false
	}
	u.takeLocked(id)
	u.caused.Add(1)
	u.ends.server(id, http2.ErrCodeProtocol, false)
	return true
}
