package intercept

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/time/rate"
)

// HTTP/2 resource guards, beside the header list limit (h2limit.go): what a
// client's frames may cost the appliance, and through it the destination,
// that no one header list shows. A client past one gets a GOAWAY and the
// connection closes, as after an oversized header list.

// h2GoAway is a client's HTTP/2 connection refused with a GOAWAY: code
// and what for (the GOAWAY's debug data, and the session's record).
type h2GoAway struct {
	code http2.ErrCode
	why  string
}

func (e *h2GoAway) Error() string { return fmt.Sprintf("HTTP/2 %v: %s", e.code, e.why) }

// The frame size. x/net's server (goproxy's, which cannot be configured)
// advertises SETTINGS_MAX_FRAME_SIZE 1 MiB, and its frame reader keeps a
// buffer as large as the largest frame it has read until the connection
// ends: one 1 MiB frame of any type, even one it ignores, pinned a MiB per
// connection for good, where an HTTP/1 connection keeps 4 KiB. So the
// server's first SETTINGS is rewritten on its way to the client to
// advertise the protocol's default, 16 KiB (what every client sends
// anyway unless told more), and a frame larger than that is refused:
// GOAWAY(FRAME_SIZE_ERROR), RFC 9113 §4.2.
const (
	h2MaxFrameSize      = 16384
	h2TypeSettings      = 0x4
	h2SettingMaxFrameSz = 0x5
	// SETTINGS_MAX_CONCURRENT_STREAMS: goproxy's server advertises 250,
	// rewritten to h2MaxConcurrentStreams (h2wait.go).
	h2SettingMaxStreams = 0x3
)

// advertisedSetting is the value the appliance advertises for the setting
// id patchSettings rewrites.
func advertisedSetting(id uint16) uint32 {
	if id == h2SettingMaxStreams {
		return h2MaxConcurrentStreams
	}
	return h2MaxFrameSize
}

// frameTooLarge is the refusal of a frame of n bytes.
func frameTooLarge(n int) error {
	return &h2GoAway{http2.ErrCodeFrameSize, fmt.Sprintf("a frame of %d bytes, over the %d advertised", n, h2MaxFrameSize)}
}

// patchSettings returns b, the server's next write, with the values of
// SETTINGS_MAX_FRAME_SIZE and SETTINGS_MAX_CONCURRENT_STREAMS in the
// server's first frame (its SETTINGS) replaced by h2MaxFrameSize and
// h2MaxConcurrentStreams: a copy, when it changes anything (once a
// connection). The first frame may be split across writes: its state is
// kept in f.
func (f *h2Frames) patchSettings(b []byte) []byte {
	var out []byte
	for i := 0; i < len(b) && !f.firstDone; i++ {
		p := f.firstOff
		f.firstOff++
		switch {
		case p < 3:
			f.firstLen = f.firstLen<<8 | int(b[i])
		case p == 3:
			f.firstDone = b[i] != h2TypeSettings
		case p < h2FrameHeaderLen:
		default:
			switch q := (p - h2FrameHeaderLen) % 6; {
			case q == 0:
				f.setID = uint16(b[i])
			case q == 1:
				f.setID = f.setID<<8 | uint16(b[i])
			case f.setID == h2SettingMaxFrameSz || f.setID == h2SettingMaxStreams:
				if want := byte(advertisedSetting(f.setID) >> (8 * (5 - q))); b[i] != want {
					if out == nil {
						out = bytes.Clone(b)
					}
					out[i] = want
				}
			}
		}
		if p >= h2FrameHeaderLen-1 && f.firstOff == h2FrameHeaderLen+f.firstLen {
			f.firstDone = true
		}
	}
	if out != nil {
		return out
	}
	return b
}

// recordRefused writes the record of an HTTP/2 connection a guard
// refused, if one did, when the session ends: one http deny record, as
// for an oversized header list, whose error says which guard and why. It
// reports whether it wrote one. The header list limit's refusal, also
// noted in refused (Read), has its own record (tooLarge).
func (rt *roundTripper) recordRefused() bool {
	p := rt.cc.limit.refused.Load()
	if p == nil || *p == errHeadTooLarge {
		return false
	}
	s := rt.s
	rec := *s.Record
	rec.Kind, rec.Scheme, rec.Status, rec.BytesIn, rec.BytesOut = "http", rt.scheme, 0, 0, 0
	rec.Rule, rec.Policy, rec.Method, rec.Host, rec.Path, rec.UserAgent = "", "", "", "", "", ""
	rec.Action, rec.Result, rec.Error = "deny", "denied", "connection refused: "+(*p).Error()
	s.ic.denied.Add(1)
	rec.End(s.Start)
	s.ic.write(&rec)
	return true
}

