package destcheck

import (
	"testing"
)

// TestNAT64Destination: a client behind DNS64 (the Route 53 Resolver of an
// IPv6-only subnet synthesises 64:ff9b::/96 answers; that DNS never passes
// the GWLB) connects to 64:ff9b::c633:6407 with the name allowed.test,
// whose only address is 198.51.100.7; the appliance's own lookup, from a
// subnet without DNS64, gets that A record and no AAAA. The destination is
// the name's: the NAT gateway delivers it to 198.51.100.7. The check
// denied every such flow as a mismatch. Only the well-known prefix is
// read so: 64:ff9b:1::/48 and 6to4 addresses, and another embedded
// address, are still mismatches.
func TestNAT64Destination(t *testing.T) {
	srv := startServer(t)
	srv.Set("allowed.test", 60, addr("198.51.100.7"))
	c := newTestChecker(t, Config{Resolver: srv.Addr()}, nil)
	for _, dest := range []string{"198.51.100.7", "64:ff9b::c633:6407", "64:ff9b::198.51.100.7"} {
		if err := check(c, epA, "allowed.test", dest); err != nil {
			t.Errorf("allowed.test → %s (looked up): %v", dest, err)
		}
	}
	for _, dest := range []string{"64:ff9b::198.51.100.8", "64:ff9b:1::c633:6407", "64:ff9b:1:c633:64:700::", "2002:c633:6407::1", "::c633:6407", "64:ff9b::1:c633:6407"} {
		wantMismatchErr(t, check(c, epA, "allowed.test", dest), addr(dest).String()+" is not an address of allowed.test (resolves to 198.51.100.7)")
	}

	// The same for an answer relayed to the endpoint's clients (a DNS64
	// client that asked a resolver through the appliance for the A record).
	o := newTestChecker(t, Config{}, nil)
	o.Observe(epA, msg(t, "seen.test.", rr{name: "seen.test.", ttl: 60, addr: "192.0.2.1"}))
	if err := check(o, epA, "seen.test", "64:ff9b::c000:201"); err != nil {
		t.Errorf("seen.test → 64:ff9b::c000:201 (observed): %v", err)
	}
	wantMismatchErr(t, check(o, epA, "seen.test", "64:ff9b:1::c000:201"), "64:ff9b:1::c000:201 is not an address of seen.test (resolves to 192.0.2.1)")

	// A Host that is an IPv4 address, sent to its NAT64 form.
	if err := check(o, epA, "192.0.2.1", "64:ff9b::c000:201"); err != nil {
		t.Errorf("Host 192.0.2.1 → 64:ff9b::c000:201: %v", err)
	}
	if err := check(o, epA, "192.0.2.1", "2002:c000:201::1"); err == nil {
		t.Error("Host 192.0.2.1 → 2002:c000:201::1 passes")
	}
}
