package intercept

import (
	"fmt"

	"golang.org/x/net/http2"
)

// Streams past the server's GOAWAY.
//
// x/net's server ignores every frame of a stream past its GOAWAY's last
// stream id, once it has one out (its answer to the client's own GOAWAY,
// graceful, or its GOAWAY for a connection error): no handler, no
// RST_STREAM, nothing written. The reader took each such HEADERS for a
// new stream (h2Unanswered, h2StreamNotes), and nothing took it out again,
// for the writer takes a stream out only at its answer: a client that
// kept one request under way after its GOAWAY (holding the connection
// open) and sent HEADERS of 13 bytes each for new ids grew the table
// without bound, about 7 times what it sent (26 MB made 192 MiB), unseen
// by the memory reclaim, and past h2MaxEndNotes of them the note of the
// request under way was dropped, its record saying the client went away
// (review rev31b F1). So the writer reads the GOAWAY's last stream id
// (h2Frames), the streams past it the reader took in before it went out
// are dropped as it does (unserved: x/net served none), and the reader
// takes in none past it after.
//
// As a backstop, whatever x/net does, the table is bounded: a client with
// h2MaxUnanswered streams unanswered that opens one more is refused,
// GOAWAY(ENHANCE_YOUR_CALM). One that keeps to the concurrency advertised
// has at most h2MaxConcurrentStreams (x/net refuses a stream over its own
// bound of 250 with a reset, which answers it).

// h2MaxUnanswered bounds the streams a connection has unanswered at once:
// below the bound on its stream notes (h2notesbound.go), which hold those
// streams' and the answered ones' still under way.
const h2MaxUnanswered = 4 * h2MaxConcurrentStreams

// openStream takes the HEADERS frame that opens l.stream: unanswered from
// then, unless x/net ignores it (ignored: it is past the server's GOAWAY,
// and not counted as opened, for no handler will take it up); or the
// client is refused, over h2MaxUnanswered.
func (l *h2HeaderLimit) openStream() {
	ok, err := l.unanswered.open(l.stream, l.flags&h2FlagEndStream != 0)
	l.ignored = !ok
	if err != nil {
		l.fail(err)
	}
}

// open adds stream id, and its note, unless the server's GOAWAY is out
// with a last stream before id (false, nil), or h2MaxUnanswered are
// unanswered already (false, the refusal). The note is added under u.mu,
// so that serverGoAway, which drops both past its last stream under it,
// finds either both or neither.
func (u *h2Unanswered) open(id uint32, ended bool) (bool, error) {
	if u == nil {
		return true, nil
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.goneAway && id > u.last {
		return false, nil
	}
	if len(u.m) >= h2MaxUnanswered {
		return false, &h2GoAway{http2.ErrCodeEnhanceYourCalm, fmt.Sprintf(
			"more than %d streams opened and not answered at once", h2MaxUnanswered)}
	}
	if u.m == nil {
		u.m = make(map[uint32]h2Stream)
	}
	u.m[id] = h2Stream{ended: ended, declared: -1}
	u.n.Store(int64(len(u.m)))
	u.ends.open(id)
	return true, nil
}

// serverGoAway notes the server's GOAWAY with last and code, just
// written: the streams past last, which x/net ignores, are dropped, and
// none is taken in after. u may be nil.
func (u *h2Unanswered) serverGoAway(last uint32, code http2.ErrCode) {
	if u == nil {
		return
	}
	u.goAwayLast(last)
	u.ends.serverGoAway(code)
}

// capLast returns last, the last stream id of a GOAWAY the appliance is
// to write, or a GOAWAY's out before it, if lower. x/net's GOAWAY after
// the client's own (graceful) names the last stream it processed, and
// ignores the streams the client opens after; a refusal after it named
// them in its own GOAWAY's last stream, higher than the first's, which
// RFC 9113 §6.8 forbids, and answered one of them 431 (review rev33f F2).
// The appliance's own refusal, noted as it is decided (h2refused.go), is
// among them, naming the same last stream or a lower one.
func (u *h2Unanswered) capLast(last uint32) uint32 {
	if u == nil {
		return last
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.goneAway {
		return min(last, u.last)
	}
	return last
}

// goAwayLast takes last, the last stream id of a GOAWAY of the server's
// or the appliance's: the streams past it are dropped, and none is taken
// in after.
func (u *h2Unanswered) goAwayLast(last uint32) {
	u.mu.Lock()
	if !u.goneAway || last < u.last {
		u.goneAway, u.last = true, last
	}
	var dropped int64
	for id := range u.m {
		if id > u.last {
			delete(u.m, id)
			dropped++
		}
	}
	if dropped > 0 {
		u.n.Store(int64(len(u.m)))
		u.unserved.Add(dropped)
	}
	u.ends.dropAbove(u.last)
	u.mu.Unlock()
}

// dropAbove drops the notes of the streams past last: no request of
// x/net's takes them up.
func (n *h2StreamNotes) dropAbove(last uint32) {
	n.mu.Lock()
	for id := range n.m {
		if id > last {
			delete(n.m, id)
		}
	}
	n.mu.Unlock()
}