// HPACK expansion. A header list is bounded (h2limit.go), but not what a
// connection's lists decode to together: a client that puts one 4000-byte
// value in the dynamic table can name it fifteen times in a block of
// twenty bytes, a 64 KB list, again and again. Relayed to an HTTP/1
// destination, each is written out in full: the review's probe had one
// connection's 58 KB of frames become 120 MB at the destination, 2000
// times as much, from the appliance's address. So a connection's lists
// together may decode to h2ExpansionRatio times the bytes the client sent
// (every byte past its preface, DATA and all), plus h2ExpansionSlack, as of
// the end of each frame of a header block, whatever reads brought them;
// past that the client gets GOAWAY(ENHANCE_YOUR_CALM). Real clients compress
// far less: a browser's requests, with a warm table, decode to 5 to 30
// times their size, and even a 4 KB cookie re-sent by index with a new
// 40-byte path is about 100. The slack covers a connection's first
// requests, which index what the later ones name.
const (
	h2ExpansionRatio = 128
	h2ExpansionSlack = 1 << 20
)

// overExpanded is the refusal of a connection whose header lists decoded
// to decoded bytes from wire bytes sent.
func overExpanded(decoded, wire uint64) error {
	return &h2GoAway{http2.ErrCodeEnhanceYourCalm, fmt.Sprintf(
		"header lists decoded to %d bytes from %d bytes sent, more than %d times as many and %d more",
		decoded, wire, h2ExpansionRatio, h2ExpansionSlack)}
}

// Rapid Reset. A client that opens a stream and resets it at once costs
// itself two small frames, and the appliance a handler: a policy
// decision, a record (a deny is recorded before anything else is looked
// at), perhaps an upstream connection dialled and dropped. x/net bounds
// the handlers a connection runs at once, and the resets queued before
// theirs start (CVE-2023-44487), but not the rate of a client that paces
// itself below those: the review's probe had 40,000 pairs in 12 s make
// 39,786 records and no GOAWAY, or 798 upstream dials. So, as nginx,
// Envoy and haproxy do, a connection's premature resets (of a stream the
// server had not answered: no response head, nor a reset of its own) are
// counted, and past h2MaxPrematureResets, once they are more than half the
// streams the client opened that the appliance served, the client gets
// GOAWAY(ENHANCE_YOUR_CALM). Served leaves out the streams the appliance
// answered without serving them, which cost the client nothing it does
// not get back at once: those x/net reset itself (a malformed HEADERS, a
// stream over the concurrency bound; no handler, no record) and those
// the appliance answered itself (a deny, the trust page, a 400 x/net's
// server gives itself, h2reject.go; their records drawn from the
// client's buckets). Counted as opened, one such stream
// beside each reset one kept the resets at exactly half: 10,000 reset
// streams, each with its handler and unbucketed record, and no GOAWAY
// (review r1dos F1). Whatever else keeps the ratio down is a stream
// served upstream, with its own record: resets then at most double what
// the client's requests cost anyway. A browser that navigates away, or a
// client whose requests time out, resets a few of its streams, not most
// of those it was served.
const h2MaxPrematureResets = 100

