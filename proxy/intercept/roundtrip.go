package intercept

import (
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/elazarl/goproxy"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// RoundTrip implements goproxy.RoundTripper: one HTTP request of an
// intercepted connection. Every request is decided on its own Host (a
// keep-alive connection, or a bumped one, may carry requests for other
// names than its first) and gets its own record.
func (rt *roundTripper) RoundTrip(req *http.Request, pctx *goproxy.ProxyCtx) (*http.Response, error) {
	if rt.cc.bodyFault.Load() != nil {
		// goproxy read this head from bytes it had buffered after a
		// chunked body whose framing broke: no request (bodyfault.go).
		// Not decided, sent or recorded; the error ends goproxy's loop,
		// which closes the connection.
		return nil, errAfterBodyFault
	}
	// Under way (answer.go), in flight, then a request: the order
	// tryEnd relies on.
	rt.cc.startAnswer()
	rt.inflight.Add(1)
	// Charged to the client connection from now until its record is
	// written, whatever it waits on meanwhile (its destination check,
	// the origin, the client reading the body): the memory reclaim
	// weighs it (held.go).
	st := new(requestState) // one allocation for what the request keeps
	held := chargeHeld(rt.s.Client, req, &st.held)
	// In flight for the session's bound from now until its record is
	// written too (streamcap.go); over the bound, refused in roundTrip,
	// once the request is decided.
	st.slot.note = h2StreamNoteOf(pctx) // what ended its stream: h2streamend.go
	slot, over := rt.streams.take(req.Context(), &st.slot)
	handedOver := false
	defer func() {
		if !handedOver {
			// A panic (an HTTP/2 handler's is recovered): no record
			// will end this request, and its charge and its slot would
			// stay.
			held.giveBack()
			slot.release()
		}
	}()
	rt.s.abortIfBroken() // the client reset after its FIN: AbortUnlessIdle
	rt.requests.Add(1)
	if rt.idle != nil { // no longer idle: requestDone arms it again
		rt.idle.Stop()
		rt.idleGrace.Store(false)
	}
	rt.cc.limit.headDone()
	if rt.cc.h1 { // also an h2 connection that speaks HTTP/1: h1bounds.go
		rt.cc.bounds.request(req) // its body's length
		rt.cc.startUnchunk(req)   // an HTTP/1.0 request's answer: http10.go
	}
	if !rt.s.h2 {
		// The previous response is complete, whether or not its end was
		// seen: what it left held goes now, before a "100 Continue".
		rt.cc.holdResponse(false)
	}
	fb := watchBodyFault(req, rt.cc)
	reqBody := req.Body // goproxy's own (or fb), before roundTrip wraps it
	resp, err := rt.roundTrip(req, fb, slot, over, st)
	noBodyAnswer(resp) // nobodystatus.go
	if rb := recordingOf(resp); rb != nil {
		held.pastHead(req, resp)
		rb.keepHeld(held) // given back with its record
	} else {
		held.giveBack()
		slot.release()
		rt.requestDone() // its record is written already
	}
	handedOver = true
	if resp != nil && resp.Body != nil && resp.StatusCode != http.StatusSwitchingProtocols { // a 101 is a tunnel now
		rb := relayedToStream(resp.Body)
		st.next = nextHead{ReadCloser: resp.Body, cc: rt.cc, reqBody: reqBody, resp: resp, trailer: resp.Trailer}
		resp.Body = &st.next
		if rb != nil { // the server's flushes: streamEnd
			st.end = streamEnd{ReadCloser: resp.Body, watch: rb.stream, rb: rb}
			resp.Body = &st.end
		}
		if !rt.s.h2 && hasBody(req, resp) {
			rt.cc.holdResponse(true)
		}
	}
	return resp, err
}

// recordingOf returns resp's recordingBody if resp's record is written
// when goproxy closes its body, else nil.
func recordingOf(resp *http.Response) *recordingBody {
	if resp == nil {
		return nil
	}
	switch b := resp.Body.(type) {
	case *recordingBody:
		return b
	case *recordingRWBody:
		return b.recordingBody
	}
	return nil
}

// hasBody reports whether goproxy writes body bytes after resp's head. An
// empty body has a ContentLength of 0 (the transport's http.NoBody too).
func hasBody(req *http.Request, resp *http.Response) bool {
	return req.Method != http.MethodHead && resp.ContentLength != 0 &&
		resp.StatusCode >= 200 && resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusNotModified
}

// roundTrip is RoundTrip's one request; fb is its body when that is an
// HTTP/1 one, chunked or of a Content-Length (watchBodyFault), else nil;
// slot its place among the session's requests in flight, released with
// its record (not counted, and released for its stream's note alone,
// when over is the error of a request over their bound).
func (rt *roundTripper) roundTrip(req *http.Request, fb *faultBody, slot *streamSlot, over error, st *requestState) (*http.Response, error) {
	s := rt.s
	start := time.Now()
	req.URL.Scheme = rt.scheme // goproxy saw cleartext and says http
	// req.Host is what the transport sends as Host (or :authority): for an
	// absolute-form target net/http put its authority there and dropped
	// the Host header, for HTTP/2 it is :authority. The request is decided
	// and recorded on that one name.
	if req.Host == "" {
		req.Host = req.URL.Host
	}
	canon, err := canonicalHost(req.Host)
	if err != nil {
		rec := rt.base
		rec.Kind, rec.Scheme, rec.Method, rec.Host = "http", rt.scheme, req.Method, req.Host
		rec.Status, rec.Rule, rec.Policy = http.StatusBadRequest, "", ""
		rec.Action, rec.Result, rec.Error = "deny", "denied", err.Error()
		rt.writeDeny(&rec, start)
		return errorResponse(req, http.StatusBadRequest, "gwlbproxy: the Host cannot be read"), nil
	}
	req.Host = canon
	host := hostOnly(req.Host)
	rec := &st.rec
	*rec = rt.base
	rec.Kind, rec.Scheme, rec.Method, rec.Host = "http", rt.scheme, req.Method, req.Host
	rec.Path, rec.UserAgent, rec.Error, rec.Result = requestPath(req), req.UserAgent(), "", "ok"
	rec.BytesOut, rec.BytesIn = 0, 0
	if resp := rt.refuseConnect(req, rec, start); resp != nil {
		return resp, nil
	}
	if resp := rt.refuseOddTarget(req, rec, start); resp != nil {
		return resp, nil
	}
	if keepAsterisk(req) { // target.go
		rec.Path = "*"
	}
	if isWebSocketUpgrade(req.Header) && !bodyless(req) {
		// A WebSocket handshake is a GET without a body (RFC 6455 §4.1).
		// Tunnelled, an upgrade with one would have the body's writer
		// (exchangeHead) and goproxy's tunnel read the client connection
		// at once: they share its buffers. Nothing reaches the upstream.
		rec.Status, rec.Rule, rec.Policy = http.StatusBadRequest, "", ""
		rec.Action, rec.Result, rec.Error = "deny", "denied", "WebSocket upgrade request with a body"
		rt.writeDeny(rec, start)
		resp := errorResponse(req, http.StatusBadRequest, "gwlbproxy: a WebSocket upgrade request must have no body")
		resp.Close = true // what follows the head is a body nobody will read as one
		return resp, nil
	}
	if s.ic.IsTrustHost(host) {
		return rt.serveTrust(req, rec, start, slot), nil // trustpage.go
	}
	proto := policy.ProtoHTTP
	if rt.scheme == "https" {
		proto = policy.ProtoTLS
	}
	subj := s.Subject
	subj.Protocol, subj.Domain = proto, host
	// The policy in force now, not the connection's: a reload that
	// denies a name must reach a keep-alive or bumped connection's next
	// request. The connection's bump stays as it was decided.
	pol := s.requestPolicy()
	d := pol.Decide(subj)
	rec.Rule, rec.Action, rec.Policy = d.Rule, d.Action.String(), d.Policy
	if rt.scheme == "https" && d.Action != policy.Deny {
		rec.Action = "bump" // the connection is decrypted already
	}
	if d.Action == policy.Deny {
		rec.Status = http.StatusForbidden
		rec.Action, rec.Result, rec.Error = "deny", "denied", "denied by policy"
		resp := rt.ownDenyResponse(req, d, pol, host) // connreload.go
		rt.writeDeny(rec, start)
		return resp, nil
	}
	if resp := rt.refuseDeniedName(req, rec, pol, host, start); resp != nil { // connreload.go
		return resp, nil
	}
	if err := req.Context().Err(); err != nil {
		// The client is gone already (it closed the connection, or reset
		// the stream: an HTTP/2 server may close the connection before
		// the handler of a stream it read reaches here). Nothing is sent
		// for a response nobody will read, and the record says so, not
		// that the destination failed.
		var why string
		rec.Result, why = rt.cc.limit.streamGone(st.slot.note, req.Context(), nil, "reset", "before the request could be sent upstream", " ("+err.Error()+")")
		rec.Error = "not sent: " + why
		rt.write(rec, start)
		return errorResponse(req, http.StatusBadGateway, "gwlbproxy: the client went away"), nil
	}
	if over != nil {
		// Over the session's streams in flight (streamcap.go): before
		// its destination check and its dial, answered at once. Only a
		// client that ignored the concurrent streams advertised meets
		// it.
		rec.Status, rec.Result, rec.Error = http.StatusServiceUnavailable, "error", over.Error()
		rt.answeredLocally()
		rt.write(rec, start)
		return errorResponse(req, rec.Status, "gwlbproxy: "+over.Error()), nil
	}
	var vouch destVouch // what a pass rested on, for a reload's recheck
	if s.needsDestinationCheck(pol, d, host) {
		var err error
		if vouch, err = s.checkDestination(req.Context(), host); err != nil {
			rec.DestCheck, rec.Error = "mismatch", err.Error()
			if pol.Mode() != policy.Audit {
				rec.Status = http.StatusForbidden
				rec.Action, rec.Result = "deny", "denied"
				rt.writeDeny(rec, start)
				return denyResponse(req, d.Rule, host, "the destination address is not one this name resolves to"), nil
			}
			// Audit: recorded, and let through.
		} else {
			rec.DestCheck = "ok"
		}
	}
	fwd := prepareForward(req)
	// A copy asks the destination to close (closeAfter): its answer's
	// "Connection: close" is about the upstream connection alone, and
	// goproxy would close the client's connection too.
	closeOnlyUpstream := fwd != req && !req.Close
	req = fwd
	// Decided again after a reload while its body, or its response's, is
	// under way (tunnelReload), as a tunnel it may open is.
	reload := st.recheck.init(s, pol, subj, rec, vouch, inH2Handler(req))
	sent := &st.sent
	if req.Body != nil && req.Body != http.NoBody {
		sent.r, sent.reload = req.Body, reload
		if sent.wrote.client = s.client; inH2Handler(req) {
			sent.wrote.client = nil // read by x/net's reader, every stream's (uploadHold)
		}
		req.Body = sent
		req = withBodySent(req, &sent.wrote)
	}
	req, used := s.trackConn(req, rt.scheme == "https") // redial.go
	resp, err := rt.tr.roundTripRechecked(req, reload)
	if err == nil {
		if rerr := reload.checkAnswer(); rerr != nil {
			// Its head came after a reload denied the name: decided
			// here, or a response with no body read to follow (a HEAD
			// answer, a 101) would go out whole, recorded allow.
			resp.Body.Close()
			resp, err = nil, rerr
		}
	}
	if err == nil && closeOnlyUpstream {
		resp.Close = false // the transports have read it already: the connection is not kept
	}
	s.noteVerdict(rec, used, err)
	// What of the body has gone upstream, on every path: a request with
	// no response (the destination closed or reset, the client went away)
	// still sent its body, and cleartext HTTP has no connection record to
	// say so. A response's end counts it again (rb.done).
	rec.BytesOut = sent.out()
	if err == nil && fb != nil {
		// The destination answered before the body's framing broke, as
		// far as the transport had read it: known now, before the
		// answer's head goes out, the client gets the 400 instead.
		// Found later, the answer goes on and the record says so
		// (rb.done).
		if bad := rt.refuseMalformedBody(req, sent.err(), rec, start); bad != nil {
			resp.Body.Close()
			return bad, nil
		}
	}
	if err != nil && reload.ended() {
		// A reload denied the request while its body was under way:
		// nothing read after it went upstream. An HTTP/1 client's
		// connection is reset already (tunnelReload.check); an HTTP/2
		// stream is answered 403, and the server resets what is left of
		// its upload. One denied before its head went (checkHead), or
		// before its answer's head went to the client (checkAnswer), had
		// nothing cut: its HTTP/1 client is answered 403 too, its
		// connection serving on unless its name is denied.
		if inH2Handler(req) || reload.deniedUnsent() {
			rec.Status = http.StatusForbidden
		}
		reload.record(rec)
		rt.write(rec, start)
		return reload.denyResponse(req, host), nil
	}
	if err != nil && (req.Context().Err() != nil || sent.failed.Load()) {
		if resp := rt.refuseMalformedBody(req, sent.err(), rec, start); resp != nil {
			return resp, nil
		}
		// The client went away while the request was under way (its
		// request's context ended, or its body could not be read to the
		// end): the round trip was cut short for it, not by the
		// destination.
		result, why := rt.cc.limit.streamGone(st.slot.note, req.Context(), sent.err(), "reset", "before the response came", " ("+err.Error()+")")
		rec.Result, rec.Error = result, joinErrors(rec.Error, why) // an audit's note stays
		rt.write(rec, start)
		return errorResponse(req, http.StatusBadGateway, "gwlbproxy: the client went away"), nil
	}
	if err != nil && rt.s.abortedFromOutside() {
		// Abort (the client's connection broke, or the drain closed the
		// stacks) reset the destination's connection under the round trip:
		// the destination did not fail, and no 502 reaches anyone. The
		// record has no status, and says what Abort was told (noteAbort).
		rt.write(rec, start)
		return errorResponse(req, http.StatusBadGateway, "gwlbproxy: the session was aborted"), nil
	}
	if resp := rt.refuseRedial(req, rec, host, err, start); resp != nil { // connreload.go
		return resp, nil
	}
	if err != nil {
		rec.Status = upstreamFailStatus(err) // 503 for a bounded wait: h2wait.go
		rec.Result, rec.Error = records.DialResult(err), err.Error()
		rt.write(rec, start)
		return errorResponse(req, rec.Status, "gwlbproxy could not reach the destination: "+err.Error()), nil
	}
	if bad := invalidStatus(resp); bad != "" {
		// Not a status a client can be given: net/http would answer it
		// with a doubled status line, a body it counts as none, and the
		// HTTP/2 server panics in WriteHeader and resets the stream. The
		// destination's fault, said so, as any other answer it garbled.
		resp.Body.Close()
		rec.Status, rec.Result = http.StatusBadGateway, "error"
		rec.Error = "invalid status " + bad + " from the destination"
		rt.write(rec, start)
		return errorResponse(req, http.StatusBadGateway, "gwlbproxy: the destination answered with an invalid status"), nil
	}
	rec.Status = resp.StatusCode
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// goproxy tunnels a WebSocket upgrade only; any other 101 it would
		// answer as a plain response and go on reading requests from what
		// is now another protocol's stream. And only one the client asked
		// for, over HTTP/1: a 101 to a request with no upgrade offer would
		// turn the client's next requests into tunnel bytes, relayed to
		// the destination undecided and unrecorded, and an HTTP/2 client
		// would get the tunnel's bytes as a body. Checked on the origin's
		// own header, before dropHopByHop writes the Connection: Upgrade
		// a tunnelled 101 goes out with: a 101 whose Connection lacks the
		// upgrade token is not a WebSocket handshake (RFC 6455 §4.2.2).
		why := ""
		switch {
		case !headerHasToken(resp.Header, "Upgrade", "websocket"):
			why = "upgrade to " + resp.Header.Get("Upgrade") + " is not supported"
		case !headerHasToken(resp.Header, "Connection", "upgrade"):
			why = "a 101 whose Connection field does not name upgrade"
		case inH2Handler(req) || !isWebSocketUpgrade(req.Header):
			why = "a WebSocket upgrade the request did not offer"
		}
		if why != "" {
			resp.Body.Close()
			rec.Status, rec.Result, rec.Error = http.StatusBadGateway, "error", why
			rt.write(rec, start)
			return errorResponse(req, http.StatusBadGateway, "gwlbproxy relays WebSocket upgrades only"), nil
		}
		rec.WebSocket = true
		if ub, ok := resp.Body.(*upgradedBody); ok {
			ub.tunnel = true // its end waits for the upstream's (upgradedBody.Close)
			ub.clientBroke, ub.aborted = s.clientBroke, s.abortedSignal()
			ub.breakAfterFIN = s.finBreak.Load
			ub.clientBreak = s.clientBreakSignal()
			ub.holdUpload(&rt.cc.upload, s.client, &st.rb.written) // goproxy's upload copy (uploadCopy)
			ub.endClient = rt.cc.halfClose                         // the client's end (relayDestinationEnd)
			ub.onTailCut = func(err error) { rt.tailCut.Store(&err) }
			ub.shuttingDown, ub.stallTimeout = s.ic.cfg.ShuttingDown, s.ic.cfg.WriteStallTimeout
			ub.lingerCut = s.lingerCutErr
			s.tunnel.Store(ub)
			ub.reload = reload
		}
		// Under way until the client's break, unless that comes after
		// its FIN (answer.go); a break before this stands.
		rt.cc.answer.CompareAndSwap(answerPending, answerTunnel)
	}
	dropHopByHop(req, resp)
	rb := &st.rb
	rb.ReadCloser, rb.limit, rb.note, rb.resp = resp.Body, &rt.cc.limit, st.slot.note, resp
	// A body cut short resets an HTTP/2 client's stream: see Read.
	rb.toStream = inH2Handler(req)
	// Nothing to wait for in a response without a body (HEAD, 204, 304,
	// Content-Length 0). A 101's body is the tunnel's way back: its end is
	// the tunnel's (outcome).
	rb.tunnel = resp.StatusCode == http.StatusSwitchingProtocols
	rb.bodiless = !rb.tunnel && !hasBody(req, resp)
	rb.ended.Store(rb.bodiless)
	if !rb.tunnel && !rb.ended.Load() && !inH2Handler(req) && resp.ContentLength > 0 {
		// goproxy writes exactly that much (Response.Write): the write
		// after the read that brings the last byte ends the response.
		rb.answerConn, rb.whole = rt.cc, resp.ContentLength
	}
	if rb.ended.Load() {
		// No body, so no trailers to follow it. An announced one (a HEAD
		// answered with GET's fields) had goproxy flush the head first to
		// copy them after; x/net's server ends a HEAD's stream on its head,
		// and its context with it, which the record then read as the
		// client going away from an answer it had whole.
		resp.Trailer = nil
	}
	rb.reload, rb.resetStream = reload, !rb.tunnel && inH2Handler(req)
	s.watchStream(rb)
	// The record is written as the body is closed (endRecord); goproxy
	// cancels the request's context only after that.
	st.rt, st.fb, st.ctx, st.reload, st.slotp, st.start = rt, fb, req.Context(), reload, slot, start
	rb.done = st
	if w, ok := resp.Body.(io.Writer); ok { // a 101's body carries both directions
		resp.Body = &recordingRWBody{recordingBody: rb, w: w, reload: reload}
	} else {
		resp.Body = rb
	}
	return resp, nil
}

