package intercept

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// The HTTP/2 header list limit.
//
// goproxy serves HTTP/2 with an http2.Server of its own that is given no
// http.Server, so its header list limit is net/http's default, 1 MiB:
// sixteen times the HTTP/1 head limit, decoded in full before any handler
// (ours) sees the request, and forwarded upstream and into the records as
// it came. goproxy offers no way to configure that server.
//
// So the client's bytes are read beside it, as the HTTP/1 head limit reads
// them: frame headers are followed, and every header block (a HEADERS frame
// and its CONTINUATIONs) is decoded by an HPACK decoder of our own, which
// keeps the same dynamic table as the server's because it sees the same
// bytes. A header list is measured as HTTP/2 measures it (RFC 9113 §6.5.2:
// name, value and 32 bytes per field), so an index into the dynamic table
// counts for what it stands for: a few bytes on the wire can name
// kilobytes.
//
// Once a block's list outgrows the limit, the bytes that made it do so
// never reach the server. The server's decoder then no longer matches the
// client's encoder, so the connection cannot go on: the stream gets a 431
// (unless it was a trailer block, whose stream may be answering already),
// then a GOAWAY, and the connection closes, as an HTTP/1 connection closes
// after its 431. The 431 is recorded when the session ends.

// h2MaxHeaderList is the HTTP/2 header list limit for an HTTP/1 head limit
// of maxHead bytes: net/http's own conversion (http2's
// adjustHTTP1MaxHeaderSize), which allows for the 32 bytes HTTP/2 adds to
// each of about ten fields.
func h2MaxHeaderList(maxHead int64) uint32 {
	return uint32(min(maxHead+10*32, 1<<31))
}

// initialHeaderTableSize is the HPACK dynamic table size goproxy's server
// decodes with (x/net's default, advertised in its SETTINGS): a client may
// not use a larger one, and neither may it with our decoder.
const initialHeaderTableSize = 4096

// timeH2 keeps the deadline of an HTTP/2 connection, past its preface, on
// the frame or header block left unfinished, if any: a client that sent
// HEADERS without END_HEADERS, or a frame header announcing more than it
// sent, and then nothing, held the server's buffer for it for good. Each
// frame has requestHeadTimeout from the read that brought its first byte
// (less h2DeadlineSlack at most): the deadline is moved for every newer
// frame, unless it would move by less than the slack, so that an upload's
// stream of frames, read after read, sets it about once per slack rather
// than on every read. A header block is timed from its HEADERS frame, its
// CONTINUATIONs do not move the deadline on. Nothing unfinished, the
// deadline is left to fire, and disarmed then (Read): disarming it on
// every read that ends between frames would cost as much.
func (l *headLimit) timeH2(c net.Conn) {
	h := l.h2
	if !h.pending() || (l.timed.Load() && h.units == l.unit) {
		return
	}
	l.unit = h.units
	now := time.Now()
	if !l.timed.Load() || now.Add(requestHeadTimeout).Sub(l.deadline) >= requestHeadTimeout/h2DeadlineSlack {
		l.setDeadline(c, now)
	}
}

// h2DeadlineSlack: a new frame's deadline is left where it is when moving
// it would gain less than requestHeadTimeout/h2DeadlineSlack (200 ms of
// 10 s), so a frame gets 98% of the timeout at least.
const h2DeadlineSlack = 50

// clientGone says who ended a request whose client connection ended under
// it, when: the client ("the client went away", with result, reset or
// error, and detail, what the request saw of it), unless the appliance's
// deadline ended the connection (an HTTP/2 client's frame left unfinished,
// while other streams were under way): then the appliance did, the result
// is timeout, and the detail (a cancelled context, "client disconnected")
// would only mislead. So too when the packet stack reset the connection to
// reclaim memory: the HTTP/2 server may see the reset, and end the
// streams, before the session's abort says why. l may be nil.
func (l *headLimit) clientGone(result, when, detail string) (string, string) {
	if l != nil && l.timedOut.Load() {
		return "timeout", "the appliance ended the connection " + when + " (" + l.timeoutError() + ")"
	}
	if err := l.reclaimedErr(); err != nil {
		return "reset", err.Error() + ", " + when
	}
	if l != nil && l.shuttingDown != nil && l.shuttingDown() {
		// The stacks closing ends the client's connection: the HTTP/2
		// server may see it before the session's abort does.
		return "reset", "ended by the appliance's shutdown (its packet stacks closed) " + when
	}
	return result, "the client went away " + when + detail
}

// endedByAppliance reports whether the client's connection was ended by
// the appliance (its head deadline, the memory reclaim, or its shutdown),
// not the client: clientGone's cases that are not the client's.
func (l *headLimit) endedByAppliance() bool {
	return l != nil && (l.timedOut.Load() || l.reclaimedErr() != nil || l.shuttingDown != nil && l.shuttingDown())
}

