package proxy

// A server may answer a query with its header alone: the query's ID, QR
// set, an rcode, and no question (RFC 1035 §4.1.1 lets a response carry
// none; RFC 6891 §7 has a server that does not understand a query's EDNS
// answer FORMERR so, and servers answer REFUSED so too). Clients that
// match answers by ID and source (dig, miekg/dns, resolvers that take such
// a FORMERR as the signal to ask again without EDNS) act on it. Read as no
// DNS message, it answered nothing: its query was recorded as a timeout
// when the flow ended, and the flow, no longer a lookup waiting on
// nothing, was held to its idle timeout rather than ending a second after
// the answer.

// bareNote is the error of a query's record whose answer had no question.
const bareNote = "answered without its question"

// truncatedNote is the error of a query's record whose answer was cut to
// fit (TC set): the client may ask again over TCP, and a DNS lookup over
// TCP has only its connection's tcp record, so the name it finally
// resolved would be in no dns record without it.
const truncatedNote = "the answer was truncated (TC): the client may ask again over TCP, which gets no dns record"

// bareResponse reports whether b is a DNS response with no question: a
// whole header, QR set, a question count of 0.
func bareResponse(b []byte) bool {
	return len(b) >= dnsHeaderLen && b[2]&0x80 != 0 && b[4] == 0 && b[5] == 0
}

// takeByIDLocked takes the pending query with ID id, for an answer that
// names nothing else of it. Only when exactly one query waits under that
// ID: of several, the answer could be any one's, and taking one would let
// a client hide a query behind an innocent one by reusing its ID (an
// answer to the innocent one closing the hidden one's record), so none is
// taken, and ambiguous reports it. The walk is over the flow's pending
// queries, at most maxPendingDNS, and only for answers with no question.
// Under d.mu.
func (d *dnsLog) takeByIDLocked(id uint16) (q dnsQuestion, ok, ambiguous bool) {
	var key dnsKey
	found := 0
	for k, v := range d.pending {
		if k.id != id {
			continue
		}
		if found++; found > 1 {
			return dnsQuestion{}, false, true
		}
		key, q = k, v
	}
	if found == 0 {
		return dnsQuestion{}, false, false
	}
	delete(d.pending, key)
	return q, true, false
}
