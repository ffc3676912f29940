package intercept

import (
	"context"
	"fmt"
	"sync"
)

// Streams in flight.
//
// The appliance advertises SETTINGS_MAX_CONCURRENT_STREAMS
// h2MaxConcurrentStreams (h2guard.go), but x/net's server, which cannot be
// configured, takes 250. A request's wait for an upstream connection is
// bounded in time (h2wait.go); its wait for the answer on one, and past
// its head its relay, are not: an origin of the client's own that sends a
// head and a byte, then nothing, had a client that ignores the setting
// keep 250 streams per connection, each holding its handler goroutine,
// request, header list and goproxy's 32 KiB copy buffer (60-183 KB a
// stream). held.go charges them to the memory reclaim, which counts them
// but bounds nothing.
//
// So a session's requests in flight are bounded at maxStreamsInFlight: a
// request is in flight from the start of RoundTrip until its record is
// written, or its stream is closed, whichever comes first; one that finds
// maxStreamsInFlight others in flight is answered 503 without a dial, and
// recorded. That span lies within the one x/net's server counts the
// stream open, so a client that keeps to the advertised limit is never
// refused:
//   - the handler runs once the server has opened the stream;
//   - goproxy's handler closes the response body (the record) before it
//     returns, and the server ends the stream (END_STREAM) only after;
//   - a stream the server closes before that (the client's RST_STREAM:
//     a cancelled request, a body it stopped reading) has its context
//     cancelled there, on the server's goroutine, before it reads the
//     client's next frame: a request whose context is done is no longer
//     counted. Its handler may take a while yet to notice and write the
//     record; a counter kept until then (roundTripper.inflight) would
//     count a stream the client has reused already.
//
// The refusal is a 503, not RST_STREAM(REFUSED_STREAM): the bound sits in
// the handler, where the stream is the server's already and a handler
// cannot choose how it is reset; a 503 is recorded with its request, and
// a client that meets it broke the protocol anyway.
//
// An HTTP/1 session has one request in flight at a time: the bound never
// refuses one.

// maxStreamsInFlight bounds a session's requests in flight at once.
const maxStreamsInFlight = h2MaxConcurrentStreams

// errTooManyStreams refuses a request over maxStreamsInFlight.
var errTooManyStreams = fmt.Errorf("too many streams in flight: %d of the connection's requests are under way already (%d concurrent streams are advertised)",
	maxStreamsInFlight, h2MaxConcurrentStreams)

// streamSlots is a session's requests in flight. Its zero value is ready.
type streamSlots struct {
	mu   sync.Mutex
	held map[*streamSlot]struct{}
}

// streamSlot is one request's place in its session's streamSlots.
type streamSlot struct {
	ctx context.Context // the request's: done once its stream is closed
	of  *streamSlots
	// note is the request's HTTP/2 stream's (h2streamend.go), set by
	// RoundTrip whether the slot is taken or not, and dropped with the
	// slot: a slot not taken (of nil) is released for its note alone.
	note *h2StreamNote
}

// take counts a request whose context is ctx in flight, and returns its
// slot, sl (a zero streamSlot the caller allocated with the rest of the
// request's state); sl not counted and errTooManyStreams when
// maxStreamsInFlight are already. A refused request's record is written
// too, and its release drops its stream's note: a nil slot here left the
// note of every refused stream behind, and past h2MaxEndNotes those
// crowded out the notes of the streams in flight, whose records then
// said the client went away for the server's reset.
// Those whose context is done are no longer counted: looked at only when
// the count is full, at most maxStreamsInFlight of them, so that an honest
// client's requests cost a map entry each and no look at the others.
func (s *streamSlots) take(ctx context.Context, sl *streamSlot) (*streamSlot, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.held) >= maxStreamsInFlight {
		for sl := range s.held {
			if sl.ctx.Err() != nil {
				delete(s.held, sl)
			}
		}
		if len(s.held) >= maxStreamsInFlight {
			return sl, errTooManyStreams
		}
	}
	if s.held == nil {
		s.held = make(map[*streamSlot]struct{})
	}
	sl.ctx, sl.of = ctx, s
	s.held[sl] = struct{}{}
	return sl, nil
}

// release ends the request's count, if it was counted, and drops its
// stream's note, once its record is written; later calls, and a nil
// slot, do nothing.
func (sl *streamSlot) release() {
	if sl == nil {
		return
	}
	if sl.of != nil {
		sl.of.mu.Lock()
		delete(sl.of.held, sl)
		sl.of.mu.Unlock()
	}
	sl.note.releaseIfAny() // h2streamend.go
}
