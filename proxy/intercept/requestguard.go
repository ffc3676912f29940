package intercept

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"strings"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// refuseConnect answers a CONNECT request (an HTTP/2 extended CONNECT,
// with :protocol, too) with a 405 and writes its deny record; it returns
// nil for any other method. Inside an intercepted connection a CONNECT
// cannot be relayed as a request: the transport sends it to the
// destination as one, with the client's body unframed after its head (an
// HTTP/2 stream's DATA frames, an HTTP/1 Content-Length or chunked body),
// and an HTTP/1 origin that answers the CONNECT reads those bytes as
// requests of their own, for whatever Host they name, decided by no one.
// Nor does the appliance open tunnels from inside one: every request is
// decided on its own.
func (rt *roundTripper) refuseConnect(req *http.Request, rec *records.Record, start time.Time) *http.Response {
	if req.Method != http.MethodConnect {
		return nil
	}
	why := "CONNECT inside an intercepted connection is refused"
	if p := req.Header.Get(":protocol"); p != "" {
		why = "extended CONNECT (:protocol " + p + ") inside an intercepted connection is refused"
	}
	rec.Status, rec.Rule, rec.Policy = http.StatusMethodNotAllowed, "", ""
	rec.Action, rec.Result, rec.Error = "deny", "denied", why
	rt.writeDeny(rec, start)
	// No Allow header: any method but CONNECT is relayed, which no list
	// of methods says.
	resp := errorResponse(req, http.StatusMethodNotAllowed, "gwlbproxy: "+why)
	// HTTP/1: what follows the head is what the client meant for a tunnel,
	// not a request; the connection ends after the answer.
	resp.Close = true
	return resp
}

// refuseOddTarget answers 400, with a deny record, a request whose target
// is neither a path nor an http(s) URL with a host: "x:http://evil/secret",
// "evil:443", "mailto:evil". net/http reads such a target as a URL with a
// scheme and an opaque part and no host, so the request is decided and
// recorded on its Host header, while the transport writes the opaque part
// as the target; "x:http://evil/secret" then reaches the destination as
// the absolute-form target http://evil/secret, whose host an origin takes
// over the Host header (RFC 9112 §3.2.2): a shared origin serves a name
// the policy never allowed, under a record naming an allowed one.
//
// So is any other target that is neither (target.go): one of another
// scheme ("ftp://host/p"), or with no host ("x:", "https://", "http:/p").
func (rt *roundTripper) refuseOddTarget(req *http.Request, rec *records.Record, start time.Time) *http.Response {
	var why string
	if req.URL.Opaque != "" {
		// By now goproxy has emptied RequestURI and replaced the
		// scheme: what follows the scheme is all that is left of the
		// target the client wrote.
		why = "after its scheme, " + truncate(req.URL.Opaque, 256)
	} else if n := targetNoteOf(req); n != nil && n.odd != "" {
		why = n.odd + ": " + truncate(n.target, 256)
	} else {
		return nil
	}
	// No policy decided it.
	rec.Path = ""
	rec.Status, rec.Rule, rec.Policy = http.StatusBadRequest, "", ""
	rec.Action, rec.Result, rec.Error = "deny", "denied", "request target is neither a path nor an http(s) URL with a host: "+why
	rt.writeDeny(rec, start)
	return errorResponse(req, http.StatusBadRequest, "gwlbproxy: the request target must be a path or an http(s) URL")
}