// reclaimedErr is the packet stack's error once it has reset the client's
// connection to reclaim memory, nil before (or for a connection it cannot
// reclaim). l may be nil.
func (l *headLimit) reclaimedErr() error {
	if l == nil || l.reclaimed == nil {
		return nil
	}
	return l.reclaimed.Reclaimed()
}

// untime disarms the head deadline, or the idle one (idle.go).
func (l *headLimit) untime() {
	timed, idle := l.timed.Swap(false), l.idle.armed.Swap(false)
	if timed || idle {
		_ = l.conn.SetReadDeadline(time.Time{})
	}
}

// HTTP/2 frame types and flags the limit needs (RFC 9113 §6).
const (
	h2FrameHeaderLen   = 9
	h2TypeHeaders      = 0x1
	h2TypeRSTStream    = 0x3
	h2TypeGoAway       = 0x7
	h2TypeContinuation = 0x9
	h2FlagEndHeaders   = 0x4
	h2FlagPadded       = 0x8
	h2FlagPriority     = 0x20
)

// unreadable is the refusal of frames the limit cannot follow (h2refused.go):
// bytes it cannot read must not pass it, and the server would take each
// for a connection error too, so the client gets the GOAWAY the server
// would send, with code (RFC 9113: PROTOCOL_ERROR for a header block
// interrupted or bad padding, COMPRESSION_ERROR for a block that cannot
// be decoded, FRAME_SIZE_ERROR for a frame too short for its fields).
func unreadable(code http2.ErrCode, format string, args ...any) error {
	return &h2GoAway{code, "frames the appliance cannot read: " + fmt.Sprintf(format, args...)}
}

// h2HeaderLimit follows the frames a client sends and measures each header
// block's list. It is used by one reader at a time.
type h2HeaderLimit struct {
	max uint32
	dec *hpack.Decoder
	err error // sticky: errHeadTooLarge or an *h2GoAway (a guard, unreadable)

	// The frame being read.
	hdr    [h2FrameHeaderLen]byte
	hdrN   int // bytes of hdr read
	length int // payload length
	off    int // payload bytes read
	typ    byte
	flags  byte
	stream uint32
	pre    int // HEADERS: pad length and priority fields before the block
	pad    int // HEADERS: padding after it
	// word is the first 4 bytes of a WINDOW_UPDATE's or PRIORITY's
	// payload (h2guard.go, streamFrameEnd).
	word uint32

	// The header block being decoded.
	inBlock     bool
	block       h2Block // what the reset count reads of it (h2guardbody.go)
	blockStream uint32
	newStream   bool   // the block opens its stream (it is not a trailer block)
	ignored     bool   // x/net ignores the stream it opens (h2goawaylast.go)
	size        uint64 // of the header list so far, but its trailer fields
	trailers    uint64 // of its trailer fields, as x/net counts them (over)
	lastStream  uint32 // the highest stream a header block opened
	// passed is lastStream as of the last bytes the server was handed.
	passed uint32
	// unanswered is the connection's streams the server has not answered
	// yet, resets the streams the client reset before their answer
	// (h2guard.go); unanswered is nil in some tests.
	unanswered *h2Unanswered
	resets     int64
	// wire counts the bytes the client sent past its preface, up to the
	// one being taken; decoded the header list bytes they decoded to,
	// every block's (h2guard.go).
	wire, decoded uint64
	// opened counts the header blocks read whole, within the limit, that
	// opened a stream: the requests the server may start a handler for.
	opened int64
	// units counts the frames begun outside a header block (a header
	// block counts once, with its HEADERS frame): what the connection's
	// read deadline times while one is unfinished (hijackedconn.go).
	units uint64
}

// over reports whether the header list being read is over the limit, as
// x/net's server measures it: its trailer fields and the rest each on a
// budget of max.
func (l *h2HeaderLimit) over() bool {
	return l.size > uint64(l.max) || l.trailers > uint64(l.max)
}

// pending reports whether a frame, or a header block, is unfinished: the
// server holds what it has read of it (a header block's fields, a frame's
// buffer) until the rest comes.
func (l *h2HeaderLimit) pending() bool { return l.inBlock || l.hdrN > 0 }

