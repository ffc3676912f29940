package intercept

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/net/http2"
)

// The appliance's refusal of an HTTP/2 client, in the records of what it
// ended.
//
// A guard (h2guard.go, h2goawaylast.go, the frame size) or the header list
// limit (h2limit.go: a list too large, or frames it cannot follow, which
// closed the connection with no GOAWAY at all and were recorded as the
// client's going away, review rev33a F3) that refuses a client writes the
// appliance's own GOAWAY, past x/net's writer (refuseH2, or the writer's
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
// A client's reset noted before the refusal stays the client's, and one
// after it ends nothing: the stream ends with the refusal. The order is
// the client's, as the reader reads its frames: the reader's refusal is
// of a frame that broke a bound, and the reader notes no frame after it
// (feed stops there, and later reads linger), while a reset before it,
// even in the same read, came first on the wire, as with the server's
// GOAWAY for a connection error, which x/net sends having processed the
// client's frames in their order (records.md). x/net never gets the read
// that broke the bound, so it never processes such a reset, which was
// weighed as at the server's GOAWAY (clientBeforeGoAwayLocked) and so
// recorded as the refusal: which side ended the connection, and where the
// appliance's 4 KiB reads cut the client's bytes, decided whether a
// client that abandoned its request first was recorded so (review rev32b
// F3). The writer's refusal comes while x/net may still be processing
// frames it was handed, which it goes on processing: the client's resets
// in them, noted before, are the client's. No read after it reaches x/net,
// not even one the reader was counting as it came: its GOAWAY's last
// stream is read once, after the refusal is set, and Read looks again
// after its count (checkWrittenResets); a reset in such a read, noted
// before the refusal, came before it all the same.

// refused notes the appliance's refusal g of the client, whose GOAWAY
// names last as the last stream. u may be nil.
func (u *h2Unanswered) refused(last uint32, g *h2GoAway) {
	if u == nil {
		return
	}
	u.goAwayLast(last) // h2goawaylast.go
	n := &u.ends
	n.mu.Lock()
	n.goneAwayLocked(g.code, g) // h2streamend.go
	n.mu.Unlock()
}

// noteRefused notes the reader's refusal of the client for err, an
// *h2GoAway (a guard's, or unreadable frames') or errHeadTooLarge, as refuseH2 is to write it:
// the GOAWAY refusal (h2limit.go) writes, with its last stream.
func (l *headLimit) noteRefused(err error) {
	h := l.h2
	if g, ok := errors.AsType[*h2GoAway](err); ok {
		l.unanswered.refused(h.passed, g)
		return
	}
	g := &h2GoAway{http2.ErrCodeEnhanceYourCalm, headerListTooLarge(h.max)}
	l.unanswered.refused(h.lastStream, g)
	n := l.unanswered.notes()
	n.mu.Lock()
	n.listRefused = n.refusal == g && h.answers431()
	n.mu.Unlock()
}

// without431 notes that the header list limit's refusal went out with no
// 431 (its stream past a GOAWAY of the server's written since noteRefused).
func (n *h2StreamNotes) without431() {
	n.mu.Lock()
	n.listRefused = false
	n.mu.Unlock()
}

// headerListTooLarge says the header list limit's refusal, with the limit
// it holds lists to, as HTTP/2 measures them: max, --max-header-bytes with
// room for ten fields' overhead (h2MaxHeaderList), not --max-header-bytes,
// which the words named, 320 bytes short of a list that passes; each field
// charged 32 beside its name and value, as an HTTP/1 head's lines are
// charged beside their bytes (headTooLarge, said the same way).
func headerListTooLarge(max uint32) string {
	return fmt.Sprintf("request header list larger than %d bytes (its names and values and 32 a field)", max)
}

// The tls record of a connection refused for an oversized header list.
// Its stream has its answer, a 431, and the connection ends, as an HTTP/1
// connection ends after its 431, whose tls record stays as it was: the
// deny record says the refusal. The refusal's, `error`, said so whatever
// was under way, so a browser with a large cookie had its connection
// counted among the errors over HTTP/2 and not over HTTP/1.1 (review
// rev32b F4). So it says the refusal only when a request under way was
// ended by it (refusalCut); a guard's refusal, the client's abuse, always
// does. So does the refusal of an oversized trailer block, which has no
// 431 (its stream may be answering already: h2HeaderLimit.refusal), the
// GOAWAY alone, as a guard's; its deny record said `status: 431` of an
// answer nobody was sent (review rev33a F5), and now says the refusal
// as a guard's does (listRefusedWithout431).

