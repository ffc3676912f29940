package intercept

// The bound on a connection's stream notes (h2streamend.go).
//
// A note goes as its request's record is written. Some have no request:
// a stream x/net's server closed before any handler of the appliance's
// took it up (reset by the client, or by the server for a protocol error
// of the client's, a header field name in upper case say), whose handler
// x/net then never starts (handlerDone skips the streams closed while
// their handlers were queued). Nothing took those out but the bound, and
// the bound was the unanswered streams' (h2MaxUnanswered, 400): a client
// with one answer under way, or with 60 streams x/net had reset before a
// handler, filled the notes before it had 400 streams unanswered, the
// older half of the notes was dropped, and the requests waiting at the
// origin when the 400-unanswered refusal came were recorded as the
// client's going away, not as the refusal (review rev32b F2). Now the
// bound is above what a connection's live notes can be, and those that
// no request will take up go first:
//   - a stream x/net refused (REFUSED_STREAM, which it sends only for a
//     stream it never made) loses its note as the reset goes out
//     (h2StreamNotes.server);
//   - at the bound, the notes no request took up whose stream ended (the
//     server's reset written, or the client's reset) are dropped first
//     (deadLocked); a handler x/net had started just before the end, and
//     that had not yet reached noteH2Stream, finds none and is recorded
//     as before;
//   - then, should more than h2LiveEndNotes remain, the older half, as
//     before: a client past the unanswered bound and x/net's handlers,
//     which the guards refuse anyway.
//
// A note costs under 100 bytes (a 64-byte object, and its map entry):
// h2MaxEndNotes of them took 66 KB on the heap, measured, against 35 KB
// at the old bound of 400, a connection at most; x/net's handlers each
// hold about as much (streamcap.go).

// h2XNetHandlers is the handlers x/net's server runs at once on a
// connection: its own concurrency bound, goproxy's 250, which the
// appliance cannot configure (it advertises h2MaxConcurrentStreams).
const h2XNetHandlers = 250

// h2LiveEndNotes is the notes a connection may need at once: one for
// each stream unanswered (h2MaxUnanswered at most, the reader refuses the
// client past it), and one for each handler of a stream answered, its
// record not yet written.
const h2LiveEndNotes = h2MaxUnanswered + h2XNetHandlers

// h2MaxEndNotes bounds the streams a connection has noted at once: past
// it, the notes no request will take up are dropped, and if more than
// h2LiveEndNotes remain, the older half. The margin between the two makes
// each pass over the notes free h2MaxConcurrentStreams at least.
const h2MaxEndNotes = h2LiveEndNotes + h2MaxConcurrentStreams

// dropOlderLocked makes room for a note: it drops those no request will
// take up (deadLocked) and then, if more than h2LiveEndNotes remain, the
// notes of the older half of the streams noted, by id (a client opens
// them in order). One pass each, however many go. n.mu is held.
func (n *h2StreamNotes) dropOlderLocked() {
	for id, e := range n.m {
		if e.deadLocked() {
			delete(n.m, id)
		}
	}
	if len(n.m) <= h2LiveEndNotes {
		return
	}
	lo, hi := ^uint32(0), uint32(0)
	for id := range n.m {
		lo, hi = min(lo, id), max(hi, id)
	}
	cut := lo + (hi-lo)/2
	for id, e := range n.m {
		if id <= cut {
			if e.ended == h2EndedNot {
				// What ends it now goes unseen: a request that holds
				// the note must not read its end from what it lacks.
				e.ended = h2EndedUnknown
			}
			delete(n.m, id)
		}
	}
}

// deadLocked reports whether no request took e up and its stream has
// ended, so that none will: the server's reset written, or the client's
// reset read. A note with x/net's 400 to come (reject) waits for it.
// n.mu is held.
func (e *h2StreamNote) deadLocked() bool {
	if e.claimed || e.reject != nil {
		return false
	}
	return e.ended == h2EndedClient || e.ended == h2EndedServer && e.written
}
