package appliance

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/gwlbproxy/gwlbproxy/certs"
)

// LoadCA returns the interception CA: the secret named by --ca-secret, the
// files named by --ca-cert and --ca-key, or the one kept in --state-dir,
// created on first start.
func LoadCA(o *Options) (*certs.CA, error) {
	if err := CheckCAFlags(o); err != nil {
		return nil, err
	}
	switch {
	case o.CASecret.ID != "":
		// Bounded by the secret's timeout: a start-up that cannot reach
		// Secrets Manager fails, and systemd restarts it, rather than hangs.
		ca, err := certs.LoadSecret(context.Background(), o.CASecret)
		if err != nil {
			return nil, fmt.Errorf("loading the CA: %w", err)
		}
		return ca, nil
	case o.CACert != "" && o.CAKey != "":
		ca, err := certs.Load(o.CACert, o.CAKey)
		if err != nil {
			return nil, fmt.Errorf("loading the CA: %w", err)
		}
		return ca, nil
	}
	ca, created, err := certs.LoadOrCreate(o.StateDir)
	if err != nil {
		return nil, fmt.Errorf("CA in --state-dir %s: %w", o.StateDir, err)
	}
	if created {
		slog.Info("created a new interception CA; hand it to clients (see `gwlbproxy ca trust`)",
			"dir", o.StateDir, "fingerprint", ca.Fingerprint())
	}
	return ca, nil
}

// warnCAKey logs, when leaves minted under the CA's key cost several times
// what they cost under an ECDSA P-256 CA, a warning naming the cost, and
// reports whether it logged. The appliance mints a leaf for every name a
// bumped client asks for that its cache does not hold, and it is the CA's
// signature that costs (certs.BenchmarkLeafMintRSACA and
// BenchmarkLeafMintECCA): about 0.16 ms a leaf under P-256, 1 ms under
// RSA-2048 or P-384, 2.5 ms under P-521, 6 ms under RSA-4096. Mints are
// bounded as verifications are (two under way per client, half the
// processors for all; proxy/intercept/mintslot.go), but a client that
// bumps a fresh name per connection fills that share 6 to 40 times
// sooner. An operator importing a corporate CA is told nothing else: the
// appliance's own CA is P-256. New calls it once, at start.
func warnCAKey(ca *certs.CA) bool {
	name, cost := dearCAKey(ca.Certificate().PublicKey)
	if cost == "" {
		return false
	}
	slog.Warn(fmt.Sprintf("the interception CA's key is %s: each leaf minted for a name not cached costs %s of CPU under it, "+
		"against about 0.16 ms under an ECDSA P-256 CA, so bumping many new names (a client varying the SNI) costs that much more; "+
		"when clients are next handed a CA, prefer an ECDSA P-256 one (gwlbproxy ca init makes one)", name, cost),
		"key_type", caKeyType(ca), "fingerprint", ca.Fingerprint())
	return true
}

// dearCAKey names a CA key whose signature makes each leaf's mint cost
// several times a P-256 CA's, and about what a mint then costs; for any
// other key it returns empty strings. Go signs P-256 in assembly but
// P-384 and P-521 in generic code, and RSA grows with the key's size.
func dearCAKey(pub any) (name, cost string) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		bits := k.N.BitLen()
		return fmt.Sprintf("RSA-%d", bits), rsaMintCost(bits)
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P384():
			return "ECDSA P-384", "about 1 ms"
		case elliptic.P521():
			return "ECDSA P-521", "about 2.5 ms"
		}
	}
	return "", ""
}

// rsaMintCost is about what a leaf's mint costs under an RSA CA key of
// bits, as measured on a 2-vCPU machine (BenchmarkLeafMintRSACA): the
// private key operation grows with about the cube of the size.
func rsaMintCost(bits int) string {
	switch {
	case bits <= 2048:
		return "about 1 ms"
	case bits <= 3072:
		return "about 3 ms"
	case bits <= 4096:
		return "about 6 ms"
	}
	return "well over 6 ms"
}

// caKeyType names the CA's key for /stats: ecdsa-p256 (the appliance's
// own), ecdsa-p384, rsa-4096, ed25519.
func caKeyType(ca *certs.CA) string {
	switch k := ca.Certificate().PublicKey.(type) {
	case *ecdsa.PublicKey:
		return "ecdsa-" + strings.ToLower(strings.ReplaceAll(k.Curve.Params().Name, "-", ""))
	case *rsa.PublicKey:
		return fmt.Sprintf("rsa-%d", k.N.BitLen())
	case ed25519.PublicKey:
		return "ed25519"
	}
	return "other"
}

// caExpiryCheckEvery is how often a running appliance repeats the CA's
// expiry warning (certs.CA.WarnExpiry); a test shortens it.
var caExpiryCheckEvery = 24 * time.Hour

// watchCAExpiry repeats the CA's expiry warning every interval until ctx
// ends: within certs.ExpiryWarning of its end a warning, once past it an
// error. Loading the CA warns only at start, and an appliance may run for
// months after that; /stats and /metrics (ca) say it too, for alerts.
func (a *Appliance) watchCAExpiry(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			a.ca.WarnExpiry(now)
		}
	}
}

// CheckCAFlags rejects combinations of the CA flags that name more than one
// CA, or half of one.
func CheckCAFlags(o *Options) error {
	switch {
	case o.CASecret.ID != "" && (o.CACert != "" || o.CAKey != ""):
		return fmt.Errorf("--ca-secret and --ca-cert/--ca-key both name a CA: give one or the other")
	case o.CASecret.ID == "" && (o.CASecret.Region != "" || o.CASecret.Endpoint != ""):
		return fmt.Errorf("--ca-secret-region and --ca-secret-endpoint need --ca-secret")
	case (o.CACert != "") != (o.CAKey != ""):
		return fmt.Errorf("--ca-cert and --ca-key go together")
	}
	return nil
}

// CheckTrustHost refuses a --trust-host that is no host name: the CA-trust
// page is served for requests whose Host is it (intercept.IsTrustHost), so
// an empty name or one with a space would never be asked for, and the page
// URL the install commands print would be broken. A host name is labels of
// letters, digits and hyphens (not first or last), 1 to 63 characters each,
// 253 in all, without a final dot, and whose last label is not all
// digits: that is an IPv4 address (or no name a resolver could hold), and
// every plain-HTTP request naming that address, to any destination, would
// get the page instead of what it asked for.
func CheckTrustHost(h string) error {
	bad := func(why string) error { return fmt.Errorf("--trust-host %q: %s", h, why) }
	if h == "" {
		return bad("want a host name, such as " + certs.DefaultTrustHost)
	}
	if len(h) > 253 {
		return bad("longer than 253 characters")
	}
	labels := strings.Split(h, ".")
	for _, label := range labels {
		if label == "" || len(label) > 63 {
			return bad("each dot-separated label must have 1 to 63 characters")
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return bad("a label may not begin or end with a hyphen")
		}
		for _, r := range label {
			if !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '-') {
				return bad(fmt.Sprintf("%q is not allowed in a host name (letters, digits, hyphens and dots)", r))
			}
		}
	}
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return bad("an address, or a name whose last label is all digits: want a host name")
	}
	return nil
}
