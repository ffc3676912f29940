package intercept

import (
	"net"
	"net/http"
)

// What a session holds for its client outside the packet stack.
//
// The memory reclaim (netstack/reclaim.go) weighs a client's connections
// by their stack buffers, and by what their handler says it holds for
// each (netstack.Conn.AddHeld). A request the session has taken from the
// client and sent on (or queued) towards the destination holds, until its
// response head comes or it fails: goproxy's handler goroutine, the
// HTTP/2 server's stream, the request with its header list as Go holds
// it, and the transport's state for it. An HTTP/2 client keeps up to
// maxWaitingStreams of them waiting per connection (h2wait.go) on an
// origin of its own that never answers: up to 150 KB each for a header
// list of tiny fields, fifteen megabytes a connection whose stack buffers
// hold half a megabyte, which the reclaim, weighing buffers alone, never
// saw. An HTTP/1 connection holds one such request at a time (its head up
// to the head limit, h1bounds.go), charged the same way.
//
// So each round trip to the destination is charged to the client
// connection while the transport has it (heldTransport): from the start
// until the transport returns, with the response head or the failure.
// Past the head a request is answering, and the client, reading it, sets
// the pace; the write-stall bound watches that. The charge is an estimate
// (requestHeld), measured (TestHeldEstimateMatchesMemory) rather than
// counted: nothing is allocated for it, and nothing is done per byte.

// heldCounter is a client connection the reclaim weighs (netstack.Conn,
// and the proxy's wrappers that pass it on): AddHeld tells it what the
// session holds for it, besides its stack buffers.
type heldCounter interface{ AddHeld(delta int64) }

// The estimate of what a request waiting on its destination holds
// (requestHeld), fitted to TestHeldEstimateMatchesMemory's measurements
// of bumped HTTP/2 streams waiting on an HTTP/2 origin that never answers
// (go1.26, x/net's server under goproxy): a few fields, 23 KB a stream;
// 1900 tiny fields of 26 names, 79 KB; 1600 of as many names, 150 KB;
// seven 8000-byte values, 79 KB.
//   - heldPerRequest: the handler's goroutine and stack, the server's
//     stream, the request, its contexts and record, the transport's
//     stream and its goroutine: 22 KiB with no field;
//   - heldPerName: a name's map entry, its canonical form and the
//     server's cache of it;
//   - heldPerValue: a value's string and slice headers, and its share of
//     the decoded field list;
//   - heldPerByte: the bytes of names and values, held once (the
//     request's; prepareForward copies only what it changes).
//
// HTTP/2 counts 32 bytes a field against the list limit; Go holds 28 to
// 76 besides the bytes, so the list limit alone tells little.
const (
	heldPerRequest = 22 << 10
	heldPerName    = 48
	heldPerValue   = 28
	heldPerByte    = 1
)

// requestHeld is what req, waiting on its destination, holds (the
// constants above). It walks the header, as the transport does to send
// it, and allocates nothing.
func requestHeld(req *http.Request) int64 {
	return heldPerRequest + fieldsHeld(req.Header) + fieldsHeld(req.Trailer)
}

// fieldsHeld is what h's fields hold.
func fieldsHeld(h http.Header) int64 {
	var n int64
	for name, values := range h {
		n += heldPerName + heldPerByte*int64(len(name))
		for _, v := range values {
			n += heldPerValue + heldPerByte*int64(len(v))
		}
	}
	return n
}

// heldTransport charges each round trip to the client connection while
// the transport has it: the reclaim sees what the session's waiting
// requests hold.
type heldTransport struct {
	upstreamTransport
	client heldCounter
}

// withHeld returns tr charging its round trips to client, if the reclaim
// weighs client (a connection of the packet stack); else tr.
func withHeld(tr upstreamTransport, client net.Conn) upstreamTransport {
	h, ok := client.(heldCounter)
	if !ok {
		return tr
	}
	return heldTransport{tr, h}
}

// RoundTrip implements upstreamTransport.
func (t heldTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	n := requestHeld(req)
	t.client.AddHeld(n)
	// Given back however the transport returns: the request is no longer
	// waiting on the destination then (deferred, a panic too).
	defer t.client.AddHeld(-n)
	return t.upstreamTransport.RoundTrip(req)
}