// listRefusedWithout431 is the deny record's error for the header list
// limit's refusal, saying why, when it sent no 431: a guard's words
// (recordRefused), with no status.
func listRefusedWithout431(why string) string {
	return "connection refused: " + (&h2GoAway{http2.ErrCodeEnhanceYourCalm, why}).Error()
}

// goAwayCut is goAwayError for the record of a request under way that the
// GOAWAY ended, noted for the tls record (listRefusalAlone).
func (n *h2StreamNotes) goAwayCut(code http2.ErrCode) string {
	n.mu.Lock()
	n.refusalCut = true
	n.mu.Unlock()
	return n.goAwayError(code)
}

// listRefusalAlone reports whether the connection ended with the header
// list limit's refusal and no request under way was ended by it. Every
// request's record is written before the tls record.
func (n *h2StreamNotes) listRefusalAlone() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.listRefused && !n.refusalCut
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

// refuseH2 writes an HTTP/2 client its refusal while reading on, and
// discarding, what it sends. An HTTP/2 client may be unable to read until
// it has written: x/net's, for one, acknowledges the server's SETTINGS
// under the lock its request's writer holds, and that writer waits for us
// to read the rest of an oversized header block. Once the refusal is out
// the reading lingers until the client has been quiet for h2LingerQuiet
// (at most h2Linger): closing with its bytes unread would reset the
// connection, and a reset can discard the refusal before the client reads
// it. The refusal's write deadline (write431) bounds the first part. b is
// a buffer to read into.
func (c *hijackedConn) refuseH2(b []byte) {
	if len(b) == 0 {
		b = make([]byte, 4096)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.write431()
		_ = c.Conn.SetReadDeadline(time.Now().Add(h2LingerQuiet)) // wakes a read that waits
	}()
	var end time.Time
	for {
		select {
		case <-done:
			now := time.Now()
			if end.IsZero() {
				end = now.Add(h2Linger)
			}
			dl := now.Add(h2LingerQuiet)
			if dl.After(end) {
				dl = end
			}
			_ = c.Conn.SetReadDeadline(dl)
		default:
		}
		n, err := c.Conn.Read(b)
		c.in.Add(int64(n))
		if err != nil {
			break
		}
	}
	<-done
}

// linger reads what the client still sends and drops it, until it has
// been quiet for h2LingerQuiet, at most h2Linger from now: the GOAWAY out
// (the writer's refusal, or the server's own) is not lost to the reset a
// close with its bytes unread would send. b is a buffer to read into.
func (c *hijackedConn) linger(b []byte) {
	if len(b) == 0 {
		b = make([]byte, 4096)
	}
	end := time.Now().Add(h2Linger)
	for {
		dl := time.Now().Add(h2LingerQuiet)
		if dl.After(end) {
			dl = end
		}
		_ = c.Conn.SetReadDeadline(dl)
		n, err := c.Conn.Read(b)
		c.in.Add(int64(n))
		if err != nil {
			return
		}
	}
}

// After the server's own GOAWAY.
//
// x/net's server sends a GOAWAY of its own for a connection error its
// framer does not catch (a SETTINGS value out of range, say), and its
// reader reads on; it processes no frame after, and closes the connection
// a second later. A frame the reader refused in that second (a guard's,
// the header list limit's, or frames it cannot read) had the appliance
// send a second GOAWAY, and a deny record say the appliance refused a
// connection whose tls record and requests' records say the server's
// GOAWAY ended it; for an oversized list, a 431 answered a stream x/net
// ignored, past the server's GOAWAY's last stream, the second GOAWAY named
// that stream as its last, higher than the first's (RFC 9113 §6.8), and
// the deny record counted a refused request that could never have been
// served (review rev33f F1). So once the server's GOAWAY for an error is
// noted, neither the reader nor the writer (checkWrittenResets) refuses
// the client: nothing is written or recorded, and the reader lingers, as
// after the writer's refusal, x/net getting the refused frame's error.
// One the server writes after the refusal was decided, before the
// refusal's GOAWAY goes out, caps that GOAWAY's last stream (capLast,
// h2goawaylast.go): the client gets a second GOAWAY, the refusal the
// records say, naming no stream past the first's.

// serverErrGoAway reports whether the first GOAWAY for a connection error
// noted is the server's own, not the appliance's refusal (h2streamend.go).
func (n *h2StreamNotes) serverErrGoAway() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.goneAway && n.refusal == nil
}

// How long an HTTP/2 connection refused for an oversized header list goes
// on reading what its client still sends: until the client has been quiet
// for h2LingerQuiet, at most h2Linger after the refusal was written.
const (
	h2LingerQuiet = 200 * time.Millisecond
	h2Linger      = 2 * time.Second
)
