package intercept

import (
	"context"
	"errors"
	"net"
)

// upstreamHandshakeFailed ends a bump whose upstream handshake failed: the
// client gets a handshake_failure alert, and the record says what
// happened. Only a certificate that was seen and failed verification is
// recorded as such (upstream_verify: failed) and, unless the rule accepts
// it, refused as a denial, as a completed handshake with that certificate
// would be. Anything else (the destination closed, timed out, spoke no
// TLS, or no version or cipher in common, or failed after its certificate
// verified; or the verification never ran, the client's slots or the
// appliance's taken for too long: errVerifyBusy, errVerifyQueue,
// verifyguard.go) is no
// verdict on a certificate and no decision of the policy, which allowed
// the bump: the record keeps action bump, leaves upstream_verify out, and
// says result error (timeout for a handshake that ran out of time), as for
// a destination that could not be dialled. classicalOnly says the
// ClientHello offered classical key exchange groups only.
func (s *session) upstreamHandshakeFailed(err error, classicalOnly, verifyRan bool, verifyErr error) {
	WriteAlert(s.client, AlertHandshakeFailure)
	reason := "upstream TLS handshake: " + err.Error()
	if classicalOnly {
		reason += " (classical key exchange groups offered only)"
	}
	if verifyRan && verifyErr != nil && noVerdict(verifyErr) == nil {
		s.Record.UpstreamVerify = "failed"
		if !s.Decision.AllowUnverifiedUpstream {
			s.refuse("upstream certificate: " + verifyErr.Error() + "; " + reason)
			return
		}
		reason = "upstream certificate accepted by rule: " + verifyErr.Error() + "; " + reason
	}
	result := "error"
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout() {
		result = "timeout"
	}
	Abort(s.client)
	s.Upstream.Close()
	s.Record.Result, s.Record.Error = result, reason
	s.finish()
}
