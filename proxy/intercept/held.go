package intercept

import (
	"net"
	"net/http"
	"sync/atomic"
)

// What a session holds for its client outside the packet stack.
//
// The memory reclaim (netstack/reclaim.go) weighs a client's connections
// by their stack buffers, and by what their handler says it holds for
// each (netstack.Conn.AddHeld). A request the session has taken from the
// client holds, until its record is written: goproxy's handler
// goroutine, the HTTP/2 server's stream, the request with its header
// list as Go holds it, while it waits in its destination check or on the
// destination the transport's state for it, and past the response head
// the response and goproxy's 32 KiB buffer copying its body. An HTTP/2
// client keeps up to maxStreamsInFlight of them per connection
// (streamcap.go), waiting (h2wait.go) on an origin of its own that never
// answers, or past their heads (an origin that sends a head and a first
// byte, then nothing, as an event stream that stalls: nothing bounds the
// wait, the stream watch counting no time spent on the origin; goproxy's
// server takes 250): up to 190 KB each for a header list of tiny fields, fifteen
// megabytes and more a connection whose stack buffers hold half a
// megabyte, which the reclaim, weighing buffers alone, never saw. An
// HTTP/1 connection holds one such request at a time (its head up to the
// head limit, h1bounds.go), charged the same way.
//
// So each request is charged to the client connection (heldCharge) from
// the start of RoundTrip until its record is written: at once for a
// request denied, refused or failed, at the body's close (recordingBody)
// for one answered, a WebSocket tunnel's at its end (its handler, its
// two copies and their buffers are held as long: an HTTP/1 connection
// has one at most, and its stack buffers are weighed besides). The
// charge grows at a response head with a body (heldPastHead), and is
// given back once, however the request ends (a panic in RoundTrip too).
// It is an estimate (requestHeld), measured
// (TestHeldEstimateMatchesMemory) rather than counted: one small object a
// request, and nothing done per byte.

// heldCounter is a client connection the reclaim weighs (netstack.Conn,
// and the proxy's wrappers that pass it on): AddHeld tells it what the
// session holds for it, besides its stack buffers.
type heldCounter interface{ AddHeld(delta int64) }

// The estimate of what a request waiting on its destination holds
// (requestHeld), fitted to TestHeldEstimateMatchesMemory's measurements
// of bumped HTTP/2 streams waiting on an HTTP/2 origin that never answers
// (go1.26, x/net's server under goproxy): a few fields, 23 KB a stream;
// 1900 tiny fields of 26 names, 79 KB; 1600 of as many names, 150 KB;
// seven 8000-byte values, 79 KB. Waiting in its destination check (before
// the transport) a stream holds a little less: 70 KB with 1900 tiny
// fields (TestHeldChargedInDestinationCheck).
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

// requestHeld is what req, as RoundTrip takes it, holds (the constants
// above). It walks the header, as the transport does to send it, and
// allocates nothing. Not the trailer: an HTTP/2 server fills that map in
// as the body's end comes, on a goroutine of its own, and its values are
// not there yet.
func requestHeld(req *http.Request) int64 {
	return heldPerRequest + fieldsHeld(req.Header)
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

// heldPastHead is what a request holds besides, once its response head
// has come with a body (or a tunnel) for goproxy's handler to copy: the
// response and the transport's body reader, and goproxy's 32 KiB copy
// buffer. TestHeldEstimateMatchesMemory measures streams past their heads
// at 54 KB with a few fields, 115 KB with 1900 tiny fields of 26 names,
// 186 KB with 1600 of as many, 114 KB with seven long values: 31 to 36 KB
// more than waiting.
const heldPastHead = 34 << 10

// heldCharge is one request's charge to its client connection: taken in
// RoundTrip, grown at the response head (pastHead), and given back once
// (giveBack), when the request's record is written or, for a request
// whose record is written before RoundTrip returns, then. A nil
// heldCharge (a client connection the reclaim does not weigh) does
// nothing.
type heldCharge struct {
	to heldCounter
	// n is what is charged now; heldGivenBack once given back, after
	// which nothing is charged any more.
	n atomic.Int64
}

// heldGivenBack marks a heldCharge given back: no charge is negative.
const heldGivenBack = -1

// chargeHeld charges req, a request the session has just taken from its
// client, to the client connection, if the reclaim weighs it (a
// connection of the packet stack, or a wrapper passing AddHeld on), and
// returns c, a zero heldCharge the caller allocated with the rest of the
// request's state; nil if not.
func chargeHeld(client net.Conn, req *http.Request, c *heldCharge) *heldCharge {
	to, ok := client.(heldCounter)
	if !ok {
		return nil
	}
	c.to = to
	c.add(requestHeld(req))
	return c
}

// add charges n more, unless c was given back already (a response whose
// record was written first): then nothing, which would never be given
// back.
func (c *heldCharge) add(n int64) {
	if c == nil {
		return
	}
	for {
		v := c.n.Load()
		if v == heldGivenBack {
			return
		}
		if c.n.CompareAndSwap(v, v+n) {
			break
		}
	}
	// Outside the swap: the counter is a sum, a giveBack that comes
	// between takes back v+n, and the two adds cancel out.
	c.to.AddHeld(n)
}

// pastHead charges what resp, the response head to req, holds besides
// the request while goproxy copies its body or tunnel.
func (c *heldCharge) pastHead(req *http.Request, resp *http.Response) {
	if c == nil || resp == nil || resp.StatusCode != http.StatusSwitchingProtocols && !hasBody(req, resp) {
		return
	}
	c.add(heldPastHead + fieldsHeld(resp.Header))
}

// giveBack gives back all c charged; the first call counts, later ones
// (and adds) do nothing.
func (c *heldCharge) giveBack() {
	if c == nil {
		return
	}
	if n := c.n.Swap(heldGivenBack); n > 0 {
		c.to.AddHeld(-n)
	}
}