// A client can also have the server reset its streams for it, sending
// right after a request a frame the stream may not take (a WINDOW_UPDATE
// of 0, DATA after its END_STREAM): x/net resets the stream (PROTOCOL_ERROR,
// STREAM_CLOSED) once its handler has started, and the client sent no
// RST_STREAM of its own ("MadeYouReset", CVE-2025-8671): 2,000 such
// streams made 2,000 records with no GOAWAY (review r5s25 F1). A server
// reset of an unanswered stream for the client's protocol error counts as
// a premature reset of the client's; one that refused the stream
// (REFUSED_STREAM) is not served, and one of the appliance's own
// (INTERNAL_ERROR, CANCEL: a reload's deny, an upstream that failed) is
// neither.
//
// Such a reset is counted when the client's frame that must draw it
// comes in (streamFrameStart, streamFrameEnd), not when x/net's RST_STREAM is written: a
// client that stops reading keeps x/net's writes, the resets among them,
// queued behind a full socket, and x/net closes a stream only once its
// reset is written, so the streams stayed open and unanswered; such a
// client had x/net's 250 handlers per connection, with no GOAWAY and no
// refusal record (review r6s25 F1). The frames read are those x/net
// answers with a stream error whatever the stream's state but idle (a
// WINDOW_UPDATE of 0, a PRIORITY on which the stream depends on itself)
// or on a stream whose client side has ended (DATA, HEADERS after its
// END_STREAM), a trailer block without END_STREAM, and those of
// h2guardbody.go: DATA past the request's content-length, a trailer block
// with a field x/net refuses there (review r4s26 F2). The resets x/net
// makes for DATA over a stream's flow-control window, which the
// appliance cannot tell exactly as the frame comes in (h2guardbody.go),
// are counted as they are written, and checked there
// (checkWrittenResets): checked only at the client's next stream, a
// client that opened none more kept its connection.
// A stream counted so is out of the unanswered ones, so x/net's reset,
// once written, is not counted again. One whose reset x/net had queued
// already (REFUSED_STREAM, one of the appliance's own) counts so too, as
// the client's: the frame was its protocol error all the same.

// clientReset takes the client's RST_STREAM on l.stream.
func (l *h2HeaderLimit) clientReset() {
	if !l.unanswered.reset(l.stream) {
		return
	}
	l.resets++
	l.checkResets()
}

// checkResets refuses the client once its premature resets pass the bound
// (resetsOver).
func (l *h2HeaderLimit) checkResets() {
	if err := l.unanswered.resetsOver(l.opened); err != nil {
		l.fail(err)
	}
}

// resetsOver returns the refusal of a client whose premature resets, its
// own and those it had the server make, pass h2MaxPrematureResets and are
// more than half the streams the appliance served of the opened ones; nil
// if they do not.
func (u *h2Unanswered) resetsOver(opened int64) error {
	caused := u.causedCount()
	resets, unserved := u.ownCount()+caused, u.unservedCount()
	if served := opened - unserved; resets > h2MaxPrematureResets && 2*resets > served {
		return &h2GoAway{http2.ErrCodeEnhanceYourCalm, fmt.Sprintf(
			"%d streams reset before their response (%d by the server, for the client's protocol errors), of %d opened and served (%d more refused or answered by the appliance itself)",
			resets, caused, served, unserved)}
	}
	return nil
}

// checkWrittenResets runs the check where the server's reset just written
// was counted, on x/net's writer (h.mu held): past the bound, the refusal
// is recorded as the reader's is, and its GOAWAY goes at the next frame
// boundary (write), which the writer alone may write at. The reader is
// woken to linger rather than hand the server more (lingerRefused).
func (c *hijackedConn) checkWrittenResets() {
	f := &c.frames
	if f.final != nil || f.sealed || c.limit.unanswered.ends.serverErrGoAway() {
		return // a GOAWAY for an error is out, or on its way (h2refused.go)
	}
	err := c.limit.unanswered.resetsOver(c.limit.streams.Load())
	if err == nil || !c.limit.refused.CompareAndSwap(nil, &err) {
		return // within the bound, or the reader refused the client first
	}
	g := err.(*h2GoAway)
	// writerRefused first, then the last stream, read once: a read of the
	// reader's whose bytes (counted, their streams published in
	// idle.last, their resets noted) go on to x/net finds writerRefused
	// unset after its count (Read), so its streams are within last and
	// its resets noted before the refusal; one that finds it set is
	// dropped. Stored after, a refusal that landed while the reader
	// counted had x/net serve streams past its GOAWAY's last one, and
	// process resets the notes missed (review rev32b F1).
	c.limit.unanswered.writerRefused.Store(1)
	last := c.limit.unanswered.capLast(c.limit.idle.last.Load()) // h2goawaylast.go
	var buf bytes.Buffer
	_ = http2.NewFramer(&buf, nil).WriteGoAway(last, g.code, []byte("gwlbproxy: "+g.why))
	f.final = buf.Bytes()
	c.limit.unanswered.refused(last, g) // for the records: h2refused.go
	_ = c.Conn.SetReadDeadline(time.Now())
}

// lingerRefused is the reader's part of the writer's refusal
// (checkWrittenResets): what the client sends is read and dropped, as
// after the reader's own refusal (refuseH2), until it has been quiet for
// h2LingerQuiet, at most h2Linger; the server gets the refusal's error.
// b is a buffer to read into.
func (c *hijackedConn) lingerRefused(b []byte) error {
	if c.limit.unanswered.writerRefused.CompareAndSwap(1, 2) {
		c.linger(b) // h2refused.go
	}
	return *c.limit.refused.Load()
}

