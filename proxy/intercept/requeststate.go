package intercept

import (
	"context"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// requestState is what one request of a session keeps from RoundTrip
// until its record is written: its charge to the client connection, its
// place among the requests in flight, its record, the count of its body
// sent upstream, its response body's wrappers, and what endRecord needs.
// Allocated together, they are one allocation per request instead of
// seven; each part is used only through its own pointer, as when it stood
// alone, and none lives longer than the response's body, which holds them
// all anyway.
type requestState struct {
	held heldCharge
	slot streamSlot
	rec  records.Record
	sent countingReader
	rb   recordingBody
	next nextHead
	end  streamEnd // for a body relayed to an HTTP/2 client's stream
	// recheck decides the request again after a reload, while its body,
	// its response's, or the tunnel it opened, is under way.
	recheck tunnelReload

	// For endRecord, set as the response's body is made (roundTrip).
	rt     *roundTripper
	fb     *faultBody
	ctx    context.Context // the request's
	reload *tunnelReload   // &recheck, nil if no reload can happen
	slotp  *streamSlot     // &slot, once taken
	start  time.Time
}

// recordEnder writes a request's record once its response body is
// closed (recordingBody.Close).
type recordEnder interface{ endRecord() }

// endFunc is a recordEnder of a function's own.
type endFunc func()

func (f endFunc) endRecord() { f() }

// endRecord writes the request's record once its response has ended:
// recordingBody.Close calls it, once.
func (st *requestState) endRecord() {
	rt, fb, ctx, reload, slot, start := st.rt, st.fb, st.ctx, st.reload, st.slotp, st.start
	rb, rec, sent := &st.rb, &st.rec, &st.sent
	// The rest of a body the destination did not read, to its end
	// or what breaks it (a bad chunk, the client's stopping), within
	// the drain's bounds: the record says which.
	bodyErr, notRead := fb.drain()
	result, why, delivered := rt.clientOutcome(ctx, rb)
	// Notes go after an audited destination check's, if any.
	switch {
	case reload.ended():
		// Its end was the reload's, which reset it (and what of its
		// body was left): reload.record says so.
	case bodyErr != nil && malformedBody(bodyErr):
		// The client had the destination's answer (its status stays
		// in the record); its connection ends with it (nextHead).
		// A response still under way was cut by the appliance (the
		// transport's writer closes the upstream connection when the
		// body breaks): the fault is the body's, not the
		// destination's, whatever that read then said.
		noteOutcome(rec, "error", "malformed request body: "+bodyErr.Error())
	case notRead != nil && result == "ok":
		// The answer went out whole; the client's body went on past
		// the drain's bounds, and the connection ends with the answer.
		rec.Error = joinErrors(rec.Error, notRead.Error())
	case bodyErr != nil && result == "ok":
		// The answer went out whole, and then the client stopped
		// sending its body (it closed, or reset), as a client may
		// once it has an answer (curl does on an early 413): the
		// connection ends too, but the request had its answer. The
		// appliance's own end of the connection (its shutdown) is
		// said as such.
		if result, why = rt.cc.limit.clientGone("ok", "before its request body ended", " ("+bodyErr.Error()+")"); result == "ok" {
			why = "the client stopped sending its request body after the whole response (" + bodyErr.Error() + ")"
			rec.Error = joinErrors(rec.Error, why)
		}
		noteOutcome(rec, result, why)
	default:
		noteOutcome(rec, result, why)
	}
	rec.BytesOut, rec.BytesIn = sent.out()+rb.written.Load(), delivered
	reload.record(rec)
	if rb.headless.Load() {
		// A reload, or the destination's failed body, reset the stream
		// before its head went: the client saw no status
		// (docs/records.md).
		rec.Status = 0
	}
	// A client's break that found the request under way has its
	// Abort on the way: the record says what it says (answer.go).
	rt.awaitBreakAbort()
	rt.write(rec, start)
	slot.release()
	rt.requestDone()
}