func newH2HeaderLimit(max uint32) *h2HeaderLimit {
	l := &h2HeaderLimit{max: max}
	l.dec = hpack.NewDecoder(initialHeaderTableSize, func(f hpack.HeaderField) {
		l.decoded += uint64(f.Size())
		l.block.field(f, l.newStream)
		if f.Name == "trailer" {
			// As x/net's server counts it, on a budget of its own: each
			// name the field announces costs 32 bytes, so 33,000 commas
			// (33 KB) weigh 1 MB. Counted as one field, such a list
			// passed here and was refused by goproxy's server itself,
			// with its own 431 and no record.
			n := uint64(strings.Count(f.Value, ",")) + 1
			l.trailers += uint64(len(f.Value)) - n + 1 + n*uint64(hpack.HeaderField{}.Size())
		} else {
			l.size += uint64(f.Size())
		}
		if l.over() {
			// Over already: spare decoding the rest of the piece the
			// strings it would allocate.
			l.dec.SetEmitEnabled(false)
		}
	})
	// A single name or value longer than the list may be is too large, and
	// the decoder never buffers more than about twice that.
	l.dec.SetMaxStringLength(int(max))
	return l
}

// feed takes the next bytes the client sent. It returns errHeadTooLarge
// once a header list is over the limit, an *h2GoAway once a guard refuses
// the client or the frames cannot be followed (unreadable), and from then
// on always the same error.
func (l *h2HeaderLimit) feed(b []byte) error {
	for len(b) > 0 && l.err == nil {
		if l.hdrN < h2FrameHeaderLen {
			if l.hdrN == 0 && !l.inBlock {
				l.units++
			}
			k := copy(l.hdr[l.hdrN:], b)
			l.hdrN += k
			l.wire += uint64(k)
			b = b[k:]
			if l.hdrN == h2FrameHeaderLen {
				l.startFrame()
			}
			continue
		}
		n := min(len(b), l.length-l.off)
		l.payload(b[:n])
		l.wire += uint64(n)
		b = b[n:]
		if l.off == l.length {
			l.endFrame()
		}
	}
	if l.err == nil {
		l.passed = l.lastStream
	}
	return l.err
}

func (l *h2HeaderLimit) fail(err error) {
	if l.err == nil {
		l.err = err
	}
}

// startFrame takes a frame header just read.
func (l *h2HeaderLimit) startFrame() {
	h := &l.hdr
	l.length = int(h[0])<<16 | int(h[1])<<8 | int(h[2])
	l.typ, l.flags = h[3], h[4]
	l.stream = (uint32(h[5])<<24 | uint32(h[6])<<16 | uint32(h[7])<<8 | uint32(h[8])) & (1<<31 - 1)
	l.off, l.pre, l.pad, l.word = 0, 0, 0, 0
	switch {
	case l.length > h2MaxFrameSize: // h2guard.go
		l.fail(frameTooLarge(l.length))
		return
	case l.inBlock && (l.typ != h2TypeContinuation || l.stream != l.blockStream):
		l.fail(unreadable(http2.ErrCodeProtocol, "a header block interrupted by a frame of type %d", l.typ))
		return
	case l.typ == h2TypeContinuation && !l.inBlock:
		l.fail(unreadable(http2.ErrCodeProtocol, "CONTINUATION outside a header block"))
		return
	case l.typ == h2TypeHeaders:
		if l.flags&h2FlagPadded != 0 {
			l.pre++
		}
		if l.flags&h2FlagPriority != 0 {
			l.pre += 5
		}
		if l.length < l.pre {
			l.fail(unreadable(http2.ErrCodeFrameSize, "HEADERS frame of %d bytes", l.length))
			return
		}
		l.inBlock, l.blockStream, l.size, l.trailers = true, l.stream, 0, 0
		l.block.reset()
		l.newStream = l.stream > l.lastStream
		if l.newStream {
			l.checkResets() // those the server made for the client since (h2guard.go)
			if l.err != nil {
				return
			}
			l.lastStream = l.stream
			// Unanswered from its HEADERS frame, not once its block
			// ends: a client that resets with the block unfinished had
			// a request under way (docs/records.md, NoteClientBreak).
			l.openStream() // h2goawaylast.go
			if l.err != nil {
				return
			}
		} else {
			l.streamFrameStart() // a trailer block (h2guard.go)
			if l.err != nil {
				return
			}
		}
	case l.typ == h2TypeData && l.stream != 0:
		l.streamFrameStart() // h2guard.go
		if l.err != nil {
			return
		}
	case l.typ == h2TypeRSTStream && l.stream != 0 && l.length == 4:
		// Of another length it is a connection error to x/net
		// (FRAME_SIZE_ERROR): its GOAWAY, not the client, ends the
		// streams, and is what their records say (h2streamend.go).
		l.clientReset() // h2guard.go
		if l.err != nil {
			return
		}
	}
	if l.length == 0 {
		l.endFrame()
	}
}

