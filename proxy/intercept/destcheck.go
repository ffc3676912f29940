package intercept

import (
	"context"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// The destination check of the interceptor's names (a bump's SNI, a
// request's Host), and what a pass of it rested on.
//
// A check may pass on a DNS answer the appliance observed on the data
// path, which a reload of a changed policy file forgets so that it stops
// vouching at once: the old policy may have let the client ask a DNS
// server of its own. So a pass keeps what it rested on (destVouch), and
// after a reload that forgot the answers, a tunnel, a request under way or
// the connection's own name whose pass rested on one is checked again, as
// a spliced connection is (proxy/destcheck.go): without this a tunnel
// opened on the client's own answer went on for ever. The lookup is made
// where the recheck is, in the direction that found the reload (or the
// request that asked), never in the reload's own path.

// destVouch is what a passed destination check rested on: an answer
// observed at a generation of the observed answers (Config.DNSGeneration),
// or what a reload leaves in place (the appliance's own lookup, the name
// being the address): the zero value, a pass that holds.
type destVouch struct {
	observed bool
	gen      uint64
}

// needsDestinationCheck reports whether a request for host that decision d
// of pol lets through must first be tied to the destination address: d rests on
// the name (a rule with domains), the policy asks for the check, there is
// one to ask, and nothing proved the name already. A bumped connection's
// verified upstream certificate is that proof for every name it covers:
// the destination holds a key for the name. Not under a bump whose rule
// accepts an unverified upstream: which connection a request goes over is
// the transport's to choose after the check, and a further one may be one
// whose certificate failed (redial.go).
func (s *session) needsDestinationCheck(pol *policy.Policy, d policy.Decision, host string) bool {
	if !d.ByName || host == "" || pol.DestinationCheck() != policy.CheckDNS || s.ic.cfg.DestinationCheck == nil {
		return false
	}
	return s.upstreamCert == nil || s.Decision.AllowUnverifiedUpstream || s.upstreamCert.VerifyHostname(host) != nil
}

// checkDestination asks whether the session's destination is an address
// host resolves to, bounded by DestinationCheckTimeout, and says what a
// pass rested on. Its error is the check's own, recorded as it is: it
// names the address and the name.
func (s *session) checkDestination(ctx context.Context, host string) (destVouch, error) {
	ctx, cancel := context.WithTimeout(ctx, s.ic.cfg.DestinationCheckTimeout)
	defer cancel()
	// Read before the check: a forget that lands during it then counts as
	// after it, and the pass is checked again at worst once too often.
	gen := s.ic.observedGen()
	dest := s.Subject.Dest.Addr().Unmap()
	if err := s.ic.cfg.DestinationCheck(ctx, s.Subject.Endpoint, host, dest); err != nil {
		return destVouch{}, err
	}
	if s.ic.cfg.DNSGeneration == nil || s.ic.cfg.DestinationLookedUp != nil && s.ic.cfg.DestinationLookedUp(host, dest) {
		return destVouch{}, nil
	}
	return destVouch{observed: true, gen: gen}, nil
}

// observedGen returns the observed answers' generation, or 0 without
// DNSGeneration: then no pass is ever withdrawn.
func (ic *Interceptor) observedGen() uint64 {
	if ic.cfg.DNSGeneration == nil {
		return 0
	}
	return ic.cfg.DNSGeneration()
}

// checkAfterReload decides, under pol (loaded by a reload), the
// destination check of host, which rests on the name: "" if what it is
// for may go on, else why it ends. destCheck is the check as it stands
// ("ok", "mismatch", "" if none was made) and v what its pass rested on;
// a check made here updates both, and checkErr on a mismatch. A check
// never made, or whose pass rested on an observed answer a reload has
// forgotten since, is made here (policy.DestCheckWithdrawn); any other
// stands (policy.DestCheckAfterReload). The caller holds the lock of all
// three. A check that ctx cancelled is no answer: its caller, which
// cancelled it, puts back what was there (the "mismatch" written here).
func (s *session) checkAfterReload(ctx context.Context, pol *policy.Policy, host string, destCheck, checkErr *string, v *destVouch) string {
	check := func() bool {
		nv, err := s.checkDestination(ctx, host)
		if err != nil {
			*destCheck, *checkErr = "mismatch", err.Error()
			return true
		}
		*destCheck, *v = "ok", nv
		return false
	}
	if *destCheck == "ok" && v.observed && s.ic.observedGen() != v.gen {
		why, _ := pol.DestCheckWithdrawn(check)
		return why
	}
	why, _ := pol.DestCheckAfterReload(*destCheck, check)
	return why
}
