package proxy

import "fmt"

// Some answers a client may take are not a query's own: one that spells
// the name in another case (dnsfold.go), which glibc takes and a 0x20
// client drops as a forgery, and one with no question (dnsbare.go), which
// glibc, dig and miekg/dns take and Go's resolver and musl drop, waiting
// on for the real one. Such an answer is noted on the query (the first
// that comes), which waits on for its own answer: that one, when it comes,
// is recorded as any answer is, its record noting the one that came first
// (cameFirst), and is the only one handed to the destination check;
// without it, the query is recorded at the flow's end
// as answered by the noted one (`ok`, its rcode and size, and a note
// saying which kind it was). Taking such an answer for the query's own
// let a forgery in another case teach the check, and the real answer
// after it answer nothing; and the query's end let a bare answer make
// the flow quiet and end it a second later, under a Go or musl client
// still waiting for the real answer.
//
// The flow lives as it did before such answers were matched: the query
// still waits, and a noted answer does not move the lookup's last answer
// (lastDNS), so the flow ends at its idle timeout after its last query,
// as for a query that has no answer.

// caseNote is the error of a query's record whose answer spelled its name
// in another case and whose own answer never came.
const caseNote = "answered in another case"

// dnsEarly is the first answer a pending query got that is not its own.
type dnsEarly struct {
	n     int    // such answers seen: the first one is kept, the others are its copies' (or unasked)
	in    int    // its size
	rcode uint16 // its whole rcode (dnsAnswerRCode)
	bare  bool   // it had no question; else it spelled the name in another case
	tc    bool   // it was truncated
}

// note is the error of the record of a query answered by e alone.
func (e *dnsEarly) note() string {
	n := caseNote
	if e.bare {
		n = bareNote
	}
	if e.tc {
		n = joinNotes(n, truncatedNote)
	}
	return n
}

// cameFirst is the error of the record of a query whose own answer came
// after e: the answer a client such as glibc took, if it took the first
// that came, and the trace of a forgery that raced the real answer (a
// 0x20 client's defence, or Go's and musl's, dropped it; glibc's did not).
func (e *dnsEarly) cameFirst() string {
	kind := "in another case"
	if e.bare {
		kind = "without its question"
	}
	return fmt.Sprintf("an answer %s came first (%s, %d bytes)", kind, dnsRCodeName(e.rcode), e.in)
}

// noteEarlyLocked notes on q, kept under k, an answer b of whole rcode
// rcode that is not its own, and reports whether that answered it: the
// first such answer, or one for a copy of it the client sent again. A
// query's copies are answered by at most copies+1 answers, its own among
// them. Under d.mu.
func (d *dnsLog) noteEarlyLocked(k dnsKey, q dnsQuestion, b []byte, rcode uint16, bare bool) bool {
	switch {
	case q.early.n == 0:
		q.early = dnsEarly{n: 1, in: len(b), rcode: rcode, bare: bare, tc: b[2]&0x02 != 0}
	case q.early.n <= q.copies:
		q.early.n++
	default:
		return false
	}
	d.pending[k] = q
	return true
}
