package intercept_test

import (
	"crypto/tls"
	"crypto/x509"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/certs"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// TestMintTakesVerifySlot: a leaf not cached is minted in one of its
// client's verification slots, so a client bumping fresh names (under an
// operator's RSA CA, 1 to 6 ms a mint) holds at most its two slots, and
// all clients half the processors. With another client's slots full, this
// client's mint proceeds at once. With its own full, a cached name needs
// no slot; an uncached one waits, is minted as soon as a slot is given
// back, and, when none is for as long as a verification may wait, ends
// the bump as an error (action bump, nothing minted), as a verification
// does. With everyone's slots held by other clients, the same, naming the
// appliance's slots. Before, mints took no slot: every bump here was
// minted at once.
func TestMintTakesVerifySlot(t *testing.T) {
	ca, err := certs.Generate("mint slot test CA")
	if err != nil {
		t.Fatal(err)
	}
	// One leaf cached: minting a name evicts the other, whose chain's
	// verification is still remembered, so only its mint needs a slot.
	minter, err := certs.NewMinter(ca, certs.MinterOptions{CacheSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	r := newRig(t, testPolicy, func(c *intercept.Config) { c.Minter = minter })
	pool := x509.NewCertPool()
	pool.AddCert(ca.TrustAnchor())
	upLeaf := r.upLeaf("*.example.test")
	bump := func(name string) error { return r.bumpHandshake(t, upLeaf, pool, name) }
	lastRecord := func() string {
		t.Helper()
		recs := r.records()
		rec := recs[len(recs)-1]
		if rec.Action != "bump" || rec.Result != "error" || rec.UpstreamVerify != "ok" {
			t.Errorf("record %+v", rec)
		}
		return rec.Error
	}
	wantMints := func(n uint64) {
		t.Helper()
		if s := minter.Stats(); s.Mints != n {
			t.Errorf("%d mints, want %d (%+v)", s.Mints, n, s)
		}
	}
	const a, b = "a.example.test", "b.example.test"
	for _, name := range []string{a, b} {
		if err := bump(name); err != nil {
			t.Fatalf("bump %s, every slot free: %v", name, err)
		}
	}
	verified := intercept.Verifications(r.ic)
	wantMints(2)

	// The client's own slots, and everyone's, first; everyone's at the end.
	intercept.SetVerificationLimit(r.ic, 2*intercept.MaxClientVerifications)
	hold := func(client netip.Addr, n int) (held []func()) {
		for range n {
			held = append(held, intercept.HoldVerifySlot(r.ic, testEndpoint, client))
		}
		return held
	}
	releaseAll := func(held []func()) {
		for _, release := range held {
			release()
		}
	}
	other := netip.MustParseAddr("198.51.100.8")
	held := hold(other, intercept.MaxClientVerifications)
	start := time.Now()
	if err := bump(a); err != nil {
		t.Fatalf("a fresh mint beside another client's full slots: %v", err)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("a fresh mint beside another client's full slots took %s", d)
	}
	wantMints(3)
	releaseAll(held)

	held = hold(testClient, intercept.MaxClientVerifications)
	if err := bump(a); err != nil {
		t.Fatalf("a cached name with the client's slots full: %v", err)
	}
	wantMints(3)
	if err := bump(b); err == nil || !strings.Contains(err.Error(), "internal error") {
		t.Errorf("a fresh mint with the client's slots full: %v, want an internal error alert", err)
	}
	if got, want := lastRecord(), "minting a leaf: the client's 2 verifications and leaf mints under way did not end in time: not minted"; got != want {
		t.Errorf("error %q, want %q", got, want)
	}
	wantMints(3)

	// A slot given back while the mint waits: minted then.
	done := make(chan error, 1)
	go func() { done <- bump(b) }()
	for deadline := time.Now().Add(waitLimit); intercept.VerifyWaiting(r.ic) == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the mint never waited for a slot")
		}
	}
	held[0]()
	if err := <-done; err != nil {
		t.Errorf("a mint given a slot while it waited: %v", err)
	}
	wantMints(4)
	releaseAll(held[1:])

	// Everyone's slots held by other clients.
	intercept.SetVerificationLimit(r.ic, 2)
	held = hold(other, 1)
	held = append(held, hold(netip.MustParseAddr("198.51.100.9"), 1)...)
	if err := bump(a); err == nil {
		t.Error("a fresh mint with everyone's slots held succeeded")
	}
	if got, want := lastRecord(), "minting a leaf: the appliance's verifications and leaf mints under way did not end in time: not minted"; got != want {
		t.Errorf("error %q, want %q", got, want)
	}
	wantMints(4)
	releaseAll(held)
	if n := intercept.Verifications(r.ic) - verified; n != 0 {
		t.Errorf("%d verifications after the first two bumps, want none: the mints alone were under test", n)
	}
}

// bumpHandshake bumps one connection to an upstream serving upLeaf, its
// client asking for name and trusting pool, and returns the client's
// handshake error once the session is done.
func (r *rig) bumpHandshake(t *testing.T, upLeaf *tls.Certificate, pool *x509.CertPool, name string) error {
	t.Helper()
	upEnd, _ := r.startUpstreamTCP(upLeaf, "http/1.1")
	c, sv := r.connect(upEnd, tlsDest)
	client := tls.Client(c, &tls.Config{ServerName: name, RootCAs: pool})
	client.SetDeadline(time.Now().Add(waitLimit))
	err := client.Handshake()
	client.Close()
	sv.waitDoneOnce(t)
	return err
}
