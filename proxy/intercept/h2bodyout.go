package intercept

import "time"

// A response body's whole relay to an HTTP/2 client, seen on the wire.
//
// x/net's server sends a stream's END_STREAM only once the handler
// returns, and the handler writes the request's record before that, as
// goproxy closes the body. A client that knows the body's length (its
// Content-Length) may take the last DATA frame for the end and close its
// connection at once, before END_STREAM goes out: curl does, with many
// transfers on one connection (review rev32a F4). The request's context is
// then done at the record, and the request was recorded as the client's
// going away "before the response ended", of a client that had every byte.
//
// The writer's frame follower (h2Frames) counts the DATA bytes each
// stream carried into the client's connection, as its writes return: the
// bytes are in the connection's send buffer then, as an HTTP/1 response's
// last write is when its record says ok. A body of known length read to
// its end whose bytes all went out so is recorded whole, whatever ended
// the stream after. A body of no known length is not: its
// client needs END_STREAM to know it has it all; nor one with trailers,
// which go out only after the record (review rev33c F1). A client that
// went away before the end has bytes_in counted the same way: the DATA
// that went out (F3). The writer counts a write once it has returned,
// and a client may have had the bytes, closed, and had its close taken
// before the writer got to count them (a test saw it 1 time in 30 on a
// busy machine): the record waits for a write under way, at most
// dataWait (dataSent).

// dataOut adds bytes, the payload of a DATA frame the server wrote to the
// client's connection, to the count of stream id's note, if it has one;
// before is the notes' epoch as that write began.
//
// Not for a write begun once the client's RST_STREAM for the stream was
// read, nor once the connection closed: a client drops the DATA of a
// stream it reset, and a client that had every byte had no reset of its
// own read before the last was written (review rev33c F2). A write begun
// before counts, even when its count comes after the reset or the close:
// the writer counts once the write has returned.
func (n *h2StreamNotes) dataOut(id uint32, bytes int, before uint64) {
	n.mu.Lock()
	if e := n.m[id]; e != nil && (e.resetAt == 0 || e.resetAt > before) && (!n.closed || n.closedAt > before) {
		e.out += int64(bytes)
	}
	n.mu.Unlock()
}

// writeBegins notes a write of the server's under way, and returns the
// epoch it began at; h2Frames.advance ends it (writeEnds).
func (n *h2StreamNotes) writeBegins() uint64 {
	n.mu.Lock()
	n.writing = true
	n.mu.Unlock()
	return n.epoch.Load()
}

// writeEnds notes that the write under way has returned and its DATA is
// counted, and wakes a dataSent waiting for it.
func (n *h2StreamNotes) writeEnds() {
	n.mu.Lock()
	if n.writing {
		n.writing = false
		n.changedLocked()
	}
	n.mu.Unlock()
}

// dataWait bounds how long dataSent waits for a write under way: one
// blocked on a full send buffer never brings the client its bytes soon.
const dataWait = 100 * time.Millisecond

// dataSent returns the body bytes the stream's DATA frames carried into
// the client's connection, and whether e is still noted to count them.
// The writer counts a write once it has returned, and the client may have
// had the bytes, and gone, before: a write under way is waited for, at
// most dataWait.
func (e *h2StreamNote) dataSent() (int64, bool) {
	if e == nil {
		return 0, false
	}
	n := e.of
	var timer *time.Timer
	expired := false
	for {
		n.mu.Lock()
		if !n.writing || expired {
			out, ok := e.out, n.m[e.id] == e
			n.mu.Unlock()
			if timer != nil {
				timer.Stop()
			}
			return out, ok
		}
		if n.changed == nil {
			n.changed = make(chan struct{})
		}
		ch := n.changed
		n.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(dataWait)
		}
		select {
		case <-ch:
		case <-timer.C:
			expired = true
		}
	}
}