// refuseMalformedBody answers 400 a request whose body the appliance's
// own HTTP/2 server refused (RFC 9113 §8.1.1),
// bodyErr being the first failed read of the body: a stream that ended
// short of its content-length, or DATA beyond it when the transport read
// that far. Recorded as the client's going away, it blamed a client that
// had not gone. The record keeps the request's decision (the policy
// allowed it, and its head and the body's start went upstream), with
// result error and the body's fault: not a denial with no rule, which
// said the policy had refused what went out, and which drew on the
// client's bucket of deny records, so a client that kept that bucket dry
// sent such requests with no record at all. It returns nil for any other
// error, or none.
//
// x/net says which in its error's words only (no error value to compare
// with errors.Is), and only on the body. DATA beyond the content-length
// also has the server reset the stream, which ends the request's context,
// and the round trip may end on that before the transport reads the
// body's error (or before it sends anything); a content-length that is
// not a number (ContentLength 0) has goproxy put http.NoBody in the
// body's place, so its DATA's reset reaches the request only as its
// context's end. Those look like a client's RST_STREAM, and are recorded
// as the client's going away still.
//
// An HTTP/1 client's chunked body that breaks its framing (net/http's
// chunked reader's errors, or a trailer it refuses, in its words too;
// chunkedBodyErrors) is refused the same way,
// and its connection closed: past a chunk it cannot read, what follows
// is no request (RFC 9112 §7.1), and serving it as one is how a request
// is smuggled behind another. Such an error can come after the
// destination's answer (it answered before reading the body): roundTrip
// asks here once more when the round trip succeeded, and what is found
// later is bodyfault.go's.
//
// So is an HTTP/1 body the client's side of the connection ended short
// of its Content-Length, or inside a chunk (net/http's unexpected EOF: a
// FIN, or a TLS close_notify), before the answer: the HTTP/1 form of an
// HTTP/2 stream that ends short of its content-length. The client may
// only have half-closed, and reads on: it gets the 400, not a 502 saying
// that it went away, and the record says what it got. A FIN cannot tell
// a half-close from a close: a client that closed is recorded so too. A
// reset, the appliance's deadline and its shutdown are no such end.
func (rt *roundTripper) refuseMalformedBody(req *http.Request, bodyErr error, rec *records.Record, start time.Time) *http.Response {
	if bodyErr == nil {
		return nil
	}
	msg := bodyErr.Error()
	h2 := inH2Handler(req)
	cutShort := !h2 && errors.Is(bodyErr, io.ErrUnexpectedEOF) && !rt.cc.limit.endedByAppliance()
	if !cutShort && (h2 && !containsAny(msg, h2BodyErrors) || !h2 && !containsAny(msg, chunkedBodyErrors)) {
		return nil
	}
	rec.Status, rec.Result = http.StatusBadRequest, "error"
	rec.Error = joinErrors(rec.Error, "malformed request body: "+msg) // an audit's note stays
	rt.write(rec, start)
	resp := errorResponse(req, http.StatusBadRequest, "gwlbproxy: the request body is malformed")
	resp.Close = !h2
	return resp
}

// h2BodyErrors are x/net's words for a body that breaks its
// content-length; chunkedBodyErrors net/http's for a chunked body it
// cannot read: its chunked reader's (net/http/internal/chunked.go), and
// those for a trailer it refuses (body.readTrailer: textproto's
// malformed header lines, and one with no end within 4 KiB).
var (
	h2BodyErrors      = []string{"sender tried to send more than declared Content-Length", "request declared a Content-Length of"}
	chunkedBodyErrors = []string{
		"invalid byte in chunk length", "empty hex number for chunk length", "http chunk length too large",
		"malformed chunked encoding", "chunked encoding contains too much non-data",
		"chunked line ends with bare LF", "invalid CR in chunked line", "header line too long",
		"malformed MIME header", "suspiciously long trailer after chunked body",
	}
)

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// truncate cuts s to at most n bytes.
func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// dropHopByHop removes from resp, before it goes to the client, the
// header fields that describe the destination's connection, not the
// response (RFC 9110 §7.6.1): Connection, the fields it names, Keep-Alive,
// Proxy-Connection, TE, Transfer-Encoding and Upgrade. An HTTP/1 client
// would take them for the appliance's connection (an origin's "Keep-Alive:
// timeout=5"); to an HTTP/2 client they go out as header fields, which
// makes the response malformed (RFC 9113 §8.2.2: nghttp2, so curl, resets
// the stream). An origin's close still ends an HTTP/1 client's connection:
// net/http has taken it into resp.Close (and dropped the field), which
// goproxy writes as "Connection: close".
//
// A 101 keeps Connection: Upgrade and its Upgrade field: goproxy tunnels
// only a response with both (roundTrip refuses any other 101, on the
// origin's header, before this runs), and only when the origin's
// Connection named upgrade: none is written in that it did not send. Any other
// response offering an upgrade (a 426 Upgrade Required) loses the offer:
// goproxy would take it for a WebSocket handshake, want a body it can
// write to, which only a 101's is, drop the response and close the client
// connection, while the record says it was delivered.
//
// An HTTP/2 client's response whose origin sent no Content-Type gets a
// nil one: the HTTP/2 server adds a sniffed one to a response without the
// key, which the origin never said (the HTTP/1 path adds none). The Date
// it adds to a response without one stays: RFC 9110 §6.6.1 has a
// forwarding recipient with a clock add it.
func dropHopByHop(req *http.Request, resp *http.Response) {
	h := resp.Header
	if h == nil {
		return
	}
	upgrade := resp.StatusCode == http.StatusSwitchingProtocols && headerHasToken(h, "Connection", "upgrade")
	for _, v := range h["Connection"] {
		for t := range strings.SplitSeq(v, ",") {
			if t = textproto.TrimString(t); t != "" && !(upgrade && strings.EqualFold(t, "upgrade")) {
				h.Del(t)
			}
		}
	}
	for _, k := range hopByHop {
		delete(h, k)
	}
	if upgrade {
		h["Connection"] = []string{"Upgrade"}
	} else {
		delete(h, "Connection")
		delete(h, "Upgrade")
	}
	if _, ok := h["Content-Type"]; !ok && inH2Handler(req) {
		h["Content-Type"] = nil
	}
}

