package intercept

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"slices"
	"sync"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// The verification of each upstream connection of a bump.
//
// A bumped session may dial its destination again (redial): its first
// connection was closed (a keep-alive drop, a GOAWAY), or an HTTP/2
// client's concurrent streams need more. Each further connection is
// verified as the first was, and under a rule with
// allow_unverified_upstream one whose certificate fails is used all the
// same. Its result is its own: the first connection's says nothing about
// it. So each connection keeps the failure its rule accepted (setConn's
// verifyErr, the session's firstVerifyErr), each request's record takes
// the result of the connection it went over (usedConn), and the tls record
// says failed when any connection the session used failed. Without
// allow_unverified_upstream, a further connection whose certificate fails
// is refused, and so is the request that dialled it (a 502): its record,
// and the tls record, say failed all the same (redialRefusedError). A
// destination that verifies on the first connection and not on the next
// is what the tls-verify-failed query is there to find.

// unverifiedNote is the error of a record whose connection's certificate
// failed verification and was used because the rule accepts that.
const unverifiedNote = "upstream certificate accepted by rule: "

// redialer returns what completes the TLS handshake of each further
// upstream connection c of the bump (transport): ucfg as the first
// connection's, with the origin's groups as they stand now (groupsKey),
// and, for h1Only, ALPN offering http/1.1 alone. The certificate is
// verified for name; one that fails is refused, with a
// redialRefusedError, unless the rule accepts it, and then kept as c's
// verdict (noteRedialFailure).
func (s *session) redialer(ucfg *tls.Config, name string, groupsKey string) func(ctx context.Context, c net.Conn, h1Only bool) (net.Conn, error) {
	ic := s.ic
	return func(ctx context.Context, c net.Conn, h1Only bool) (net.Conn, error) {
		// Not a ClientHello with a name the policy in force denies
		// (connreload.go): nothing is sent on c.
		if err := s.dialDenied(); err != nil {
			c.Close()
			return nil, err
		}
		cfg := ucfg.Clone()
		sessions := ic.res.originSessions(s.Subject.Dest)
		cfg.ClientSessionCache = sessions
		// The groups as they stand now, not as at the first connection.
		// A redial teaches nothing: VerifyConnection runs before the
		// server's signature (or Finished) is checked, and the handshake
		// itself is the transport's.
		cfg.CurvePreferences = ic.groups.offer(groupsKey)
		if h1Only {
			cfg.NextProtos = slices.DeleteFunc(slices.Clone(cfg.NextProtos), func(p string) bool { return p != "http/1.1" })
		}
		var accepted, refused error // the failure the rule accepted, or refused
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			err := ic.verifyUpstream(cs, name, s.Subject)
			sessions.verified.Store(err == nil)
			if err != nil && !s.Decision.AllowUnverifiedUpstream {
				refused = err
				return err
			}
			accepted = err
			return nil
		}
		tc, err := s.handshakeUpstream(ctx, c, cfg)
		if err != nil && refused != nil && noVerdict(refused) == nil {
			// A verdict on the certificate (not a verification that never
			// ran, verifyguard.go): the request's record and the tls
			// record say so.
			rerr := &redialRefusedError{refused}
			s.noteRedialRefused(rerr)
			return nil, rerr
		}
		if err != nil || accepted == nil {
			return tc, err
		}
		if sc, ok := c.(*setConn); ok {
			sc.verifyErr = accepted // before the transport has it: no request sees it unset
		}
		s.noteRedialFailure(accepted)
		return tc, nil
	}
}

// verdicts is what a bumped session knows of its upstream connections'
// verification.
type verdicts struct {
	// firstErr is the failure of the first connection's certificate,
	// when the rule accepted it; set before any request.
	firstErr error
	mu       sync.Mutex
	// redialErr is the first failure of a further connection's
	// certificate that the rule accepted: for the tls record.
	redialErr error
	// refused says why the first further connection refused for its
	// certificate was: for the tls record. Text, not the error: x509's
	// holds the certificate message, for as long as the session lasts.
	refused string
}

// redialRefusedError is the failure of a further upstream connection
// whose certificate failed verification under a rule that does not accept
// that: the request that dialled it fails with it, and its record says
// upstream_verify failed (noteVerdict).
type redialRefusedError struct{ err error }

