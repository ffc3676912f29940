package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"testing"
	"time"
)

// TestCachedNeverMints: Cached serves what the cache holds and mints
// nothing, counting a hit or a miss as Leaf does; Mint after its miss
// mints once and counts no second miss; a hit allocates nothing. The
// interceptor looks a leaf up with Cached before it takes a slot to mint,
// so a cached name costs no slot.
func TestCachedNeverMints(t *testing.T) {
	m := mustMinter(t, mustGenerate(t), MinterOptions{})
	c, err := m.Cached("a.example.test")
	if c != nil || err != nil {
		t.Fatalf("Cached on an empty cache: %v, %v; want nil, nil", c, err)
	}
	if s := m.Stats(); s.Misses != 1 || s.Hits != 0 || s.Mints != 0 || s.Cached != 0 {
		t.Fatalf("after a miss: %+v, want 1 miss and nothing minted", s)
	}
	minted, err := m.Mint("a.example.test")
	if err != nil {
		t.Fatal(err)
	}
	if s := m.Stats(); s.Misses != 1 || s.Hits != 0 || s.Mints != 1 || s.Cached != 1 {
		t.Fatalf("after Mint: %+v, want still 1 miss, and 1 mint", s)
	}
	for _, name := range []string{"a.example.test", "A.Example.Test."} {
		if c, err := m.Cached(name); c != minted || err != nil {
			t.Fatalf("Cached(%q) after Mint: %v, %v; want the minted leaf", name, c, err)
		}
	}
	if c, err := m.Leaf("a.example.test"); c != minted || err != nil {
		t.Fatalf("Leaf after Mint: %v, %v; want the minted leaf", c, err)
	}
	if s := m.Stats(); s.Misses != 1 || s.Hits != 3 || s.Mints != 1 {
		t.Fatalf("after three hits: %+v", s)
	}
	// A flight that finished between a caller's miss and its Mint: the
	// leaf is served, not minted again.
	if c, err := m.Cached("b.example.test"); c != nil || err != nil {
		t.Fatalf("Cached(b): %v, %v", c, err)
	}
	other, err := m.Leaf("b.example.test")
	if err != nil {
		t.Fatal(err)
	}
	if c, err := m.Mint("b.example.test"); c != other || err != nil {
		t.Fatalf("Mint after another's mint: %v, %v; want its leaf", c, err)
	}
	if s := m.Stats(); s.Mints != 2 || s.Misses != 3 {
		t.Fatalf("after b: %+v, want 2 mints, 3 misses", s)
	}
	if _, err := m.Cached("bad name"); err == nil {
		t.Error("Cached accepted a name with a space")
	}
	if _, err := m.Cached("*.example.test"); err == nil {
		t.Error("Cached accepted a wildcard")
	}
	if s := m.Stats(); s.InvalidNames != 2 || s.Mints != 2 {
		t.Errorf("after two invalid names: %+v", s)
	}
	if n := testing.AllocsPerRun(100, func() {
		if c, _ := m.Cached("a.example.test"); c != minted {
			t.Fatal("a.example.test left the cache")
		}
	}); n != 0 {
		t.Errorf("a cache hit through Cached allocated %v times, want 0", n)
	}
}

// BenchmarkLeafMintRSACA measures a cache miss under an operator's RSA CA
// of 2048, 3072 and 4096 bits (--ca-cert/--ca-key, which Load accepts),
// against BenchmarkLeafMint's P-256 CA: the leaf's key is P-256 either
// way, and the CA's signature is what costs (docs/design.md#interception
// quotes both, and the appliance's start-up warning the RSA figures).
func BenchmarkLeafMintRSACA(b *testing.B) {
	for _, bits := range []int{2048, 3072, 4096} {
		b.Run(fmt.Sprint(bits), func(b *testing.B) {
			key, err := rsa.GenerateKey(rand.Reader, bits)
			if err != nil {
				b.Fatal(err)
			}
			benchMintUnder(b, key)
		})
	}
}

// BenchmarkLeafMintECCA measures a cache miss under an operator's ECDSA CA
// on each curve Load accepts. Go signs P-256 in assembly and P-384 and
// P-521 in generic code, so a CA on those curves costs several times what
// the appliance's own P-256 CA does (the start-up warning quotes these
// figures as it does the RSA ones).
func BenchmarkLeafMintECCA(b *testing.B) {
	for _, curve := range []elliptic.Curve{elliptic.P256(), elliptic.P384(), elliptic.P521()} {
		b.Run(curve.Params().Name, func(b *testing.B) {
			key, err := ecdsa.GenerateKey(curve, rand.Reader)
			if err != nil {
				b.Fatal(err)
			}
			benchMintUnder(b, key)
		})
	}
}

// benchMintUnder mints a leaf for a fresh name per iteration under a
// self-signed CA of key.
func benchMintUnder(b *testing.B, key crypto.Signer) {
	serial, err := randomSerial()
	if err != nil {
		b.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: "operator CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		b.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		b.Fatal(err)
	}
	m := mustMinter(b, newCA([]*x509.Certificate{cert}, key), MinterOptions{})
	i := 0
	for b.Loop() {
		i++
		if _, err := m.Leaf(fmt.Sprintf("h%d.example.test", i)); err != nil {
			b.Fatal(err)
		}
	}
}
