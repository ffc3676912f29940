package intercept

import (
	"fmt"
	"net/http"
	"net/url"
	"time"

	"golang.org/x/net/http2/hpack"
)

// Requests x/net's server answers itself.
//
// x/net's server answers a request 400 before any handler of the
// appliance's runs when its header list holds a connection-specific
// field (RFC 9113 §8.2.2: connection, keep-alive, proxy-connection,
// transfer-encoding, upgrade) or a te other than "trailers"
// (checkValidHTTP2RequestHeaders, server.go). Nothing went upstream, and
// nothing was recorded (review records30 F3), where an HTTP/1 head the
// appliance cannot read gets a deny record: a client could keep such
// requests out of the records, and an operator who saw its 400s found
// none there.
//
// The header list limit decodes every header block (h2limit.go): it
// applies x/net's rule to a request's, and notes the request on its
// stream (h2StreamNotes). x/net may refuse such a stream another way
// first (an RST_STREAM: a pseudo-header field missing or malformed, a
// stream past its bound), or never read the block (a connection refused
// since): so the record waits for the server's answer on the stream, a
// HEADERS frame its writes show (h2Frames), which on a stream no handler
// of the appliance's took up (h2StreamNotes.claim) only x/net's own
// answers send. Then it is written: a deny (the appliance refused the
// request, and nothing was sent upstream), with no rule, status 400 and
// x/net's words, drawn from the client's bucket of deny records as other
// denies are (writeDeny), and, for the Rapid Reset guard, a stream the
// appliance answered itself.

// h2ConnFields are the fields x/net's server refuses in a request, in the
// order it looks for them, each by the name its error gives it.
var h2ConnFields = [...]string{"Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade"}

// h2RequestFields is what of a request's header block x/net's 400 would
// be given for, and what its record names.
type h2RequestFields struct {
	method, path, authority, host, userAgent string
	// conn has bit i set for a field h2ConnFields[i]; te counts the te
	// fields, te0 is the first's value.
	conn uint8
	te   int
	te0  string
}

// field takes a field of the request's header block. Each of the fields
// a record names is taken from its first field (x/net refuses a request
// with a pseudo-header field twice, with an RST_STREAM).
func (r *h2RequestFields) field(f hpack.HeaderField) {
	switch f.Name {
	case ":method":
		firstValue(&r.method, f.Value)
	case ":path":
		firstValue(&r.path, f.Value)
	case ":authority":
		firstValue(&r.authority, f.Value)
	case "host":
		firstValue(&r.host, f.Value)
	case "user-agent":
		firstValue(&r.userAgent, f.Value)
	case "connection":
		r.conn |= 1 << 0
	case "keep-alive":
		r.conn |= 1 << 1
	case "proxy-connection":
		r.conn |= 1 << 2
	case "transfer-encoding":
		r.conn |= 1 << 3
	case "upgrade":
		r.conn |= 1 << 4
	case "te":
		r.te++
		if r.te == 1 {
			r.te0 = f.Value
		}
	}
}

func firstValue(s *string, v string) {
	if *s == "" {
		*s = v
	}
}

// refusal returns the error x/net's server answers the request 400 with,
// word for word, or "" if it does not. Header field names come in lower
// case (x/net refuses others), and x/net looks them up by their canonical
// forms, so each has one name here.
func (r *h2RequestFields) refusal() string {
	for i, k := range h2ConnFields {
		if r.conn&(1<<i) != 0 {
			return fmt.Sprintf("request header %q is not valid in HTTP/2", k)
		}
	}
	if r.te > 1 || r.te == 1 && r.te0 != "trailers" && r.te0 != "" {
		return `request header "TE" may only be "trailers" in HTTP/2`
	}
	return ""
}

// h2Reject is a request x/net's server is to answer 400 itself: what its
// record says, and when its header block came.
type h2Reject struct {
	method, authority, path, userAgent, why string
	start                                   time.Time
}

// reject notes on stream id the request whose header block (read whole,
// within the limit) r took, if x/net answers it 400. u may be nil.
func (u *h2Unanswered) reject(id uint32, r *h2RequestFields) {
	if u == nil {
		return
	}
	why := r.refusal()
	if why == "" {
		return
	}
	authority := r.authority
	if authority == "" {
		authority = r.host // as x/net takes it
	}
	rj := &h2Reject{method: r.method, authority: authority, path: r.path, userAgent: r.userAgent, why: why, start: time.Now()}
	u.ends.mu.Lock()
	if e := u.ends.m[id]; e != nil && !e.claimed {
		e.reject = rj
	}
	u.ends.mu.Unlock()
}

// answered takes the server's HEADERS frame on stream id: if x/net was to
// answer its request 400 and no handler of the appliance's took it up,
// that is the 400, and the request is recorded (onReject). The stream
// then needs its note no more.
func (n *h2StreamNotes) answered(id uint32) {
	n.mu.Lock()
	e := n.m[id]
	if e == nil || e.reject == nil || e.claimed {
		n.mu.Unlock()
		return
	}
	rj, record := e.reject, n.onReject
	delete(n.m, id)
	n.mu.Unlock()
	if record != nil {
		record(rj)
	}
}

// recordRejected records a request x/net's server answered 400 itself,
// on a goroutine of its own: it is told on the server's writer, which
// holds the connection's write lock. It counts as a request of the
// session, in flight until its record is written, so that the session's
// end, which waits for a request for every stream opened (tryEnd), waits
// for it too.
func (rt *roundTripper) recordRejected(rj *h2Reject) {
	rt.inflight.Add(1)
	rt.requests.Add(1)
	go func() {
		rec := rt.base
		rec.Kind, rec.Scheme, rec.Method, rec.UserAgent = "http", rt.scheme, rj.method, rj.userAgent
		rec.Host = rj.authority
		if h, err := canonicalHost(rj.authority); err == nil {
			rec.Host = h
		}
		rec.Path = ""
		if u, err := url.ParseRequestURI(rj.path); err == nil && rj.method != http.MethodConnect {
			rec.Path = recordPath(u)
		}
		rec.Status, rec.Rule, rec.Policy, rec.BytesOut, rec.BytesIn = http.StatusBadRequest, "", "", 0, 0
		rec.Action, rec.Result, rec.Error = "deny", "denied", "refused by the appliance's HTTP/2 server: "+rj.why
		rt.writeDeny(&rec, rj.start)
		rt.requestDone()
	}()
}