// payload takes the next bytes of the frame's payload.
func (l *h2HeaderLimit) payload(b []byte) {
	switch l.typ {
	case h2TypeHeaders:
		for l.off < l.pre && len(b) > 0 {
			if l.off == 0 && l.flags&h2FlagPadded != 0 {
				l.pad = int(b[0])
				if l.pre+l.pad > l.length {
					l.fail(unreadable(http2.ErrCodeProtocol, "HEADERS padding longer than the frame"))
					return
				}
			}
			l.off++
			b = b[1:]
		}
		// The block fragment, then the padding.
		k := min(len(b), max(0, l.length-l.pad-l.off))
		l.decode(b[:k])
		l.off += len(b)
	case h2TypeContinuation:
		l.decode(b)
		l.off += len(b)
	default:
		if l.typ == h2TypeData && l.off == 0 && l.flags&h2FlagPadded != 0 {
			l.pad = int(b[0]) // h2guardbody.go
		}
		if l.typ == h2TypeWindowUpdate || l.typ == h2TypePriority {
			for _, c := range b[:min(len(b), max(0, 4-l.off))] {
				l.word = l.word<<8 | uint32(c)
			}
		}
		l.off += len(b)
	}
}

// decode decodes a piece of the header block.
func (l *h2HeaderLimit) decode(frag []byte) {
	if len(frag) == 0 || l.err != nil {
		return
	}
	_, err := l.dec.Write(frag)
	switch {
	case errors.Is(err, hpack.ErrStringLength) || l.over():
		l.fail(errHeadTooLarge)
	case err != nil:
		l.fail(unreadable(http2.ErrCodeCompression, "a header block that cannot be decoded: %v", err))
	}
}

// endFrame ends the frame just read, and with END_HEADERS its header block.
// A frame of a header block ends with the expansion budget's check
// (h2guard.go): the bytes sent up to its end are the same however reads
// cut them, where the bytes of the read that brought a field were not
// (a read with DATA after the block passed where the same bytes in
// smaller reads were refused), and the server decodes whole frames only.
func (l *h2HeaderLimit) endFrame() {
	l.hdrN = 0
	l.connError() // h2graceful.go
	switch {
	case l.typ == h2TypeWindowUpdate || l.typ == h2TypePriority:
		l.streamFrameEnd() // h2guard.go
	case l.typ == h2TypeData && l.stream != 0 && l.err == nil:
		l.dataEnd() // h2guardbody.go
	}
	block := l.typ == h2TypeHeaders || l.typ == h2TypeContinuation
	if block && l.err == nil && l.decoded > h2ExpansionRatio*l.wire+h2ExpansionSlack {
		l.fail(overExpanded(l.decoded, l.wire))
	}
	if block && l.flags&h2FlagEndHeaders != 0 && l.err == nil {
		l.inBlock = false
		if err := l.dec.Close(); err != nil {
			l.fail(unreadable(http2.ErrCodeCompression, "a header block that cannot be decoded: %v", err))
		} else {
			if l.newStream && !l.ignored {
				l.opened++
			}
			l.blockEnd() // h2guardbody.go
		}
	}
}

// refusal returns what the client gets once its header list was too
// large: a 431 on the block's stream, if the block opened it, and a GOAWAY
// saying no stream after the last one opened was processed. Before the
// server has written anything (the client's first bytes overran the limit
// already) it starts with the server's preface, an empty SETTINGS frame.
// A connection refused by a guard of h2guard.go gets the GOAWAY alone,
// with the guard's code, saying no stream after the last one the server
// was handed was processed.
func (l *h2HeaderLimit) refusal(serverStarted bool) []byte {
	var buf bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	if !serverStarted {
		_ = fr.WriteSettings()
	}
	if g, ok := errors.AsType[*h2GoAway](l.err); ok {
		_ = fr.WriteGoAway(l.unanswered.capLast(l.passed), g.code, []byte("gwlbproxy: "+g.why))
		return buf.Bytes()
	}
	if l.answers431() {
		var block bytes.Buffer
		// Never indexed: the block leaves the client's dynamic table as
		// the server's encoder left it.
		_ = hpack.NewEncoder(&block).WriteField(hpack.HeaderField{Name: ":status", Value: "431", Sensitive: true})
		_ = fr.WriteHeaders(http2.HeadersFrameParam{
			StreamID: l.blockStream, BlockFragment: block.Bytes(), EndHeaders: true, EndStream: true,
		})
	}
	_ = fr.WriteGoAway(l.unanswered.capLast(l.lastStream), http2.ErrCodeEnhanceYourCalm, []byte("gwlbproxy: request header list too large"))
	return buf.Bytes()
}

// answers431 reports whether the refusal has a 431 for the block's stream:
// the header list limit's, of a block that opened its stream, unless the
// stream is past a GOAWAY out (h2goawaylast.go), which x/net ignores. A
// trailer block's stream may be answering already: the GOAWAY alone ends
// it.
func (l *h2HeaderLimit) answers431() bool {
	_, guard := errors.AsType[*h2GoAway](l.err)
	return !guard && l.newStream && l.unanswered.capLast(l.blockStream) == l.blockStream
}
