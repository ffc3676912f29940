package intercept

import "github.com/gwlbproxy/gwlbproxy/proxy/records"

// requestState is what one request of a session keeps from RoundTrip
// until its record is written: its charge to the client connection, its
// place among the requests in flight, its record, the count of its body
// sent upstream, and its response body's wrappers. Allocated together,
// they are one allocation per request instead of six; each part is used
// only through its own pointer, as when it stood alone, and none lives
// longer than the response's body, which holds them all anyway.
type requestState struct {
	held heldCharge
	slot streamSlot
	rec  records.Record
	sent countingReader
	rb   recordingBody
	next nextHead
}