// Frame types and flags the reset count reads besides h2limit.go's.
const (
	h2TypeData         = 0x0
	h2TypePriority     = 0x2
	h2TypeWindowUpdate = 0x8
	h2FlagEndStream    = 0x1
)

// streamFrameStart takes the header of a frame on a stream the client
// opened already (l.stream, not new): DATA, or the HEADERS of a trailer
// block. x/net resets the stream (STREAM_CLOSED) if the client had ended
// it, and a trailer block without END_STREAM (PROTOCOL_ERROR); what the
// frame brings is read at its end (h2guardbody.go).
func (l *h2HeaderLimit) streamFrameStart() {
	end := l.flags&h2FlagEndStream != 0
	if l.unanswered.clientFrame(l.stream, end, l.typ == h2TypeHeaders && !end) {
		l.checkResets()
	}
}

// streamFrameEnd takes the end of a frame the reset count reads the
// payload of, its first four bytes in l.word: a WINDOW_UPDATE of 0 on a
// stream, and a PRIORITY on which the stream depends on itself, each a
// stream error of PROTOCOL_ERROR to x/net in any state of the stream but
// idle (which is a connection error), so a reset of it if it is
// unanswered. A frame of another length is a connection error.
func (l *h2HeaderLimit) streamFrameEnd() {
	if l.stream == 0 || l.err != nil {
		return
	}
	w := l.word & (1<<31 - 1)
	switch {
	case l.typ == h2TypeWindowUpdate && l.length == 4 && w == 0,
		l.typ == h2TypePriority && l.length == 5 && w == l.stream:
		l.unanswered.noteServerReset(l.stream, http2.ErrCodeProtocol) // answered or not: h2streamend.go
		if l.unanswered.provoked(l.stream) {
			l.checkResets()
		}
	}
}

// h2Unanswered is the streams a client opened that the server has not
// answered: the reader adds each new stream before the server sees it,
// the writer takes out those it writes a response head (HEADERS) or a
// reset for, and a client's reset those it finds here, as does a frame
// of the client's that must draw the server's reset. What it holds is
// bounded: by the streams the server keeps open, none past its GOAWAY's
// last stream, and h2MaxUnanswered at most (h2goawaylast.go). Its zero
// value is ready; a nil one holds nothing.
type h2Unanswered struct {
	mu sync.Mutex
	// m holds, for each stream, whether the client ended its side
	// (END_STREAM), and its body so far (h2guardbody.go).
	m map[uint32]h2Stream
	// n is len(m), for waiting: the client watch asks on the packet
	// stack's path, where no lock is taken.
	n atomic.Int64
	// unserved counts the streams the appliance did not serve: refused by
	// the server before any answer, or answered by the appliance itself;
	// caused those the server reset for the client's protocol error, own
	// those the client reset (resetsOver).
	unserved, caused, own atomic.Int64
	// writerRefused is 1 once the writer refused the client
	// (checkWrittenResets), 2 once the reader has lingered for it.
	writerRefused atomic.Int32
	// ends is what ended each stream, for its record (h2streamend.go).
	ends h2StreamNotes
	// last is the last stream id of the server's GOAWAY, once one is
	// written (goneAway): x/net ignores the streams past it.
	last     uint32
	goneAway bool
}

func (u *h2Unanswered) answered(id uint32) {
	if u == nil {
		return
	}
	u.mu.Lock()
	delete(u.m, id)
	u.n.Store(int64(len(u.m)))
	u.mu.Unlock()
	u.ends.answered(id) // h2reject.go
}

