package intercept

import (
	"crypto/tls"
	"fmt"
)

// What a bump's leaf may cost the appliance.
//
// A leaf is minted for each name a bumped client asks for that the
// minter's cache does not hold: about 0.16 ms of CPU under a P-256 CA
// (the generated one), but 1 ms under an operator's RSA-2048 CA and 6 ms
// under RSA-4096, since the CA's signature is what costs
// (certs.BenchmarkLeafMintRSACA). A client that bumps a fresh name on
// every connection (an origin with a wildcard certificate lets it) minted
// in every connection's goroutine at once, with no bound but its flows. So
// a mint takes one of its client's verification slots while it runs
// (verifySlots, verifyguard.go): a client's verifications and mints
// together hold at most maxClientVerifications processors, and all
// clients' at most globalVerifications, handed out in turn to the clients
// with the fewest under way, and among those to the one served least
// recently, as verifications are. A cached leaf takes no
// slot and waits for none: an honest client's names are mostly cached,
// and a flood of fresh ones delays its own mints first. A mint that waits
// for a slot as long as a verification may (verifyWait) never runs: the
// bump ends as an error, as a verification that waited that long does
// (mintFailed).
//
// The trust page's leaf takes no slot (serveTrustTLS mints through
// Minter.Leaf). It is one name, the configured trust host's, whatever
// case the client's SNI has: the minter mints it once (its singleflight)
// however many clients ask together, and then serves it from its cache
// until it is evicted (after 1,024 other names are minted, each in its
// client's slot) or refreshed (at half of its life). A flood can thus
// make the trust page mint at most once per 1,024 mints of its own. In a
// slot, at a limit of one (2 processors), the trust page waited behind a
// fresh-name flood once the flood had evicted its leaf, and was refused
// with an internal_error alert (review rev30b F1): the page an operator
// sends users to when bumping fails. Keeping its leaf from eviction
// instead would need the minter to pin a name, and would still leave its
// refresh, and its first mint, in a slot.

// leaf returns the leaf for name: the cached one, or one minted in a slot
// of the session's client.
func (s *session) leaf(name string) (*tls.Certificate, error) {
	m := s.ic.cfg.Minter
	if c, err := m.Cached(name); c != nil || err != nil {
		return c, err
	}
	release, err := s.ic.slots.acquire(newClientKey(s.Subject.Endpoint, s.Subject.Client), verifyWait(s.ic.cfg.HandshakeTimeout))
	if err != nil {
		return nil, fmt.Errorf("%w: not minted", err)
	}
	defer release()
	return m.Mint(name)
}

// mintFailed ends a bump whose leaf could not be had. A mint that ran and
// failed (the CA expired since the start, a name no leaf may carry) is
// refused, as it always was. One that never ran, its client's slots or
// the appliance's taken for as long as it could wait (errVerifyBusy,
// errVerifyQueue), is no decision of the policy, which allowed the bump:
// the record keeps action bump and says result error, as for a
// verification that never ran (bumpfail.go).
func (s *session) mintFailed(err error) {
	WriteAlert(s.client, AlertInternalError)
	if noVerdict(err) == nil {
		s.refuse("minting a leaf: " + err.Error())
		return
	}
	Abort(s.client)
	s.closeUpstream()
	s.Record.Result, s.Record.Error = "error", "minting a leaf: "+err.Error()
	s.finish()
}
