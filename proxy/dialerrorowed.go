package proxy

import (
	"fmt"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// A failed dial from the client's bucket (dialErrorRate) may have
// delivered data: a UDP flow's opening datagrams, up to 512 bytes
// (dialErrorBucketBytes), reach the destination's host even when its port
// is closed. A client that emptied its bucket (SYNs to one host cost it
// a packet each) could then send datagrams to another host that no record
// named, nor counted: the note of the next recorded failed dial said only
// how many went unrecorded, and a client that stopped had its count
// dropped when its bucket refilled (review rev32c F1). So the bucket
// counts the bytes of the failed dials it leaves unrecorded, and where
// they went (dialerrordests.go: every host that got more than a fifth of
// them is named); the note says both. And the client's last
// failed dial the bucket had no room for is held, its record written as
// soon as the bucket has a token again (within 1/dialErrorRecordRate, a
// timer per client holding one), with the note of those before it: the
// owed note is written whether or not the client makes another failed
// dial, at the bucket's own rate. A dial is counted unrecorded (in
// dial_errors_unrecorded and dial_errors_unrecorded_bytes) when it is
// known to go without a record of its own: a later one of the client's
// took its place as the one held, or was recorded with the note of it.

// dialOwed is what a client's failed dials not recorded one by one came
// to since its last one recorded.
type dialOwed struct {
	n     int
	dests owedDests // their bytes, and where they went
}

func (o *dialOwed) note() string {
	return fmt.Sprintf("%d more failed dials from this client before this one, not recorded one by one: %s", o.n, &o.dests)
}

// finishDialError writes the record of a flow of client k whose dial
// failed at the cost of one packet of the client's (see dialErrorRate),
// from the client's bucket of such records, with the note of those of its
// dials the bucket had no room for. One the bucket has no room for now is
// held, to be written when it has (flushDialOwed), unless a later one
// takes its place first.
func (p *Proxy) finishDialError(r *records.Record, start time.Time, k shareKey) {
	// Now, not start: a dial may have waited for its timeout. A record
	// held keeps the time its flow ended.
	r.End(start)
	l := &p.denies.dialErrors
	l.mu.Lock()
	b := l.bucket(k, r.Time, dialErrorRate)
	if b.tokens >= 1 || l.unheld && b != &l.overflow {
		b.tokens = max(b.tokens-1, 0)
		owed := p.takeOwed(b, b == &l.overflow)
		l.mu.Unlock()
		if owed.n > 0 {
			r.Error = joinNotes(r.Error, owed.note())
		}
		p.cfg.Records.Write(r)
		return
	}
	if b == &l.overflow {
		// Other clients' too: counted only, said by no client's note.
		l.mu.Unlock()
		p.countDialUnrecorded(r)
		return
	}
	if b.held != nil {
		p.skipHeld(b)
	}
	held := *r
	b.held = &held
	if !b.flushing {
		b.flushing = true
		time.AfterFunc(untilToken(b, dialErrorRate), func() { p.flushDialOwed(b) })
	}
	l.mu.Unlock()
}

// takeOwed returns b's note of the dials it left unrecorded, b's held one
// among them (its place taken by the record being written), and starts
// b's count afresh. l.mu is held. The overflow bucket's are other
// clients': counted, not noted.
func (p *Proxy) takeOwed(b *denyBucket, overflow bool) dialOwed {
	if b.held != nil {
		p.skipHeld(b)
	}
	owed := dialOwed{n: b.skipped}
	if b.owed != nil {
		owed.dests = *b.owed
		b.owed.reset()
	}
	b.skipped = 0
	if overflow {
		return dialOwed{}
	}
	return owed
}

// skipHeld counts b's held dial as unrecorded, in b's note and the
// counters. l.mu is held.
func (p *Proxy) skipHeld(b *denyBucket) {
	h := b.held
	b.held = nil
	b.skipped++
	if b.owed == nil {
		b.owed = new(owedDests)
	}
	b.owed.add(h.DestIP, h.DestPort, h.BytesOut)
	p.countDialUnrecorded(h)
}

func (p *Proxy) countDialUnrecorded(r *records.Record) {
	p.stats.dialErrorsUnrecorded.Add(1)
	p.stats.dialErrorsUnrecordedBytes.Add(uint64(max(r.BytesOut, 0)))
}

// untilToken is how long b takes to earn its next token once refilled to
// now (at least a millisecond). l.mu is held.
func untilToken(b *denyBucket, r recordRate) time.Duration {
	return max(time.Duration((1-b.tokens)/r.perSecond*float64(time.Second)), time.Millisecond)
}

// flushDialOwed writes b's held record, with the note of those before it,
// once b has a token for it: the timer finishDialError set. A record
// written meanwhile (a failed dial of the client's that found a token)
// took the held one into its note; a token taken meanwhile has the timer
// set again.
func (p *Proxy) flushDialOwed(b *denyBucket) {
	l := &p.denies.dialErrors
	l.mu.Lock()
	b.flushing = false
	if b.held == nil {
		l.mu.Unlock()
		return
	}
	now := time.Now()
	b.refill(now, dialErrorRate)
	if b.tokens < 1 {
		b.flushing = true
		time.AfterFunc(untilToken(b, dialErrorRate), func() { p.flushDialOwed(b) })
		l.mu.Unlock()
		return
	}
	b.tokens--
	r := b.held
	b.held = nil
	owed := p.takeOwed(b, false)
	l.mu.Unlock()
	if owed.n > 0 {
		r.Error = joinNotes(r.Error, owed.note())
	}
	p.cfg.Records.Write(r)
}

// flushDialOwedAll writes every client's held failed-dial record at once,
// with the note of those before it, whatever its bucket holds, and has
// the failed dials still to come recorded without being held. It runs as
// the proxy closes, after the stacks: no client sends any more, so the
// records still to come are those of flows that were open, and a held
// record would be lost with the process before its timer.
func (p *Proxy) flushDialOwedAll() {
	l := &p.denies.dialErrors
	l.mu.Lock()
	l.unheld = true
	var out []*records.Record
	for _, b := range l.m {
		r := b.held
		if r == nil {
			continue
		}
		b.held = nil
		if owed := p.takeOwed(b, false); owed.n > 0 {
			r.Error = joinNotes(r.Error, owed.note())
		}
		out = append(out, r)
	}
	l.mu.Unlock()
	for _, r := range out {
		p.cfg.Records.Write(r)
	}
}
