package certs

import (
	"log/slog"
	"time"
)

// ExpiryWarning is how close to its NotAfter a CA must be for WarnExpiry
// to warn: every leaf it signs is capped at the CA's own expiry, and a
// new CA has to reach every client before the old one ends.
const ExpiryWarning = 30 * 24 * time.Hour

// WarnExpiry logs, when now is within ExpiryWarning of the CA's NotAfter,
// a warning that it expires soon, and once now is past it an error that
// it has expired (every connection to be bumped is then refused, and a
// restart refuses the CA). It reports whether it logged. attrs name where
// the CA came from. Load, Parse and ParseBundle call it; a running
// appliance calls it again every day, since it may run for months after
// the one message at start.
func (ca *CA) WarnExpiry(now time.Time, attrs ...any) bool {
	left := ca.notAfter.Sub(now)
	if left >= ExpiryWarning {
		return false
	}
	attrs = append(attrs[:len(attrs):len(attrs)], "not_after", ca.notAfter.UTC(), "fingerprint", ca.fingerprint)
	if left <= 0 {
		slog.Error("CA has expired: every connection the policy bumps is refused, and a restart refuses the CA; load a new CA and hand it to the clients", attrs...)
		return true
	}
	slog.Warn("CA expires soon; every leaf it signs expires with it",
		append(attrs, "expires_in", left.Round(time.Minute).String())...)
	return true
}
