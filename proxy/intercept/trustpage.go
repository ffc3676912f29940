package intercept

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// serveTrust answers req, a request for the trust host, with the trust
// page, and records it (rec, decided so far) as any response is: when
// goproxy closes its body, once it has reached the client or failed to,
// bytes_in what was passed on. Its record is drawn from the trust page's
// own bucket (Config.TrustRecord) before anything is sent; one the bucket
// refuses is not written at all. slot is its place among the session's
// requests in flight, with its HTTP/2 stream's note, if any: released with
// its record, as any request's (requestState.endRecord); kept, the notes
// of an HTTP/2 client's trust-page requests crowded out those of its
// streams in flight (h2MaxEndNotes).
func (rt *roundTripper) serveTrust(req *http.Request, rec *records.Record, start time.Time, slot *streamSlot) *http.Response {
	s := rt.s
	resp := serveLocally(s.ic.cfg.Trust, req)
	rec.Action, rec.Rule, rec.Status = "allow", trustRule, resp.StatusCode
	rec.Policy = "" // the appliance's own page, whatever the policy
	rt.answeredLocally()
	if f := s.ic.cfg.TrustRecord; f != nil {
		ok, skipped := f(rec)
		if !ok {
			return resp // its body is no recordingBody: RoundTrip ends the request
		}
		if skipped > 0 {
			rec.Error = fmt.Sprintf("%d more trust-page requests from this client before this one, not recorded one by one", skipped)
		}
	}
	rb := &recordingBody{ReadCloser: resp.Body, limit: &rt.cc.limit, note: slot.note}
	rb.ended.Store(!hasBody(req, resp))
	s.watchStream(rb)
	ctx := req.Context() // goproxy cancels it only after closing the body
	rb.done = endFunc(func() {
		result, why, delivered := rt.clientOutcome(ctx, rb)
		noteOutcome(rec, result, why) // after the bucket's note, if any
		rec.BytesIn = delivered
		rt.write(rec, start)
		slot.release()
		rt.requestDone()
	})
	resp.Body = rb
	return resp
}

// serveLocally answers req with h, in memory: the trust page is served by
// the appliance itself, not fetched from anywhere. A HEAD's response has
// the page's length and no body, as a transport's has.
func serveLocally(h http.Handler, req *http.Request) *http.Response {
	w := &memoryResponse{header: make(http.Header), status: http.StatusOK}
	h.ServeHTTP(w, req)
	var body io.ReadCloser = io.NopCloser(bytes.NewReader(w.body.Bytes()))
	if req.Method == http.MethodHead {
		body = http.NoBody
	}
	return &http.Response{
		StatusCode: w.status, Status: fmt.Sprintf("%d %s", w.status, http.StatusText(w.status)),
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Request: req, Header: w.header,
		Body: body, ContentLength: int64(w.body.Len()),
	}
}

// memoryResponse is the http.ResponseWriter of serveLocally.
type memoryResponse struct {
	header      http.Header
	status      int
	wroteHeader bool
	body        bytes.Buffer
}

func (w *memoryResponse) Header() http.Header { return w.header }

func (w *memoryResponse) WriteHeader(code int) {
	if !w.wroteHeader {
		w.status, w.wroteHeader = code, true
	}
}

func (w *memoryResponse) Write(b []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return w.body.Write(b)
}
