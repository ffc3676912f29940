package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestLeafDNS(t *testing.T) {
	ca := mustGenerate(t)
	m := mustMinter(t, ca, MinterOptions{})
	before := time.Now()
	cert, err := m.Leaf("www.example.test")
	if err != nil {
		t.Fatal(err)
	}
	verifyLeaf(t, cert, "www.example.test", poolOf(ca.Certificate()))

	leaf := cert.Leaf
	if leaf == nil {
		t.Fatal("Leaf field not set")
	}
	// Back-dated by an hour for clock skew (clamped to the CA's NotBefore,
	// which Generate back-dates by the same hour).
	if skew := before.Sub(leaf.NotBefore); skew < 59*time.Minute || skew > 61*time.Minute {
		t.Errorf("NotBefore is %v before minting, want about 1h", skew)
	}
	if life := leaf.NotAfter.Sub(before); life > DefaultLeafValidity+time.Minute || life < DefaultLeafValidity-time.Minute {
		t.Errorf("leaf valid for %v after minting, want %v", life, DefaultLeafValidity)
	}
	if leaf.IsCA || !leaf.BasicConstraintsValid || len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth {
		t.Errorf("IsCA=%v BasicConstraintsValid=%v ExtKeyUsage=%v, want an explicit serverAuth end-entity",
			leaf.IsCA, leaf.BasicConstraintsValid, leaf.ExtKeyUsage)
	}
	// The leaf's key signs handshakes only: no certSign or crlSign, which
	// would let a leaked leaf key pass for a sub-CA's with lax verifiers.
	if leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("KeyUsage %#x, want digitalSignature (%#x) alone", int(leaf.KeyUsage), int(x509.KeyUsageDigitalSignature))
	}
	// Back-dated further than the CA: clamped to the CA's NotBefore, as
	// some verifiers refuse a leaf that predates its issuer.
	far, err := mustMinter(t, ca, MinterOptions{Backdate: 48 * time.Hour}).Leaf("clamp.example.test")
	if err != nil {
		t.Fatal(err)
	}
	if caFrom := ca.Certificate().NotBefore; !far.Leaf.NotBefore.Equal(caFrom) {
		t.Errorf("leaf back-dated 48 h: NotBefore %v, want the CA's %v", far.Leaf.NotBefore, caFrom)
	}
	if len(leaf.DNSNames) != 1 || len(leaf.IPAddresses) != 0 {
		t.Errorf("SANs DNS=%v IP=%v", leaf.DNSNames, leaf.IPAddresses)
	}
	key, ok := cert.PrivateKey.(*ecdsa.PrivateKey)
	if !ok || key.Curve != elliptic.P256() {
		t.Errorf("leaf key %T, want ECDSA P-256", cert.PrivateKey)
	}
	if _, err := tls.X509KeyPair(pemBlock("CERTIFICATE", cert.Certificate[0]), mustPKCS8(t, key)); err != nil {
		t.Errorf("leaf key does not match its certificate: %v", err)
	}
	if len(cert.Certificate) != 1 {
		t.Errorf("chain of %d certificates; a self-signed CA must not be sent", len(cert.Certificate))
	}
	// Another name must not verify.
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "other.example.test", Roots: poolOf(ca.Certificate())}); err == nil {
		t.Error("leaf verified for a name it does not carry")
	}
}

func mustPKCS8(t *testing.T, key any) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pemBlock("PRIVATE KEY", der)
}

