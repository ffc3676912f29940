package proxy

// A server may answer a query with its header alone: the query's ID, QR
// set, an rcode, and no question (RFC 1035 §4.1.1 lets a response carry
// none; RFC 6891 §7 has a server that does not understand a query's EDNS
// answer FORMERR so, and servers answer REFUSED so too). Clients that
// match answers by ID and source (glibc, dig, miekg/dns, resolvers that
// take such a FORMERR as the signal to ask again without EDNS) act on it;
// Go's resolver and musl drop it and wait for an answer that repeats
// their question. Read as no DNS message, it answered nothing: its query
// was recorded as a timeout when the flow ended, though a glibc client
// took it. It is noted on the one query waiting under its ID, which waits
// on for its own answer (dnsearly.go): ended by the bare answer, the flow
// was quiet and ended a second later, cutting off a Go or musl client
// still waiting for the real one.
//
// Only a response with no question, no answer and no authority records
// is read so: its header alone, or with additional records (an OPT, whose
// extended rcode counts). One that carries answers or authorities but no
// question is no server's FORMERR or REFUSED, and clients that match by
// question drop it; taken for an answer by its ID alone, its records (an A
// record, say, which the destination check never reads in a message with
// no question) would have closed the query's record as answered. It
// counts as answering no waiting query, which the flow's udp record shows.

// bareNote is the error of a query's record whose answer had no question
// and whose own answer never came.
const bareNote = "answered without its question"

// truncatedNote is the error of a query's record whose answer was cut to
// fit (TC set): the client may ask again over TCP, and a DNS lookup over
// TCP has only its connection's tcp record, so the name it finally
// resolved would be in no dns record without it.
const truncatedNote = "the answer was truncated (TC): the client may ask again over TCP, which gets no dns record"

// bareResponse reports whether b is a DNS response with its header alone
// (additional records aside): a whole header, QR set, and no question,
// answer or authority.
func bareResponse(b []byte) bool {
	return len(b) >= dnsHeaderLen && b[2]&0x80 != 0 && b[4]|b[5]|b[6]|b[7]|b[8]|b[9] == 0
}

// findByIDLocked finds the pending query with ID id, for an answer that
// names nothing else of it. Only when exactly one query waits under that
// ID: of several, the answer could be any one's, and noting it on one
// would let a client hide a query behind an innocent one by reusing its ID
// (an answer to the innocent one answering the hidden one's record), so
// none is found, and ambiguous reports it. The walk is over the flow's
// pending queries, at most maxPendingDNS, and only for answers with no
// question. Under d.mu.
func (d *dnsLog) findByIDLocked(id uint16) (key dnsKey, q dnsQuestion, ok, ambiguous bool) {
	found := 0
	for k, v := range d.pending {
		if k.id != id {
			continue
		}
		if found++; found > 1 {
			return dnsKey{}, dnsQuestion{}, false, true
		}
		key, q = k, v
	}
	return key, q, found == 1, false
}