func (e *redialRefusedError) Error() string {
	return "upstream certificate refused: " + e.err.Error() + " (a further connection)"
}

func (e *redialRefusedError) Unwrap() error { return e.err }

// noteRedialRefused keeps err, a further connection refused for its
// certificate, for the tls record, unless one came before.
func (s *session) noteRedialRefused(err *redialRefusedError) {
	s.verdicts.mu.Lock()
	defer s.verdicts.mu.Unlock()
	if s.verdicts.refused == "" {
		s.verdicts.refused = err.Error()
	}
}

// noteRedialFailure keeps err, a further connection's verification
// failure the rule accepted, for the tls record, unless one came before.
func (s *session) noteRedialFailure(err error) {
	s.verdicts.mu.Lock()
	defer s.verdicts.mu.Unlock()
	if s.verdicts.redialErr == nil {
		s.verdicts.redialErr = err
	}
}

// verdictOf returns the verification failure the rule accepted for c, an
// upstream connection as the transport hands it to a request: nil when
// its certificate verified.
func (s *session) verdictOf(c net.Conn) error {
	if f, ok := c.(*framingConn); ok { // an HTTP/1 connection of http.Transport
		c = f.Conn
	}
	tc, ok := c.(*tls.Conn)
	if !ok {
		return nil
	}
	if sc, ok := tc.NetConn().(*setConn); ok { // a further connection
		return sc.verifyErr
	}
	return s.verdicts.firstErr
}

// noteRedialsInTLSRecord marks the tls record failed when a further
// connection's certificate failed, though the first one's verified:
// accepted by the rule, or refused.
func (s *session) noteRedialsInTLSRecord() {
	s.verdicts.mu.Lock()
	accepted, refused := s.verdicts.redialErr, s.verdicts.refused
	s.verdicts.mu.Unlock()
	if accepted == nil && refused == "" || s.Record.UpstreamVerify != "ok" {
		return
	}
	s.Record.UpstreamVerify = "failed"
	if accepted != nil {
		s.Record.Error = joinErrors(s.Record.Error, unverifiedNote+accepted.Error()+" (a further connection)")
	}
	if refused != "" {
		s.Record.Error = joinErrors(s.Record.Error, refused)
	}
}

// usedConn is the upstream connection a request went over, as the
// transport reports it (headDeadline.gotConn, h1Transport.RoundTrip):
// the last one, when it was tried on more than one.
type usedConn struct {
	mu sync.Mutex
	c  net.Conn
}

// usedConnKey is the context key of a request's usedConn.
type usedConnKey struct{}

// trackConn returns req with a usedConn in its context, when the session's
// connections may differ in their verification (a bump whose rule accepts
// an unverified upstream); else req and nil.
func (s *session) trackConn(req *http.Request, https bool) (*http.Request, *usedConn) {
	if !https || !s.Decision.AllowUnverifiedUpstream {
		return req, nil
	}
	u := &usedConn{}
	return req.WithContext(context.WithValue(req.Context(), usedConnKey{}, u)), u
}

// usedConnOf returns the usedConn in ctx, or nil.
func usedConnOf(ctx context.Context) *usedConn {
	u, _ := ctx.Value(usedConnKey{}).(*usedConn)
	return u
}

// set takes c, the connection the request goes over; u may be nil.
func (u *usedConn) set(c net.Conn) {
	if u == nil {
		return
	}
	u.mu.Lock()
	u.c = c
	u.mu.Unlock()
}

// noteVerdict records on rec the verification of the connection the
// request went over, if it got one; or, when the round trip failed with
// err, a further connection refused for its certificate (its error, which
// says why, is the record's).
func (s *session) noteVerdict(rec *records.Record, u *usedConn, err error) {
	// AsType, not As: As's target escaped, one allocation per request.
	if _, refused := errors.AsType[*redialRefusedError](err); refused {
		rec.UpstreamVerify = "failed"
		return
	}
	if u == nil {
		return
	}
	u.mu.Lock()
	c := u.c
	u.mu.Unlock()
	if c == nil {
		return // it never got one: the record keeps the session's
	}
	if err := s.verdictOf(c); err != nil {
		rec.UpstreamVerify = "failed"
		rec.Error = joinErrors(rec.Error, unverifiedNote+err.Error())
		return
	}
	rec.UpstreamVerify = "ok"
}