// invalidStatus returns resp's status as the destination sent it when it
// cannot be a final one, else "": a final status is 200 to 999, or a 101
// (checked on its own after). The transports let others through: x/net's
// HTTP/2 one takes any integer :status ("-7", "1000"), and an HTTP/1
// status line's three digits may be under 100 ("000"), which net/http
// and h1Transport take as final; a 1xx other than 101 is never final.
func invalidStatus(resp *http.Response) string {
	code := resp.StatusCode
	if (code >= 200 && code <= 999) || code == http.StatusSwitchingProtocols {
		return ""
	}
	// As sent ("099", not 99): the status's first field, when it is
	// that number.
	if f, _, _ := strings.Cut(resp.Status, " "); f != "" {
		if n, err := strconv.Atoi(f); err == nil && n == code {
			return f
		}
	}
	return strconv.Itoa(code)
}

// write ends rec, one request's record, and writes it.
func (rt *roundTripper) write(rec *records.Record, start time.Time) {
	rt.s.noteAbort(rec)
	rec.End(start)
	rt.s.ic.write(rec) // requesttext.go
}

// isWebSocketUpgrade is goproxy's own test for a response it tunnels.
func isWebSocketUpgrade(h http.Header) bool {
	return headerHasToken(h, "Connection", "upgrade") && headerHasToken(h, "Upgrade", "websocket")
}

