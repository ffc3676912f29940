package intercept

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"time"
)

// Upstream verifications, remembered.
//
// Every bumped connection has its origin's certificate verified, though an
// origin presents the same chain for days: x509 chain building and a
// signature check per link, about 3% of a new bumped connection's CPU. So
// a chain that verified for a name is remembered, by the SHA-256 of the
// certificates as presented and the name, until the chain x509 built
// expires (see chainsExpiry) or verifiedChainMemory has passed. The roots are
// the interceptor's for its whole life, so the same chain and name verify
// the same way until then. Failures are remembered too, with their reason,
// but only for a minute (verifyguard.go): what bounds a hostile origin's
// cost, not a saving on honest ones.

// verifiedChainMemory bounds how long a verification is taken as read.
const verifiedChainMemory = 10 * time.Minute

// verifiedChainsSize bounds the verifications remembered.
const verifiedChainsSize = 1024

// verifiedChain names a chain as presented and the name it verified for.
type verifiedChain struct {
	name  string
	chain [sha256.Size]byte
}

func newVerifiedChain(presented []*x509.Certificate, name string) verifiedChain {
	h := sha256.New()
	var n [4]byte
	for _, c := range presented { // each length first: no two chains hash the same bytes
		binary.BigEndian.PutUint32(n[:], uint32(len(c.Raw)))
		h.Write(n[:])
		h.Write(c.Raw)
	}
	k := verifiedChain{name: name}
	h.Sum(k.chain[:0])
	return k
}

// chainsExpiry returns when the chains x509 built stop verifying: the
// longest-lived chain's first certificate to expire.
func chainsExpiry(chains [][]*x509.Certificate) time.Time {
	var best time.Time
	for _, chain := range chains {
		var first time.Time
		for _, c := range chain {
			if first.IsZero() || c.NotAfter.Before(first) {
				first = c.NotAfter
			}
		}
		if first.After(best) {
			best = first
		}
	}
	return best
}
