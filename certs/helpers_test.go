package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func mustGenerate(t testing.TB) *CA {
	t.Helper()
	ca, err := Generate("test CA")
	if err != nil {
		t.Fatalf("Generate: %v", err)
	}
	return ca
}

func mustMinter(t testing.TB, ca *CA, opts MinterOptions) *Minter {
	t.Helper()
	m, err := NewMinter(ca, opts)
	if err != nil {
		t.Fatalf("NewMinter: %v", err)
	}
	return m
}

// newRoot returns a self-signed root CA without a path length constraint, so
// it can sign intermediates (Generate's CAs cannot).
func newRoot(t testing.TB) *CA {
	t.Helper()
	c, key := issueCA(t, "test root", nil, nil)
	return newCA([]*x509.Certificate{c}, key)
}

// issueCA signs a CA certificate for a fresh P-256 key with parent/parentKey,
// or self-signs it when parent is nil (then without a path length
// constraint).
func issueCA(t testing.TB, cn string, parent *x509.Certificate, parentKey crypto.Signer) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := randomSerial()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	if parent == nil {
		parent, parentKey = tmpl, key
		tmpl.MaxPathLen, tmpl.MaxPathLenZero = -1, false
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, key
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func writeFile(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// verifyLeaf checks cert with x509.Verify for name against roots, using the
// intermediates the certificate carries, as a TLS client would.
func verifyLeaf(t testing.TB, cert *tls.Certificate, name string, roots *x509.CertPool) {
	t.Helper()
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatalf("parse leaf: %v", err)
	}
	inter := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatalf("parse chain: %v", err)
		}
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		DNSName:       name,
		Roots:         roots,
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		t.Fatalf("verify leaf for %q: %v", name, err)
	}
}

func poolOf(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}
