package appliance

import (
	"bytes"
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
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "operator RSA test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der := must(x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key))(t)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// TestRSACAWarned: an appliance started with an operator's RSA CA
// (--ca-cert/--ca-key) warns once at start that each leaf minted under it
// costs many times a P-256 CA's (about 1 ms at RSA-2048, against 0.16 ms),
// and recommends ECDSA P-256; /stats says ca.key_type rsa-2048. Started
// with its own CA (P-256), it warns of nothing and says ecdsa-p256.
// Before, nothing told an operator importing a corporate RSA CA what each
// fresh name then cost.
func TestRSACAWarned(t *testing.T) {
	var logs bytes.Buffer
	lw := &lockedWriter{w: &logs}
	old := slog.Default()
	t.Cleanup(func() { slog.SetDefault(old) })
	slog.SetDefault(slog.New(slog.NewTextHandler(lw, nil)))
	logged := func() string {
		lw.mu.Lock()
		defer lw.mu.Unlock()
		return logs.String()
	}
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

	lw.mu.Lock()
	logs.Reset()
	lw.mu.Unlock()
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
