package intercept

import (
	"context"
	"net/http"
	"net/url"
	"strings"

	"github.com/elazarl/goproxy"
)

// The request target as the client wrote it. goproxy rebuilds a request's
// URL before any handler sees the request (an origin-form target becomes
// scheme://Host + target, an absolute-form one gets the connection's
// scheme in place of its own) and empties RequestURI, the target as
// written, before RoundTrip: "ftp://host/p" then reads as "https://host/p",
// "https://" and "x:" as URLs with no path, and "*" becomes part of the
// host. Its request filter runs between the two: noteTarget notes there
// what roundTrip must know of the target.

// targetNote is what roundTrip must know of a request's target.
type targetNote struct {
	// odd says why the target is refused: it is neither a path nor an
	// http(s) URL with a host (docs/policy.md); target is the target.
	odd, target string
	// asterisk: the target is "*" (RFC 9112 §3.2.4), sent on as such.
	asterisk bool
}

// targetNoteKey is the context key of a request's targetNote.
type targetNoteKey struct{}

// asteriskNote is the note of every "*" target.
var asteriskNote = &targetNote{asterisk: true}

// noteTarget is goproxy's request filter: it puts the note of req's
// target, if it has one, in its context. An origin-form target (a path),
// the one clients send a server, has none, and costs nothing.
func noteTarget(req *http.Request, _ *goproxy.ProxyCtx) (*http.Request, *http.Response) {
	if n := targetNoteFor(req.Method, req.RequestURI); n != nil {
		req = req.WithContext(context.WithValue(req.Context(), targetNoteKey{}, n))
	}
	return req, nil
}

// targetNoteFor returns the note of target, the one of a request with
// method, or nil when it needs none. One with an opaque part
// ("x:http://evil/secret", "evil:443") is refuseOddTarget's to refuse:
// goproxy leaves it in the URL.
func targetNoteFor(method, target string) *targetNote {
	switch {
	case strings.HasPrefix(target, "/"):
		return nil
	case target == "*" && method == http.MethodOptions:
		return asteriskNote
	case target == "*":
		// RFC 9112 §3.2.4: the asterisk-form is for OPTIONS only. Sent
		// on with another method ("GET *"), an origin or a middlebox
		// behind it would route it as it likes.
		return &targetNote{odd: "* is for OPTIONS only, not " + truncate(method, 32), target: target}
	}
	u, err := url.ParseRequestURI(target)
	var odd string
	switch {
	case err != nil: // net/http read it so: not expected here
		odd = "it cannot be read"
	case u.Opaque != "":
		return nil
	case !strings.EqualFold(u.Scheme, "http") && !strings.EqualFold(u.Scheme, "https"):
		odd = "scheme " + u.Scheme
	case u.Host == "":
		odd = "no host"
	default:
		return nil
	}
	return &targetNote{odd: odd, target: target}
}

// targetNoteOf returns the note of req's target, or nil.
func targetNoteOf(req *http.Request) *targetNote {
	n, _ := req.Context().Value(targetNoteKey{}).(*targetNote)
	return n
}

// keepAsterisk makes a "*" target go upstream as "*", and be recorded so,
// rather than as goproxy's rebuilt URL, which the transports sent as "/"
// with the record's path empty.
func keepAsterisk(req *http.Request) bool {
	if n := targetNoteOf(req); n == nil || !n.asterisk {
		return false
	}
	req.URL = &url.URL{Scheme: req.URL.Scheme, Host: req.Host, Opaque: "*"}
	return true
}
