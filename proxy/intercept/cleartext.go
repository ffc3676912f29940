package intercept

import (
	"net/http"
	"net/url"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// serveHTTP serves a cleartext HTTP connection. Its first request decides
// the connection: a denied host gets a 403 and the connection ends before
// anything reaches the destination; each later request is decided again.
// An h2c connection has no first request here: each of its streams is
// decided as it comes.
//
// The host decided, recorded and forwarded is the request's authority as
// net/http reads it (RFC 9112 §3.2.2): an absolute-form target's, whatever
// the Host header says, else the Host header. goproxy's reader takes the
// same one and drops the Host header, and the transport sends it as Host:
// a conflicting Host header never leaves the appliance.
func (s *session) serveHTTP() {
	s.h2 = s.H2C
	s.Record.Kind = "http"
	host, unreadable := "", false
	if req := s.HTTP; req != nil {
		authority := req.Authority()
		if authority == "" { // origin-form, or an absolute-form target without one
			authority = req.Host
		}
		canon, err := canonicalHost(authority)
		if err == nil {
			authority = canon
		}
		unreadable = err != nil // refused with a 400 as goproxy hands it over
		host = hostOnly(authority)
		s.Record.Method, s.Record.Host, s.Record.Scheme = req.Method, authority, "http"
		if u, err := url.ParseRequestURI(req.Target); err == nil { // as net/http reads the later ones
			s.Record.Path = recordPath(u)
		}
	}
	// HTTP/2 with prior knowledge comes with no request yet, so nothing to
	// decide the connection on: a decision without a name would refuse
	// what only rules with domains allow, and in HTTP/1, which an HTTP/2
	// client cannot read. Each stream is decided on its :authority
	// (roundTrip); what the addresses alone deny never got this far.
	// Nor is a head that classification saw only the start of, and no
	// name in: its Host may be further on (after a pause, or 16 KiB of
	// other fields), and a decision on none would refuse a request the
	// policy allows. It is decided whole, like the later ones.
	noNameYet := s.HTTPHeadCut && host == ""
	if !s.H2C && !unreadable && !noNameYet && !s.ic.IsTrustHost(host) {
		subj := s.Subject
		subj.Protocol, subj.Domain = policy.ProtoHTTP, host
		d := s.Policy.Decide(subj)
		s.Record.Rule, s.Record.Action, s.Record.Policy = d.Rule, d.Action.String(), d.Policy
		if d.Action == policy.Deny {
			writeDenyResponse(s.client, d.Rule, host)
			s.closeUpstream()
			s.ic.denied.Add(1)
			s.Record.Status = http.StatusForbidden
			s.Record.Action, s.Record.Result, s.Record.Error = "deny", "denied", "denied by policy"
			s.writeRecord() // the client has its answer: the linger below is no part of it
			// Its body, if any, is unread: closed at once, the
			// connection would be reset, and the 403 with it.
			_ = lingerClose(s.client)
			s.Done()
			return
		}
		// An allowed request is decided again, and its destination
		// checked, as goproxy hands it over (roundTrip): the first
		// request is no different from the later ones.
	}
	s.serveGoproxy("http", s.transport(s.Upstream, nil))
}
