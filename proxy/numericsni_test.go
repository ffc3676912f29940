package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"strings"
	"testing"
)

// TestNumericSNIRefusedUnread: an SNI of digits and dots that is no IPv4
// literal ("123", "1.2.3"), sent by a real crypto/tls client (which sends
// it: it is no IP address), to a destination a rule bumps by its address
// and accepts unverified. No leaf can be minted for such a name. It used
// to be bumped: the upstream handshake ran and sent the name, and only
// then the minting failed, recorded as a denial by the rule that allowed
// it. Now it is an unreadable ClientHello, refused before any byte goes
// to the destination, as other names no DNS name holds are: a
// handshake_failure alert, a tls record with no rule and
// "ClientHello could not be read".
func TestNumericSNIRefusedUnread(t *testing.T) {
	r := newClsRig(t, `
policy:
  default: deny
  rules:
    - name: legacy-by-address
      dest_cidrs: ["127.0.0.0/8"]
      action: bump
      allow_unverified_upstream: true
`, clsOptions{bump: true})
	roots := x509.NewCertPool()
	roots.AddCert(r.ca.Certificate())
	// And names longer than RFC 1035 allows (a label over 63 bytes, a
	// name over 253), which the minter refuses too: the upstream
	// handshake sent them, then the mint failed, recorded as a denial by
	// the rule that allowed them.
	for _, name := range []string{"123", "1.2.3", strings.Repeat("a", 64) + ".example", strings.Repeat(strings.Repeat("b", 63)+".", 4)[:254]} {
		t.Run(name[:min(len(name), 20)], func(t *testing.T) {
			c := r.dial(t, r.tlsDest)
			defer c.Close()
			err := tls.Client(c, &tls.Config{ServerName: name, RootCAs: roots}).Handshake()
			if err == nil || !strings.Contains(err.Error(), "handshake failure") {
				t.Errorf("client handshake: %v, want a handshake_failure alert", err)
			}
			rec := r.record(t, c, "tls")
			t.Logf("record: action %s rule %q result %s bytes_out %d error %q", rec.Action, rec.Rule, rec.Result, rec.BytesOut, rec.Error)
			if rec.Action != "deny" || rec.Rule != "" || rec.Result != "denied" || rec.BytesOut != 0 ||
				!strings.HasPrefix(rec.Error, "ClientHello could not be read") || !strings.Contains(rec.Error, "invalid host_name") {
				t.Errorf("record %+v, want an unreadable ClientHello's, nothing sent to the destination", rec)
			}
		})
	}
}
