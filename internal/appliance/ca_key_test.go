package appliance

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeRSACAFiles writes a self-signed RSA CA of bits, its key as PKCS #1
// (RSA PRIVATE KEY, which certs.Load accepts), to PEM files in a
// temporary directory and returns their paths.
func writeRSACAFiles(t *testing.T, bits int) (certFile, keyFile string) {
	t.Helper()
	key := must(rsa.GenerateKey(rand.Reader, bits))(t)
	certFile, keyFile, _ = writeCAOf(t, key, &pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}, time.Now().Add(365*24*time.Hour))
	return certFile, keyFile
}

// writeCAOf writes a self-signed CA of key valid until notAfter, and
// keyBlock (key's PEM block), to PEM files in a temporary directory and
// returns their paths and the NotAfter the certificate got.
func writeCAOf(t *testing.T, key crypto.Signer, keyBlock *pem.Block, notAfter time.Time) (certFile, keyFile string, got time.Time) {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "operator test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der := must(x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key))(t)
	cert := must(x509.ParseCertificate(der))(t)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(keyBlock), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, cert.NotAfter
}

// logToBuffer sends the default logger's lines to a buffer until the test
// ends, and returns what it holds so far and a way to empty it.
func logToBuffer(t *testing.T) (logged func() string, reset func()) {
	var logs bytes.Buffer
	lw := &lockedWriter{w: &logs}
	old := slog.Default()
	t.Cleanup(func() { slog.SetDefault(old) })
	slog.SetDefault(slog.New(slog.NewTextHandler(lw, nil)))
	logged = func() string {
		lw.mu.Lock()
		defer lw.mu.Unlock()
		return logs.String()
	}
	reset = func() {
		lw.mu.Lock()
		defer lw.mu.Unlock()
		logs.Reset()
	}
	return logged, reset
}

// TestRSACAWarned: an appliance started with an operator's RSA CA
// (--ca-cert/--ca-key) warns once at start that each leaf minted under it
// costs many times a P-256 CA's (about 1 ms at RSA-2048, against 0.16 ms),
// and recommends ECDSA P-256; /stats says ca.key_type rsa-2048. Started
// with its own CA (P-256), it warns of nothing and says ecdsa-p256.
// Before, nothing told an operator importing a corporate RSA CA what each
// fresh name then cost.
func TestRSACAWarned(t *testing.T) {
	logged, resetLogs := logToBuffer(t)
	const warning = "the interception CA's key is RSA"

	certFile, keyFile := writeRSACAFiles(t, 2048)
	r := newRig(t, func(o *Options) { o.CACert, o.CAKey = certFile, keyFile }, nil)
	if s := r.stats(); s.CA == nil || s.CA.KeyType != "rsa-2048" {
		t.Errorf("/stats ca %+v, want key_type rsa-2048", s.CA)
	}
	out := logged()
	if n := strings.Count(out, warning); n != 1 {
		t.Errorf("%d warnings of the RSA CA, want 1; logs:\n%s", n, out)
	}
	for _, want := range []string{"RSA-2048", "about 1 ms", "0.16 ms", "ECDSA P-256", "key_type=rsa-2048", "fingerprint="} {
		if !strings.Contains(out, want) {
			t.Errorf("the warning does not say %q; logs:\n%s", want, out)
		}
	}
	r.app.Close()

	resetLogs()
	r = newRig(t, nil, nil)
	if s := r.stats(); s.CA == nil || s.CA.KeyType != "ecdsa-p256" {
		t.Errorf("/stats ca %+v with the appliance's own CA, want key_type ecdsa-p256", s.CA)
	}
	if out := logged(); strings.Contains(out, warning) {
		t.Errorf("a P-256 CA warned of RSA; logs:\n%s", out)
	}
}

// TestRSAMintCost: the warning's figure grows with the key, as measured
// (certs.BenchmarkLeafMintRSACA).
func TestRSAMintCost(t *testing.T) {
	for bits, want := range map[int]string{2048: "about 1 ms", 3072: "about 3 ms", 4096: "about 6 ms", 8192: "well over 6 ms"} {
		if got := rsaMintCost(bits); got != want {
			t.Errorf("rsaMintCost(%d) = %q, want %q", bits, got, want)
		}
	}
}

// TestP384CAWarned: an operator's ECDSA P-384 CA warns at start too, as
// an RSA one does: Go signs P-384 in generic code, and each leaf's mint
// costs about 1 ms against P-256's 0.16 (certs.BenchmarkLeafMintECCA).
// Before, only RSA keys were warned of.
func TestP384CAWarned(t *testing.T) {
	logged, _ := logToBuffer(t)
	key := must(ecdsa.GenerateKey(elliptic.P384(), rand.Reader))(t)
	certFile, keyFile, _ := writeCAOf(t, key, &pem.Block{Type: "PRIVATE KEY", Bytes: must(x509.MarshalPKCS8PrivateKey(key))(t)}, time.Now().Add(365*24*time.Hour))
	r := newRig(t, func(o *Options) { o.CACert, o.CAKey = certFile, keyFile }, nil)
	if s := r.stats(); s.CA == nil || s.CA.KeyType != "ecdsa-p384" {
		t.Errorf("/stats ca %+v, want key_type ecdsa-p384", s.CA)
	}
	out := logged()
	if n := strings.Count(out, "the interception CA's key is ECDSA P-384"); n != 1 {
		t.Errorf("%d warnings of the P-384 CA, want 1; logs:\n%s", n, out)
	}
	for _, want := range []string{"about 1 ms", "0.16 ms", "ECDSA P-256 one", "key_type=ecdsa-p384"} {
		if !strings.Contains(out, want) {
			t.Errorf("the warning does not say %q; logs:\n%s", want, out)
		}
	}
}

// TestDearCAKey: the keys warned of are RSA of any size and ECDSA on
// P-384 and P-521; P-256 (the appliance's own) and Ed25519, whose
// signatures cost about what P-256's do, are not.
func TestDearCAKey(t *testing.T) {
	ecKey := func(c elliptic.Curve) any { return &must(ecdsa.GenerateKey(c, rand.Reader))(t).PublicKey }
	edKey, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		key        any
		name, cost string
	}{
		{&must(rsa.GenerateKey(rand.Reader, 2048))(t).PublicKey, "RSA-2048", "about 1 ms"},
		{ecKey(elliptic.P384()), "ECDSA P-384", "about 1 ms"},
		{ecKey(elliptic.P521()), "ECDSA P-521", "about 2.5 ms"},
		{ecKey(elliptic.P256()), "", ""},
		{edKey, "", ""},
	} {
		if name, cost := dearCAKey(tc.key); name != tc.name || cost != tc.cost {
			t.Errorf("dearCAKey(%T) = %q, %q; want %q, %q", tc.key, name, cost, tc.name, tc.cost)
		}
	}
}
