package intercept

import (
	"errors"
	"fmt"

	"golang.org/x/net/http2"
)

// The appliance's refusal of an HTTP/2 client, in the records of what it
// ended.
//
// A guard (h2guard.go, h2goawaylast.go, the frame size) or the header list
// limit (h2limit.go) that refuses a client writes the appliance's own
// GOAWAY, past x/net's writer (refuseH2, or the writer's
// checkWrittenResets), and the connection closes: x/net's read fails, and
// it cancels every stream. That GOAWAY never reached the stream notes,
// which see the server's as h2Frames.advance reads its writes: a request
// under way that had reached the destination was recorded `reset`, "the
// client went away before the response came (context canceled)", and the
// bumped connection's tls record `ok`, of a client that reset nothing and
// was refused (review rev32a F2). So the refusal is noted as the server's
// GOAWAY for a connection error is, as the refusal is decided, before
// x/net can learn of it from the read that fails or the write the seal
// refuses: the streams past its last one are dropped, a reset the reader
// foresaw and x/net never wrote ends nothing (endedLocked: the seal
// drops what x/net writes after the GOAWAY), and the requests under way,
// and the tls record, say the refusal, `error`.
//
// The reader's refusal is of the read that broke the bound: x/net never
// gets that read, nor anything after, as after the frame it answers with
// its own GOAWAY; a client's reset in it is weighed as at that GOAWAY
// (clientBeforeGoAwayLocked). Every frame before it x/net had processed
// (its reader waits for each frame to be processed before it reads the
// next). The writer's refusal comes while x/net may still be processing
// frames it was handed, which it goes on processing: the client's resets
// in them are the client's, and are not weighed. No read after it reaches
// x/net, not even one the reader was counting as it came: its GOAWAY's
// last stream is read once, after the refusal is set, and Read looks
// again after its count (checkWrittenResets).

// refused notes the appliance's refusal g of the client, whose GOAWAY
// names last as the last stream; weigh as for goneAwayLocked. u may be
// nil.
func (u *h2Unanswered) refused(last uint32, g *h2GoAway, weigh bool) {
	if u == nil {
		return
	}
	u.goAwayLast(last) // h2goawaylast.go
	n := &u.ends
	n.mu.Lock()
	n.goneAwayLocked(g.code, g, weigh) // h2streamend.go
	n.mu.Unlock()
}

// noteRefused notes the reader's refusal of the client for err, an
// *h2GoAway of a guard or errHeadTooLarge, as refuseH2 is to write it:
// the GOAWAY refusal (h2limit.go) writes, with its last stream.
func (l *headLimit) noteRefused(err error) {
	h := l.h2
	if g, ok := errors.AsType[*h2GoAway](err); ok {
		l.unanswered.refused(h.passed, g, true)
		return
	}
	l.unanswered.refused(h.lastStream, &h2GoAway{http2.ErrCodeEnhanceYourCalm,
		fmt.Sprintf("request header list larger than %d bytes", l.max)}, true)
}

// goAwayError says the first GOAWAY for a connection error noted, whose
// code is code, for the records: the appliance's refusal, or the
// server's GOAWAY.
func (n *h2StreamNotes) goAwayError(code http2.ErrCode) string {
	n.mu.Lock()
	g := n.refusal
	n.mu.Unlock()
	if g != nil {
		return fmt.Sprintf("the appliance refused the connection (GOAWAY %v: %s)", g.code, g.why)
	}
	return serverGoAwayError(code)
}
