package intercept

import (
	"fmt"
	"net/http"
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
func (rt *roundTripper) refuseOddTarget(req *http.Request, rec *records.Record, start time.Time) *http.Response {
	if req.URL.Opaque == "" {
		return nil
	}
	// No policy decided it. By now goproxy has emptied RequestURI and
	// replaced the scheme: what follows the scheme is all that is left of
	// the target the client wrote.
	rec.Path = ""
	rec.Status, rec.Rule, rec.Policy = http.StatusBadRequest, "", ""
	rec.Action, rec.Result, rec.Error = "deny", "denied", "request target is neither a path nor an http(s) URL: after its scheme, "+truncate(req.URL.Opaque, 256)
	rt.writeDeny(rec, start)
	return errorResponse(req, http.StatusBadRequest, "gwlbproxy: the request target must be a path or an http(s) URL")
}

// truncate cuts s to at most n bytes.
func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// dropUpgradeOffer removes the upgrade a response other than a 101 offers
// (Upgrade, and the upgrade option in Connection: hop-by-hop fields, RFC
// 9110 §7.8), as a 426 Upgrade Required does. goproxy takes any response
// with "Connection: Upgrade" and "Upgrade: websocket" for a WebSocket
// handshake, whatever its status: it wants a body it can write to, which
// only a 101's is, and else drops the response and closes the client
// connection, while the record says it was delivered. Without them goproxy
// relays it as the ordinary response it is.
func dropUpgradeOffer(resp *http.Response) {
	if resp.StatusCode == http.StatusSwitchingProtocols || resp.Header == nil {
		return
	}
	resp.Header.Del("Upgrade")
	if !headerHasToken(resp.Header, "Connection", "upgrade") {
		return
	}
	var keep []string
	for _, v := range resp.Header.Values("Connection") {
		for _, t := range strings.Split(v, ",") {
			if t = strings.TrimSpace(t); t != "" && !strings.EqualFold(t, "upgrade") {
				keep = append(keep, t)
			}
		}
	}
	if len(keep) == 0 {
		resp.Header.Del("Connection")
		return
	}
	resp.Header.Set("Connection", strings.Join(keep, ", "))
}

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
func prepareForward(req *http.Request) {
	req.Trailer = nil
	if req.Header == nil {
		req.Header = make(http.Header)
	}
	if _, ok := req.Header["User-Agent"]; !ok { // the key net/http looks up
		req.Header["User-Agent"] = []string{""}
	}
}

// writeDeny counts a denied request, and ends and writes its record
// unless the client's budget of deny records (Config.DenyRecord) is spent:
// a request costs an HTTP/2 client a few bytes, and its deny record, made
// before anything else is looked at, hundreds.
func (rt *roundTripper) writeDeny(rec *records.Record, start time.Time) {
	rt.s.ic.denied.Add(1)
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