// headerHasToken reports whether a comma-separated list in h's name
// fields holds token, case-insensitive. Allocates nothing: it runs for
// every request with a Connection field (dropConnectionOptions).
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// denyResponse is the 403 page of a denied request; why, when set, says
// what besides the rule denied it. An HTTP/2 stream gets the status alone
// (errorResponse).
func denyResponse(req *http.Request, rule, host, why string) *http.Response {
	if why != "" {
		why = ": " + html.EscapeString(why)
	}
	resp := errorResponse(req, http.StatusForbidden, "")
	if inH2Handler(req) {
		return resp
	}
	page := fmt.Sprintf("<!doctype html><title>403 Forbidden</title><h1>Forbidden</h1>"+
		"<p>gwlbproxy denied this request to <b>%s</b> (rule <code>%s</code>)%s.</p>\n",
		html.EscapeString(host), html.EscapeString(rule), why)
	resp.Header.Set("Content-Type", "text/html; charset=utf-8")
	resp.Body, resp.ContentLength = io.NopCloser(strings.NewReader(page)), int64(len(page))
	return resp
}

// errorResponse is the appliance's own answer code to req, with msg as
// its text. To an HTTP/2 stream it goes without a body: the server then
// ends the stream with the HEADERS, which needs no flow-control window,
// where a body waits for one. A client that grants none (an initial
// stream window of 0) kept each such stream's handler, its request and
// header list waiting for as long as the connection lasted, past the
// streams in flight bound (whose slot went back with the record) and
// unseen by the memory reclaim and the stall watches: 250 a connection,
// up to 21.7 MB, were measured. The record says what the text would have.
func errorResponse(req *http.Request, code int, msg string) *http.Response {
	resp := &http.Response{
		StatusCode: code, Status: fmt.Sprintf("%d %s", code, http.StatusText(code)),
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Request: req,
		Header: http.Header{},
		Body:   http.NoBody,
	}
	if inH2Handler(req) {
		return resp
	}
	body := msg + "\n"
	resp.Header.Set("Content-Type", "text/plain; charset=utf-8")
	resp.Body, resp.ContentLength = io.NopCloser(strings.NewReader(body)), int64(len(body))
	return resp
}

