package intercept

import (
	"net/http"
	"net/textproto"
	"strings"

	"github.com/elazarl/goproxy"
)

// dropConnectionOptions removes from an HTTP/1 request the fields its
// Connection field names, and Keep-Alive and Upgrade: they are the client's connection's
// alone (RFC 9110 §7.6.1, §7.8), as dropHopByHop has it for a response.
// goproxy drops the Connection field itself after this filter, and kept
// what it named: an h2c upgrade offer (Upgrade: h2c, HTTP2-Settings)
// reached the origin, which may answer it with a 101 the appliance can
// only refuse (502). A WebSocket handshake, which goproxy tunnels and
// forwards with its Connection, keeps Connection: Upgrade and Upgrade, and
// loses only the other fields its Connection names. The fields the
// appliance reads to frame and relay the request (Host, Content-Length,
// Transfer-Encoding, Expect) stay whatever Connection says: a client that
// names them (which RFC 9110 forbids) does not get its request framed
// otherwise than it was read. An HTTP/1.0 request's Upgrade is dropped
// too, a WebSocket's included: a server must ignore it (RFC 9110 §7.8),
// and RFC 6455 needs HTTP/1.1; it went upstream as an HTTP/1.1 upgrade and
// the client was tunnelled. Allocates nothing for a Connection that names
// only keep-alive or close.
func dropConnectionOptions(req *http.Request, _ *goproxy.ProxyCtx) (*http.Request, *http.Response) {
	h := req.Header
	// Hop-by-hop whether Connection names it or not (RFC 9112 §9.3,
	// RFC 9110 §7.6.1). Canonical keys: no allocation.
	delete(h, "Keep-Alive")
	conn := h["Connection"]
	if conn == nil {
		delete(h, "Upgrade")
		return req, nil
	}
	ws := req.ProtoAtLeast(1, 1) && isWebSocketUpgrade(h)
	others := false // a WebSocket handshake's Connection names more than upgrade
	for _, v := range conn {
		for t := range strings.SplitSeq(v, ",") {
			switch t = textproto.TrimString(t); {
			case t == "", strings.EqualFold(t, "close"):
			case strings.EqualFold(t, "keep-alive"): // dropped above
			case strings.EqualFold(t, "upgrade"):
				if !ws {
					delete(h, "Upgrade")
				}
			case keptOption(t):
				others = true
			default:
				others = true
				h.Del(t)
			}
		}
	}
	if !ws {
		delete(h, "Upgrade")
	} else if others {
		h["Connection"] = []string{"Upgrade"}
	}
	return req, nil
}

// keptOption reports whether a field a request's Connection names stays:
// one the appliance reads the request by (dropConnectionOptions), or
// Connection itself.
func keptOption(name string) bool {
	for _, k := range [...]string{"Host", "Content-Length", "Transfer-Encoding", "Expect", "Connection"} {
		if strings.EqualFold(name, k) {
			return true
		}
	}
	return false
}