func TestLeafIP(t *testing.T) {
	ca := mustGenerate(t)
	m := mustMinter(t, ca, MinterOptions{})
	for _, ip := range []string{"127.0.0.1", "::1", "fe80::1", "2001:db8::a"} {
		cert, err := m.Leaf(ip)
		if err != nil {
			t.Fatal(err)
		}
		verifyLeaf(t, cert, ip, poolOf(ca.Certificate()))
		if len(cert.Leaf.DNSNames) != 0 || len(cert.Leaf.IPAddresses) != 1 {
			t.Errorf("%s: SANs DNS=%v IP=%v, want one IP SAN", ip, cert.Leaf.DNSNames, cert.Leaf.IPAddresses)
		}
	}
	// An IPv4-mapped IPv6 literal is the same address as its IPv4 form.
	a, _ := m.Leaf("127.0.0.1")
	b, _ := m.Leaf("::ffff:127.0.0.1")
	if a != b {
		t.Error("::ffff:127.0.0.1 and 127.0.0.1 got different leaves")
	}
}

func TestLeafNormalisesAndShares(t *testing.T) {
	m := mustMinter(t, mustGenerate(t), MinterOptions{})
	a, err := m.Leaf("www.example.test")
	if err != nil {
		t.Fatal(err)
	}
	b, err := m.Leaf("WWW.Example.TEST.")
	if err != nil {
		t.Fatal(err)
	}
	c, err := m.LeafFor([]string{"www.example.test"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if a != b || a != c {
		t.Error("case, trailing dot or LeafFor with one name gave a different leaf")
	}
	if s := m.Stats(); s.Mints != 1 || s.Hits != 2 || s.Misses != 1 {
		t.Errorf("stats %+v, want 1 mint, 2 hits, 1 miss", s)
	}
}

func TestLeafForMirrorsNames(t *testing.T) {
	ca := mustGenerate(t)
	m := mustMinter(t, ca, MinterOptions{})
	names := []string{"b.example.test", "*.example.test", "a.example.test", "b.example.test", "10.0.0.1"}
	ips := []net.IP{net.ParseIP("::1"), net.IPv4(127, 0, 0, 1)}
	cert, err := m.LeafFor(names, ips)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a.example.test", "b.example.test", "x.example.test", "10.0.0.1", "::1", "127.0.0.1"} {
		verifyLeaf(t, cert, n, poolOf(ca.Certificate()))
	}
	if got := len(cert.Leaf.DNSNames); got != 3 {
		t.Errorf("%d DNS SANs %v, want 3 (deduplicated)", got, cert.Leaf.DNSNames)
	}
	if got := len(cert.Leaf.IPAddresses); got != 3 {
		t.Errorf("%d IP SANs %v, want 3", got, cert.Leaf.IPAddresses)
	}
	// Another order of the same names is the same cache entry.
	again, err := m.LeafFor([]string{"10.0.0.1", "a.example.test", "*.example.test", "b.example.test"}, []net.IP{net.IPv6loopback, net.ParseIP("127.0.0.1").To4()})
	if err != nil {
		t.Fatal(err)
	}
	if again != cert {
		t.Error("same names in another order minted again")
	}
}

// TestLeafRefusesWildcard: Leaf mints for exactly the name a client asked
// for, so a wildcard is refused whoever passes it (only the SNI does today,
// and the SNI parser refuses '*'); before, Leaf("*.bank.example") minted a
// leaf valid for every name under bank.example. LeafFor, whose callers
// choose their names, still mints wildcards.
func TestLeafRefusesWildcard(t *testing.T) {
	m := mustMinter(t, mustGenerate(t), MinterOptions{})
	for _, n := range []string{"*.bank.example", "*.BANK.example.", "*.a.b.bank.example"} {
		if leaf, err := m.Leaf(n); err == nil {
			t.Errorf("Leaf(%q) minted a leaf for %q", n, leaf.Leaf.DNSNames)
		}
	}
	leaf, err := m.LeafFor([]string{"*.bank.example"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := leaf.Leaf.DNSNames; len(got) != 1 || got[0] != "*.bank.example" {
		t.Errorf("LeafFor minted %q", got)
	}
	if s := m.Stats(); s.Mints != 1 || s.InvalidNames != 3 {
		t.Errorf("stats %+v, want one mint and 3 invalid names", s)
	}
}

func TestLeafRejectsBadNames(t *testing.T) {
	m := mustMinter(t, mustGenerate(t), MinterOptions{})
	bad := []string{
		"", ".", "a..b", "with space.test", "nul\x00.test", "under/slash.test",
		"*.*.example.test", "a*.example.test", "example.*", "*",
		strings.Repeat("a", 64) + ".test", strings.Repeat("abcdefghi.", 26) + "test",
		"fe80::1%eth0", "comma,test", "ü.example.test", "1.2.3", "999.1.1.1", "a:b",
	}
	for _, n := range bad {
		if _, err := m.Leaf(n); err == nil {
			t.Errorf("Leaf(%q) succeeded", n)
		}
	}
	if _, err := m.LeafFor(nil, nil); err == nil {
		t.Error("LeafFor with no names succeeded")
	}
	if _, err := m.LeafFor(nil, []net.IP{{1, 2, 3}}); err == nil {
		t.Error("LeafFor with a 3-byte IP succeeded")
	}
	many := make([]string, maxLeafNames+1)
	for i := range many {
		many[i] = fmt.Sprintf("h%d.example.test", i)
	}
	if _, err := m.LeafFor(many, nil); err == nil {
		t.Error("LeafFor beyond maxLeafNames succeeded")
	}
	if s := m.Stats(); s.Mints != 0 || s.InvalidNames != uint64(len(bad)+3) {
		t.Errorf("stats %+v, want no mints and %d invalid names", s, len(bad)+3)
	}
}

func TestCacheEvictsLeastRecentlyUsed(t *testing.T) {
	m := mustMinter(t, mustGenerate(t), MinterOptions{CacheSize: 2})
	leaf := func(n string) *tls.Certificate {
		t.Helper()
		c, err := m.Leaf(n)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	a := leaf("a.test")
	b := leaf("b.test")
	leaf("a.test") // a is now more recent than b
	leaf("c.test") // evicts b
	if s := m.Stats(); s.Cached != 2 || s.Evictions != 1 || s.Mints != 3 || s.Capacity != 2 {
		t.Fatalf("stats %+v, want 2 cached, 1 eviction, 3 mints", s)
	}
	if leaf("a.test") != a {
		t.Error("a was evicted although recently used")
	}
	if leaf("b.test") == b {
		t.Error("b was not evicted")
	}
	if s := m.Stats(); s.Mints != 4 || s.Cached != 2 {
		t.Errorf("stats %+v, want 4 mints and still 2 cached", s)
	}
}

func TestCacheExpiresBeforeNotAfter(t *testing.T) {
	m := mustMinter(t, mustGenerate(t), MinterOptions{})
	now := time.Now()
	m.now = func() time.Time { return now }
	first, err := m.Leaf("exp.test")
	if err != nil {
		t.Fatal(err)
	}
	now = now.Add(DefaultLeafValidity/2 - time.Minute)
	if c, _ := m.Leaf("exp.test"); c != first {
		t.Fatal("leaf replaced before half its life")
	}
	now = now.Add(2 * time.Minute)
	second, err := m.Leaf("exp.test")
	if err != nil {
		t.Fatal(err)
	}
	if second == first {
		t.Fatal("leaf still served past half its life")
	}
	if second.Leaf.NotAfter.Sub(now) < DefaultLeafValidity-time.Minute {
		t.Error("replacement leaf is not fresh")
	}
	if s := m.Stats(); s.Expired != 1 || s.Mints != 2 {
		t.Errorf("stats %+v, want 1 expired, 2 mints", s)
	}
}

func TestLeafCappedByCAExpiry(t *testing.T) {
	now := time.Now()
	ca, err := generate("short CA", now, 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	m := mustMinter(t, ca, MinterOptions{})
	cert, err := m.Leaf("cap.test")
	if err != nil {
		t.Fatal(err)
	}
	if cert.Leaf.NotAfter.After(ca.NotAfter()) {
		t.Errorf("leaf NotAfter %v outlives the CA's %v", cert.Leaf.NotAfter, ca.NotAfter())
	}
	m.now = func() time.Time { return now.Add(49 * time.Hour) }
	if _, err := m.Leaf("late.test"); err == nil || !strings.Contains(err.Error(), "CA expired") {
		t.Errorf("minting with an expired CA: err=%v", err)
	}
	if s := m.Stats(); s.MintErrors != 1 {
		t.Errorf("stats %+v, want 1 mint error", s)
	}
}

// TestConcurrentLeafMintsOnce checks that simultaneous handshakes for one
// name share a single mint.
func TestConcurrentLeafMintsOnce(t *testing.T) {
	m := mustMinter(t, mustGenerate(t), MinterOptions{})
	const n = 50
	var (
		wg    sync.WaitGroup
		start = make(chan struct{})
		got   = make([]*tls.Certificate, n)
		errs  = make([]error, n)
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			got[i], errs[i] = m.Leaf("same.example.test")
		}()
	}
	close(start)
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if got[i] != got[0] {
			t.Fatal("callers received different leaves")
		}
	}
	if s := m.Stats(); s.Mints != 1 || s.Hits+s.Misses != n {
		t.Errorf("stats %+v, want exactly 1 mint and %d lookups", s, n)
	}
}

func TestStatsJSON(t *testing.T) {
	b, err := json.Marshal(Stats{Hits: 1, MintErrors: 2, InvalidNames: 3})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{`"hits":1`, `"misses":0`, `"mints":0`, `"mint_errors":2`, `"evictions":0`, `"expired":0`, `"invalid_names":3`, `"cached":0`, `"capacity":0`} {
		if !strings.Contains(string(b), k) {
			t.Errorf("%s lacks %s", b, k)
		}
	}
}

// TestLeafHandshake serves minted leaves in real TLS handshakes with a Go
// client, the way the interceptor does: the leaf for the client's SNI, and,
// when a client that dialled an IP address sends no SNI, Leaf for that
// address (the flow's destination), whose IP SAN the client verifies.
func TestLeafHandshake(t *testing.T) {
	ca := mustGenerate(t)
	m := mustMinter(t, ca, MinterOptions{})
	roots := poolOf(ca.Certificate())
	for _, tc := range []struct {
		dial       string // the client's ServerName: what it dialled
		sni        string // what the server must see
		wantLeafIP bool
	}{
		{dial: "sni.example.test", sni: "sni.example.test"},
		{dial: "127.0.0.1", sni: "", wantLeafIP: true},
		{dial: "::1", sni: "", wantLeafIP: true},
	} {
		t.Run(tc.dial, func(t *testing.T) {
			cli, srv := net.Pipe()
			defer cli.Close()
			defer srv.Close()
			served := make(chan error, 1)
			go func() {
				s := tls.Server(srv, &tls.Config{GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
					if hello.ServerName != tc.sni {
						return nil, fmt.Errorf("server saw SNI %q, want %q", hello.ServerName, tc.sni)
					}
					if hello.ServerName != "" {
						return m.Leaf(hello.ServerName)
					}
					// No SNI: the address the client dialled, which the
					// interceptor knows as the flow's destination.
					return m.Leaf(tc.dial)
				}})
				// No Close: its close_notify would wait on the pipe for a
				// reader; the deferred closes end the pipe.
				served <- s.Handshake()
			}()
			c := tls.Client(cli, &tls.Config{ServerName: tc.dial, RootCAs: roots})
			if err := c.Handshake(); err != nil {
				t.Fatalf("client handshake: %v (server: %v)", err, <-served)
			}
			if err := <-served; err != nil {
				t.Fatalf("server handshake: %v", err)
			}
			leaf := c.ConnectionState().PeerCertificates[0]
			if leaf.Issuer.String() != ca.Certificate().Subject.String() {
				t.Errorf("leaf issued by %s, not by the interception CA", leaf.Issuer)
			}
			if tc.wantLeafIP != (len(leaf.IPAddresses) == 1 && len(leaf.DNSNames) == 0) {
				t.Errorf("SANs DNS=%v IP=%v", leaf.DNSNames, leaf.IPAddresses)
			}
		})
	}
	if s := m.Stats(); s.Mints != 3 {
		t.Errorf("stats %+v, want 3 mints", s)
	}
}

// BenchmarkLeafMint measures a cache miss: key generation and signature.
func BenchmarkLeafMint(b *testing.B) {
	m := mustMinter(b, mustGenerate(b), MinterOptions{})
	i := 0
	for b.Loop() {
		i++
		if _, err := m.Leaf(fmt.Sprintf("h%d.example.test", i)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLeafCached measures a cache hit.
func BenchmarkLeafCached(b *testing.B) {
	m := mustMinter(b, mustGenerate(b), MinterOptions{})
	if _, err := m.Leaf("cached.example.test"); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := m.Leaf("cached.example.test"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLeafCachedParallel measures cache hits from all cores at once,
// where the cache lock is shared.
func BenchmarkLeafCachedParallel(b *testing.B) {
	m := mustMinter(b, mustGenerate(b), MinterOptions{})
	if _, err := m.Leaf("cached.example.test"); err != nil {
		b.Fatal(err)
	}
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := m.Leaf("cached.example.test"); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestCacheWallStepBack: after the wall clock steps back further than the
// backdate, a leaf cached before the step, whose NotBefore is now in the
// future (clients reject it as not yet valid), is minted again instead of
// served. The cache compared the times' monotonic readings, and served it
// until its refresh time.
func TestCacheWallStepBack(t *testing.T) {
	before := time.Now()
	ca, err := generate("test CA", before.Add(-24*time.Hour), 10*24*time.Hour) // made long before the step
	if err != nil {
		t.Fatal(err)
	}
	m := mustMinter(t, ca, MinterOptions{})
	now := before
	m.now = func() time.Time { return now }
	first, err := m.Leaf("step.test")
	if err != nil {
		t.Fatal(err)
	}
	now = before.Add(-2 * DefaultLeafBackdate) // the step back
	second, err := m.Leaf("step.test")
	if err != nil {
		t.Fatal(err)
	}
	if now.Before(second.Leaf.NotBefore) {
		t.Errorf("after the step back, the leaf served is valid from %v, %v after now", second.Leaf.NotBefore, second.Leaf.NotBefore.Sub(now))
	}
	if second == first {
		t.Error("the leaf minted before the step is still served")
	}
	now = before // the clock back where it was: the new leaf serves
	if third, _ := m.Leaf("step.test"); third != second {
		t.Error("the leaf minted after the step was replaced")
	}
}

// TestLeafServedToAnEarlierClockReading: a caller that read the clock a
// moment before the leaf for its name was minted, and the cache after,
// gets that leaf: it took it for one minted under a clock stepped back,
// dropped it and minted a second (TestConcurrentLeafMintsOnce, once in a
// loaded -race suite).
func TestLeafServedToAnEarlierClockReading(t *testing.T) {
	m := mustMinter(t, mustGenerate(t), MinterOptions{})
	now := time.Now()
	m.now = func() time.Time { return now }
	first, err := m.Leaf("same.example.test")
	if err != nil {
		t.Fatal(err)
	}
	m.now = func() time.Time { return now.Add(-time.Millisecond) }
	second, err := m.Leaf("same.example.test")
	if err != nil {
		t.Fatal(err)
	}
	if second != first {
		t.Error("a caller whose clock reading came a moment before the minting got a second leaf")
	}
	if s := m.Stats(); s.Mints != 1 {
		t.Errorf("%d mints, want 1", s.Mints)
	}
}
