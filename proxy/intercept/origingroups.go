package intercept

import (
	"crypto/tls"
	"net/netip"
	"slices"
	"time"
)

// Post-quantum key shares towards origins, offered where they are used.
//
// crypto/tls offers hybrid post-quantum key exchanges (X25519MLKEM768
// first) on every upstream handshake, and making their ML-KEM key pairs is
// the dearest part of a ClientHello: in a perf profile of new bumped
// connections, 4% of the appliance's CPU. An origin that picks a classical
// group never uses them. So the interceptor remembers, per destination and
// name, an origin that chose a classical group when the hybrids were on
// offer, and offers it classical groups only, for classicalOriginMemory;
// then the hybrids are offered again, so an origin that turns them on gets
// them within that time. An origin that chose a hybrid, or whose first
// handshake of a connection failed, is forgotten: the next one offers
// crypto/tls's defaults.
//
// Only the first upstream handshake of a bumped connection teaches, once it
// has completed and its certificate verified: the handshake authenticates
// its whole transcript, the offer and the choice included (in TLS 1.3 by
// the server's signature, or for a resumed session by the Finished MAC of
// a session that was itself verified), so no one on the path can make the
// appliance drop the hybrids for an origin whose certificate it checked.
// A handshake a rule accepted unverified teaches nothing, nor do further
// upstream connections of the same client connection (their handshakes
// are the transport's; they are offered the groups as they stand when
// they are dialled).

// classicalOriginMemory is how long an origin that chose a classical group
// is offered classical groups only.
const classicalOriginMemory = time.Hour

// classicalGroups is crypto/tls's default list without the post-quantum
// hybrids, in its order: X25519's key share is sent, the others are listed
// for a HelloRetryRequest.
var classicalGroups = []tls.CurveID{tls.X25519, tls.CurveP256, tls.CurveP384, tls.CurveP521}

// originGroups remembers the origins that chose a classical group, keyed
// by originGroupsKey.
type originGroups struct{ classical *expiringSet[string] }

func newOriginGroups(max int) *originGroups {
	return &originGroups{classical: newExpiringSet[string](max)}
}

// originGroupsKey names an origin: the destination dialled and the SNI.
func originGroupsKey(dest netip.AddrPort, sni string) string {
	return dest.String() + "|" + sni
}

// offer returns the groups to offer the origin key: nil for crypto/tls's
// defaults, or classicalGroups.
func (g *originGroups) offer(key string) []tls.CurveID {
	if g.classical.has(key) {
		return classicalGroups
	}
	return nil
}

// learn takes what a verified handshake with the origin key chose when
// offered crypto/tls's defaults. A choice among classical groups only
// says nothing of the hybrids, and must not extend the memory: an origin
// in constant use would never be offered them again.
func (g *originGroups) learn(key string, chosen tls.CurveID) {
	if isClassical(chosen) {
		g.classical.add(key, classicalOriginMemory, time.Time{})
	} else {
		g.classical.remove(key)
	}
}

// forget drops what is known of the origin key.
func (g *originGroups) forget(key string) { g.classical.remove(key) }

// isClassical reports a group of classicalGroups, or none at all (a TLS 1.2
// handshake with RSA key exchange). Whatever else was chosen (a hybrid, a
// group newer than this code) keeps the defaults on offer.
func isClassical(id tls.CurveID) bool {
	return id == 0 || slices.Contains(classicalGroups, id)
}