// hopByHop: the connection-specific fields every response loses, besides
// Connection, the fields it names, and Upgrade (dropHopByHop); in
// canonical form, as net/http keys a parsed header.
var hopByHop = []string{"Keep-Alive", "Proxy-Connection", "Te", "Transfer-Encoding"}

// prepareForward readies an allowed request for the destination. Its
// trailers go nowhere: fields after the body are decided by no one and
// recorded nowhere, and a destination may merge them into the head
// ("Trailer: Host", then a trailer "Host: evil.example.test"), so they
// would carry what the request was not decided on. The body itself is
// relayed whole. A request without a User-Agent goes without one: net/http
// would add its own (Go-http-client/1.1, or /2.0), which the destination
// would take for the client's while the record says there was none, and
// which tells it an appliance is in the way. An empty value makes both
// transports send none.
//
// An Expect field goes as "100-continue" alone, and only on a request
// with a body: h1Transport then holds the body until the origin's 100
// (expect.go), and sends none after an answer that came first, on a
// connection not kept (the session's http.Transport, which would, gets
// no Expect: oneHostTransport drops it). Any other expectation goes nowhere: the appliance
// decided the request on what it knows, and an origin would answer one it
// does not know with a 417.
//
// Its query is written as RFC 3986 has it (escapeQuery).
//
// It returns the request to send: req itself, or, for a body a
// destination may not read as one (closeAfter), a copy that asks for the
// upstream connection to end after it.
func prepareForward(req *http.Request) *http.Request {
	req.Trailer = nil
	if req.Header == nil {
		req.Header = make(http.Header)
	}
	if _, ok := req.Header["User-Agent"]; !ok { // the key net/http looks up
		req.Header["User-Agent"] = []string{""}
	}
	if expectsContinue(req) {
		req.Header["Expect"] = []string{"100-continue"}
	} else {
		delete(req.Header, "Expect")
	}
	req.URL.RawQuery = escapeQuery(req.URL.RawQuery)
	if !closeAfter(req) {
		return req
	}
	// A copy: goproxy closes the client's connection after a request
	// whose Close is set, and it is only the upstream's that must end.
	out := req.WithContext(req.Context())
	out.Close = true
	// Written as "Connection: close" alone: a client's "keep-alive" next
	// to it would leave the origin to choose.
	out.Header["Connection"] = []string{"close"}
	return out
}

