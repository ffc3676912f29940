package intercept

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
// its end whose bytes all went out so (wholeOut) is recorded whole,
// whatever ended the stream after. A body of no known length is not: its
// client needs END_STREAM to know it has it all.

// dataOut adds n, the payload of a DATA frame the server wrote to the
// client's connection, to the count of stream id's note, if it has one.
func (n *h2StreamNotes) dataOut(id uint32, bytes int) {
	n.mu.Lock()
	if e := n.m[id]; e != nil {
		e.out += int64(bytes)
	}
	n.mu.Unlock()
}

// wholeOut reports whether the stream's DATA frames written to the
// client's connection carried at least body bytes. A note dropped at the
// bound (h2MaxEndNotes) counts no more, and so says no, as a stream with no
// note does.
func (e *h2StreamNote) wholeOut(body int64) bool {
	if e == nil {
		return false
	}
	n := e.of
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.m[e.id] == e && e.out >= body
}