// clientFrame takes the client's DATA or trailer HEADERS on id, ending its
// side if end: if id is unanswered and its side had ended, or bad is set,
// the frame draws x/net's reset (streamFrameStart), which it counts and
// reports.
func (u *h2Unanswered) clientFrame(id uint32, end, bad bool) bool {
	if u == nil {
		return false
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	s, ok := u.m[id]
	switch {
	case !ok:
		return false
	case s.ended || bad:
		u.takeLocked(id)
		u.caused.Add(1)
		code := http2.ErrCodeProtocol // a trailer block without END_STREAM
		if s.ended {
			code = http2.ErrCodeStreamClosed
		}
		u.ends.server(id, code, false)
		return true
	case end:
		s.ended = true
		u.m[id] = s
	}
	return false
}

// provoked counts a reset the client's frame on id must draw from the
// server, if id is unanswered, and reports whether it was.
func (u *h2Unanswered) provoked(id uint32) bool {
	if u == nil {
		return false
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if _, ok := u.m[id]; !ok {
		return false
	}
	u.takeLocked(id)
	u.caused.Add(1)
	return true
}

func (u *h2Unanswered) takeLocked(id uint32) {
	delete(u.m, id)
	u.n.Store(int64(len(u.m)))
}

// serverReset takes id out, reset by the server with code, if it had not
// answered it yet: refused (not served), reset for the client's protocol
// error (a premature reset the client caused), or the appliance's own.
// It reports whether it counted a reset the client caused. A stream whose
// reset was counted as the client's frame came in is no longer here.
func (u *h2Unanswered) serverReset(id uint32, code http2.ErrCode) (caused bool) {
	if u == nil {
		return false
	}
	u.ends.server(id, code, true) // answered or not
	u.mu.Lock()
	if _, ok := u.m[id]; ok {
		u.takeLocked(id)
		switch code {
		case http2.ErrCodeRefusedStream:
			u.unserved.Add(1)
		case http2.ErrCodeProtocol, http2.ErrCodeFlowControl, http2.ErrCodeStreamClosed, http2.ErrCodeFrameSize:
			u.caused.Add(1)
			caused = true
		}
	}
	u.mu.Unlock()
	return caused
}

func (u *h2Unanswered) causedCount() int64 {
	if u == nil {
		return 0
	}
	return u.caused.Load()
}

func (u *h2Unanswered) ownCount() int64 {
	if u == nil {
		return 0
	}
	return u.own.Load()
}

// answeredLocally counts a stream the appliance answered itself, with no
// upstream request: a deny, or the trust page.
func (u *h2Unanswered) answeredLocally() {
	if u != nil {
		u.unserved.Add(1)
	}
}

func (u *h2Unanswered) unservedCount() int64 {
	if u == nil {
		return 0
	}
	return u.unserved.Load()
}

// reset takes id out, and reports whether it was unanswered.
func (u *h2Unanswered) reset(id uint32) bool {
	if u == nil {
		return false
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	_, ok := u.m[id]
	u.takeLocked(id)
	if ok {
		u.own.Add(1)
	}
	u.ends.client(id) // answered or not
	return ok
}

// waiting reports whether a stream the client opened has no answer yet:
// neither a response head nor a reset, the server's or its own.
func (u *h2Unanswered) waiting() bool { return u != nil && u.n.Load() > 0 }

// Upstream dials. maxUpstreamConns bounds how many upstream connections an
// HTTP/2 client's streams hold at once, not how often they are made: a
// round trip the client cancels (a reset stream) closes its HTTP/1
// connection, and the next stream dials again. The review's probe had one
// client connection make 80 dials a second that way, each leaving a
// TIME_WAIT on the appliance towards a destination other clients share.
// The premature reset limit ends such a connection; meanwhile, and for
// whatever else makes an HTTP/2 session's connections churn, its dials
// are paced: upstreamDialBurst at once, upstreamDialRate a second after
// that. A destination that keeps its connections alive needs
// maxUpstreamConns dials for good; one that closes each after its
// response still serves 16 requests a second to one client connection. A
// dial waiting for its turn is not given up when the stream that wanted it
// is: net/http dials under a context of its own, so the dial is made in
// its turn and its connection pooled (the pace still bounds how many). An
// HTTP/1 client's
// session is not paced: its requests come one after another, and it can
// cancel one only by closing its connection.
const (
	upstreamDialBurst = 2 * maxUpstreamConns
	upstreamDialRate  = 2 * maxUpstreamConns // a second
)

// dialPace returns the pace of the session's upstream dials: nil, no
// pace, for an HTTP/1 client.
func (s *session) dialPace() *dialPace {
	if !s.h2 {
		return nil
	}
	return &dialPace{lim: rate.NewLimiter(upstreamDialRate, upstreamDialBurst)}
}

type dialPace struct{ lim *rate.Limiter }

// wait waits for the next dial's turn, or for ctx.
func (p *dialPace) wait(ctx context.Context) error {
	if p == nil {
		return nil
	}
	if err := p.lim.Wait(ctx); err != nil {
		return fmt.Errorf("waiting for its turn to dial (at most %d a second): %w", upstreamDialRate, err)
	}
	return nil
}