// escapeQuery percent-encodes, in q, a request's query as the client sent
// it, every byte RFC 3986 §3.4 does not allow in a query: a space, a
// control byte, " # < > [ \ ] ^ ` { | }, and 0x80-0xFF. Go keeps a query
// as it came, and both transports write it into an HTTP/1 request line as
// is. An HTTP/2 client's :path may hold a space (x/net refuses only
// control bytes), and "/a?x HTTP/1.0 X" then reached the origin as "GET
// /a?x HTTP/1.0 X HTTP/1.1": a request line with five tokens, which a
// parser that splits on spaces reads as another target, or as HTTP/1.0,
// with other connection rules than the appliance's. Encoded, the origin
// gets one target that decodes to what the client sent. Re-escaped rather
// than refused: raw UTF-8 in a query is common from non-browser clients,
// and the bytes mean the same either way. A '%' stays as it is: it may
// begin an escape already. It allocates only for a query that needs it.
func escapeQuery(q string) string {
	n := 0
	for i := 0; i < len(q); i++ {
		if !queryByte(q[i]) {
			n++
		}
	}
	if n == 0 {
		return q
	}
	const hex = "0123456789ABCDEF"
	b := make([]byte, 0, len(q)+2*n)
	for i := 0; i < len(q); i++ {
		if c := q[i]; queryByte(c) {
			b = append(b, c)
		} else {
			b = append(b, '%', hex[c>>4], hex[c&15])
		}
	}
	return string(b)
}

// queryByte reports whether c may appear raw in a query (RFC 3986 §3.4:
// unreserved, sub-delims, ':', '@', '/', '?'), or is the '%' of an escape.
func queryByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '-', '.', '_', '~', '!', '$', '&', '\'', '(', ')', '*', '+', ',', ';', '=', ':', '@', '/', '?', '%':
		return true
	}
	return false
}

// closeAfter reports whether req carries a body with a method whose
// content has no meaning (RFC 9110 §9.3: GET, HEAD, DELETE, OPTIONS
// without a media type, TRACE never has one). Relayed as framed, such a
// body is still one a destination may ignore: many front ends and static
// handlers read a GET's head and skip its Content-Length (the "CL.0"
// desync), and take the body for the next request on the connection, for
// whatever Host it names, which no policy decided. Its answer, however
// late, would then be read as the answer to the client's next request on
// a kept connection, and recorded as that one's. Such a request goes with
// "Connection: close" and its upstream connection is never used again
// (h1Transport and http.Transport both honour Request.Close): a server
// that honours close processes nothing after it (RFC 9112 §9.6), and
// whatever one that does not answers reaches nobody. Refusing such bodies
// would break clients that use them (search APIs send GET with a body);
// the price here is a new upstream connection after each (an HTTP/2
// upstream's too: http.Transport takes no new stream on it).
func closeAfter(req *http.Request) bool {
	if bodyless(req) || req.ContentLength == 0 && inH2Handler(req) {
		// An HTTP/2 request whose HEADERS ended the stream has a body
		// that is not http.NoBody, and a length of 0.
		return false
	}
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodDelete, http.MethodOptions, http.MethodTrace:
		return true
	}
	return false
}

// answeredLocally tells the Rapid Reset guard (h2guard.go) of a stream
// the appliance answered itself, not served upstream.
func (rt *roundTripper) answeredLocally() {
	if rt.cc != nil {
		rt.cc.limit.unanswered.answeredLocally()
	}
}

// writeDeny counts a denied request, and ends and writes its record
// unless the client's budget of deny records (Config.DenyRecord) is spent:
// a request costs an HTTP/2 client a few bytes, and its deny record, made
// before anything else is looked at, hundreds.
func (rt *roundTripper) writeDeny(rec *records.Record, start time.Time) {
	rt.s.ic.denied.Add(1)
	rt.answeredLocally()
	if f := rt.s.ic.cfg.DenyRecord; f != nil {
		ok, skipped := f(rec)
		if !ok {
			return
		}
		if skipped > 0 {
			rec.Error += fmt.Sprintf("; %d more requests denied from this client before this one, not recorded one by one", skipped)
		}
	}
	rt.write(rec, start)
}