// writeDenyResponse answers a denied plain-HTTP connection before any
// request is proxied.
func writeDenyResponse(c net.Conn, rule, host string) {
	resp := denyResponse(&http.Request{Method: http.MethodGet}, rule, host, "")
	resp.Close = true
	_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_ = resp.Write(c)
}

// countingReader counts the reads of a request's body, and says what of it
// left (out).
type countingReader struct {
	r io.ReadCloser
	n atomic.Int64
	// wrote: what of the body the transport wrote upstream, when it
	// counts that (h1Transport): read is not sent.
	wrote bodySent
	// failed: a read of the client's body failed (not its end): the
	// client went, or the appliance's deadline cut its connection, or its
	// HTTP/2 server refused the body (refuseMalformedBody). firstErr is
	// the first such failure's error.
	failed   atomic.Bool
	firstErr atomic.Pointer[error]
	// closed: the upstream transport closed the body. It does so when the
	// request ends, and also to end its own read of the body when the
	// destination reset the request (an HTTP/2 stream's RST_STREAM, the
	// connection's reset) while the client was still uploading: that read
	// then fails ("body closed by handler", http.ErrBodyReadAfterClose),
	// which is the appliance's doing, not the client's going.
	closed atomic.Bool
	// reload decides the request again after a reload (nil: none can
	// happen): the bytes of a read it denies do not go on, nor count.
	reload *tunnelReload
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	// Also the read that brings only the end (io.EOF): the transport
	// sends the body's end (the last chunk, END_STREAM) on it, which
	// completes the request at the origin.
	if n > 0 || err == io.EOF {
		if rerr := c.reload.check(); rerr != nil {
			return 0, rerr
		}
	}
	c.n.Add(int64(n))
	if err != nil && err != io.EOF && !c.closed.Load() {
		first := err // only this escapes: a read that succeeds allocates nothing
		c.firstErr.CompareAndSwap(nil, &first)
		c.failed.Store(true)
	}
	return n, err
}

// err returns the error of the first failed read of the body, or nil.
func (c *countingReader) err() error {
	if p := c.firstErr.Load(); p != nil {
		return *p
	}
	return nil
}

// Close marks the body closed before closing it, so that the read it
// makes fail is not taken for a failure of the client's (Read).
func (c *countingReader) Close() error {
	c.closed.Store(true)
	return c.r.Close()
}

// out returns what of the body went upstream: what the transport wrote,
// when it counts it, else what it read.
func (c *countingReader) out() int64 {
	if c.wrote.counted.Load() {
		return c.wrote.n.Load()
	}
	return c.n.Load()
}
