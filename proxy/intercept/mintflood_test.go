package intercept_test

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/certs"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// mintFlood plays another client's fresh-name flood on ic's slots: flood
// mints (an RSA-4096 CA's, about 5 ms each), each queued again as soon
// as it ends, from one client, until the returned stop is called. It
// returns once all but that client's two are waiting for a slot, so that
// whatever queues next queues behind them.
func mintFlood(t *testing.T, ic *intercept.Interceptor, flood int) (stop func()) {
	t.Helper()
	hostile := netip.MustParseAddr("198.51.100.66")
	done := make(chan struct{})
	var wg sync.WaitGroup
	for range flood {
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				release, err := intercept.AcquireVerifySlot(ic, testEndpoint, hostile, 10*time.Second)
				if err != nil {
					continue
				}
				time.Sleep(5 * time.Millisecond) // the mint: load, not a proof
				release()
			}
		})
	}
	stop = func() { close(done); wg.Wait() }
	if !waitFor(t, "the flood's mints queued", waitLimit, func() bool {
		return intercept.VerifyWaiting(ic) >= flood-intercept.MaxClientVerifications
	}) {
		stop()
		t.Fatalf("%d of the flood's %d mints queued", intercept.VerifyWaiting(ic), flood)
	}
	return stop
}

// TestFreshMintBesideMintFlood: with one slot for everyone (a 2-processor
// appliance, the deploy default), another client's fresh-name flood keeps
// 300 mints queued (1.5 s of them, more than a verification or a mint
// may wait here: 1 s); this client's bump of a name not seen before
// verifies the origin's chain for it, then mints its leaf, each in a slot
// after one of the flood's, not after all of those queued before it.
// Before, the slot went back to the flooding client each time, its
// running count 0 again as a mint ended: the honest bump waited out its
// turn and failed with a handshake_failure alert, recorded "upstream TLS
// handshake: the appliance's verifications and leaf mints under way did
// not end in time: not verified" (review rev30b F1; its probe, with the
// chain verified already, failed the mint the same way).
func TestFreshMintBesideMintFlood(t *testing.T) {
	for _, limit := range []int{1, 2} {
		r := newRig(t, testPolicy)
		intercept.SetVerificationLimit(r.ic, limit)
		pool := x509.NewCertPool()
		pool.AddCert(r.ca.TrustAnchor())
		upLeaf := r.upLeaf("*.example.test")
		bump := func(name string) error { return r.bumpHandshake(t, upLeaf, pool, name) }
		stop := mintFlood(t, r.ic, 300)
		start := time.Now()
		err := bump("fresh.example.test")
		took := time.Since(start)
		stop()
		recs := r.records()
		last := recs[len(recs)-1]
		t.Logf("limit %d: fresh-name bump after %v: %v; record %s/%s %q", limit, took, err, last.Action, last.Result, last.Error)
		if err != nil || last.SNI != "fresh.example.test" || last.Result != "ok" {
			t.Errorf("limit %d: an honest client's fresh-name bump beside another client's mint flood: %v (record %s %s/%s %q)",
				limit, err, last.SNI, last.Action, last.Result, last.Error)
		}
	}
}

// TestTrustPageBesideMintFlood: the trust page's leaf, evicted from the
// minter's cache (here a cache of one leaf, and another name minted
// since; a fresh-name flood evicts it from the 1,024 of a real one), is
// minted with no slot: with one slot for everyone and another client's
// flood of mints queued, the trust page is served at once, and its page
// too. Before, its mint waited in a slot behind the flood, and the page
// was refused with an internal_error alert, recorded "minting a leaf:
// the appliance's verifications and leaf mints under way did not end in
// time: not minted" (review rev30b F1).
func TestTrustPageBesideMintFlood(t *testing.T) {
	ca, err := certs.Generate("trust page flood CA")
	if err != nil {
		t.Fatal(err)
	}
	minter, err := certs.NewMinter(ca, certs.MinterOptions{CacheSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	r := newRig(t, "policy:\n  default: deny\n", func(c *intercept.Config) {
		c.Minter = minter
		c.TrustHost = "gwlbproxy.internal"
		c.Trust = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("pem")) })
	})
	intercept.SetVerificationLimit(r.ic, 1)
	pool := x509.NewCertPool()
	pool.AddCert(ca.TrustAnchor())
	for _, name := range []string{"gwlbproxy.internal", "evicts.example.test"} {
		if _, err := minter.Leaf(name); err != nil {
			t.Fatal(err)
		}
	}
	stop := mintFlood(t, r.ic, 300)
	defer stop()
	// Asked in upper case: the leaf is the configured name's all the same.
	upEnd, _ := r.startUpstream(nil)
	c, sv := r.connect(upEnd, tlsDest)
	client := tls.Client(c, &tls.Config{ServerName: "GWLBPROXY.internal", RootCAs: pool})
	client.SetDeadline(time.Now().Add(waitLimit))
	start := time.Now()
	if err := client.Handshake(); err != nil {
		t.Fatalf("the trust page's handshake beside another client's mint flood, after %v: %v", time.Since(start), err)
	}
	t.Logf("trust page's handshake after %v", time.Since(start))
	if _, err := io.WriteString(client, "GET /ca.pem HTTP/1.1\r\nHost: gwlbproxy.internal\r\nConnection: close\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(client)
	client.Close()
	sv.waitDoneOnce(t)
	if !strings.Contains(string(page), "pem") {
		t.Errorf("the trust page answered %q", page)
	}
	if s := minter.Stats(); s.Mints != 3 {
		t.Errorf("%d mints, want 3: the two before, and the trust page's again", s.Mints)
	}
	for _, rec := range r.records() {
		if rec.Kind == "tls" && (rec.Rule != "trust-page" || rec.Action != "allow" || rec.Result != "ok") {
			t.Errorf("tls record %s %s/%s %q", rec.Rule, rec.Action, rec.Result, rec.Error)
		}
	}
}
