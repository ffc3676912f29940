package certs

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestGenerateProperties(t *testing.T) {
	ca := mustGenerate(t)
	c := ca.Certificate()
	if !c.IsCA || !c.BasicConstraintsValid {
		t.Errorf("IsCA=%v BasicConstraintsValid=%v, want both true", c.IsCA, c.BasicConstraintsValid)
	}
	if c.MaxPathLen != 0 || !c.MaxPathLenZero {
		t.Errorf("MaxPathLen=%d MaxPathLenZero=%v, want 0 and true", c.MaxPathLen, c.MaxPathLenZero)
	}
	if c.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("KeyUsage=%v, want CertSign|CRLSign", c.KeyUsage)
	}
	// Trusted as a root by clients, it vouches for servers only.
	if len(c.ExtKeyUsage) != 1 || c.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth {
		t.Errorf("ExtKeyUsage=%v, want serverAuth alone", c.ExtKeyUsage)
	}
	pub, ok := c.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Errorf("public key %T, want ECDSA P-256", c.PublicKey)
	}
	if len(c.SubjectKeyId) != 20 {
		t.Errorf("SubjectKeyId has %d bytes, want 20", len(c.SubjectKeyId))
	}
	if c.Subject.CommonName != "test CA" {
		t.Errorf("CommonName=%q", c.Subject.CommonName)
	}
	if life := c.NotAfter.Sub(c.NotBefore); life < 10*365*24*time.Hour {
		t.Errorf("validity %v, want at least ten years", life)
	}
	if err := c.CheckSignatureFrom(c); err != nil {
		t.Errorf("not self-signed: %v", err)
	}
	if c.SerialNumber.Sign() <= 0 || c.SerialNumber.BitLen() < 64 {
		t.Errorf("serial %v is not a large positive random number", c.SerialNumber)
	}
	if other := mustGenerate(t); other.Certificate().SerialNumber.Cmp(c.SerialNumber) == 0 {
		t.Error("two CAs share a serial number")
	}
	if ca.TrustAnchor() != c || !bytes.Equal(ca.TrustDER(), ca.CertDER()) {
		t.Error("a generated CA must be its own trust anchor")
	}
	if !strings.HasPrefix(string(ca.TrustPEM()), "-----BEGIN CERTIFICATE-----") {
		t.Error("TrustPEM is not PEM")
	}
	// 32 bytes as colon-separated hex: 32*2 + 31.
	if fp := ca.Fingerprint(); len(fp) != 95 || strings.ToUpper(fp) != fp {
		t.Errorf("fingerprint %q is not upper-case colon hex of SHA-256", fp)
	}
}

func TestWriteFilesLoadRoundTrip(t *testing.T) {
	ca := mustGenerate(t)
	dir := filepath.Join(t.TempDir(), "state")
	if err := ca.WriteFiles(dir); err != nil {
		t.Fatalf("WriteFiles: %v", err)
	}
	for name, want := range map[string]os.FileMode{"": 0o700, CertFileName: 0o644, KeyFileName: 0o600} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%q mode %v, want %v", name, got, want)
		}
	}
	loaded, err := Load(filepath.Join(dir, CertFileName), filepath.Join(dir, KeyFileName))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if !bytes.Equal(loaded.CertDER(), ca.CertDER()) {
		t.Error("loaded certificate differs")
	}
	if !loaded.key.Public().(*ecdsa.PublicKey).Equal(ca.key.Public()) {
		t.Error("loaded key differs")
	}
	if loaded.Fingerprint() != ca.Fingerprint() {
		t.Error("fingerprint changed across the round trip")
	}
	// No temporary files left behind.
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("directory holds %d entries, want ca.pem and ca-key.pem only", len(entries))
	}
}

func TestLoadOrCreate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	first, created, err := LoadOrCreate(dir)
	if err != nil || !created {
		t.Fatalf("first LoadOrCreate: created=%v err=%v", created, err)
	}
	if !strings.HasPrefix(first.Certificate().Subject.CommonName, DefaultCommonName+" ") {
		t.Errorf("CommonName %q", first.Certificate().Subject.CommonName)
	}
	second, created, err := LoadOrCreate(dir)
	if err != nil || created {
		t.Fatalf("second LoadOrCreate: created=%v err=%v", created, err)
	}
	if second.Fingerprint() != first.Fingerprint() {
		t.Error("second run did not reuse the CA")
	}

	// A lone key must never be replaced by a new CA.
	if err := os.Remove(filepath.Join(dir, CertFileName)); err != nil {
		t.Fatal(err)
	}
	_, _, err = LoadOrCreate(dir)
	if err == nil || !strings.Contains(err.Error(), KeyFileName) {
		t.Fatalf("lone key: err=%v, want an error naming %s", err, KeyFileName)
	}
}

// TestLoadIntermediateChain loads an intermediate followed by its root and
// checks that leaves carry the intermediate and verify against the root.
func TestLoadIntermediateChain(t *testing.T) {
	root := newRoot(t)
	inter, interKey := issueCA(t, "test intermediate", root.cert, root.key)
	dir := t.TempDir()
	ecDER, err := x509.MarshalECPrivateKey(interKey)
	if err != nil {
		t.Fatal(err)
	}
	// openssl ecparam -genkey writes EC PARAMETERS before the key.
	keyPEM := append(pemBlock("EC PARAMETERS", []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}), pemBlock("EC PRIVATE KEY", ecDER)...)
	certFile := writeFile(t, dir, "chain.pem", append(pemBlock("CERTIFICATE", inter.Raw), pemBlock("CERTIFICATE", root.cert.Raw)...))
	keyFile := writeFile(t, dir, "key.pem", keyPEM)

	ca, err := Load(certFile, keyFile)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if !ca.Certificate().Equal(inter) || !ca.TrustAnchor().Equal(root.cert) {
		t.Fatal("signer must be the intermediate and the anchor the root")
	}
	if ca.Fingerprint() != root.Fingerprint() {
		t.Error("fingerprint must be the root's")
	}
	leaf, err := mustMinter(t, ca, MinterOptions{}).Leaf("chain.example.test")
	if err != nil {
		t.Fatal(err)
	}
	// The intermediate is sent; the self-signed root is not.
	if len(leaf.Certificate) != 2 || !bytes.Equal(leaf.Certificate[1], inter.Raw) {
		t.Fatalf("chain has %d certificates, want leaf + intermediate", len(leaf.Certificate))
	}
	verifyLeaf(t, leaf, "chain.example.test", poolOf(root.cert))

	// WriteFiles keeps the whole chain.
	out := t.TempDir()
	if err := ca.WriteFiles(out); err != nil {
		t.Fatal(err)
	}
	again, err := Load(filepath.Join(out, CertFileName), filepath.Join(out, KeyFileName))
	if err != nil {
		t.Fatal(err)
	}
	if len(again.Chain()) != 2 {
		t.Errorf("rewritten chain has %d certificates, want 2", len(again.Chain()))
	}
}

func TestLoadKeyFormats(t *testing.T) {
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8EC, _ := x509.MarshalPKCS8PrivateKey(ecKey)
	sec1, _ := x509.MarshalECPrivateKey(ecKey)
	tests := []struct {
		name   string
		signer crypto.Signer
		key    []byte
	}{
		{"PKCS8 EC", ecKey, pemBlock("PRIVATE KEY", pkcs8EC)},
		{"SEC1 EC", ecKey, pemBlock("EC PRIVATE KEY", sec1)},
		{"PKCS1 RSA", rsaKey, pemBlock("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsaKey))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			c := selfSigned(t, tc.signer)
			ca, err := Load(writeFile(t, dir, "ca.pem", pemBlock("CERTIFICATE", c.Raw)), writeFile(t, dir, "key.pem", tc.key))
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			leaf, err := mustMinter(t, ca, MinterOptions{}).Leaf("fmt.example.test")
			if err != nil {
				t.Fatal(err)
			}
			verifyLeaf(t, leaf, "fmt.example.test", poolOf(c))
		})
	}
}

// selfSigned makes a minimal self-signed CA certificate for key.
func selfSigned(t *testing.T, key crypto.Signer) *x509.Certificate {
	t.Helper()
	serial, err := randomSerial()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "fmt CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(90 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestLoadRejects(t *testing.T) {
	ca := newRoot(t)
	other := mustGenerate(t)
	inter, _ := issueCA(t, "inter", ca.cert, ca.key)
	// Generate's CAs have path length 0: they cannot sit above an
	// intermediate.
	gen := mustGenerate(t)
	genInter, genInterKey := issueCA(t, "inter below pathlen 0", gen.cert, gen.key)
	genInterKeyDER, err := x509.MarshalPKCS8PrivateKey(genInterKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := mustMinter(t, ca, MinterOptions{}).Leaf("leaf.example.test")
	if err != nil {
		t.Fatal(err)
	}
	keyDER := func(c *CA) []byte {
		b, err := x509.MarshalPKCS8PrivateKey(c.key)
		if err != nil {
			t.Fatal(err)
		}
		return pemBlock("PRIVATE KEY", b)
	}
	leafKey, err := x509.MarshalPKCS8PrivateKey(leaf.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}

	// A CA whose validity starts tomorrow: made on a machine whose clock
	// runs ahead, or on purpose.
	futureKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	futureTmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "future CA"},
		NotBefore: time.Now().Add(24 * time.Hour), NotAfter: time.Now().Add(365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	futureDER, err := x509.CreateCertificate(rand.Reader, futureTmpl, futureTmpl, &futureKey.PublicKey, futureKey)
	if err != nil {
		t.Fatal(err)
	}
	futureKeyDER, err := x509.MarshalPKCS8PrivateKey(futureKey)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name      string
		cert, key []byte
		wantFile  string // "cert" or "key": which file the error must name
		want      string
	}{
		{"mismatched key", ca.CertPEM(), keyDER(other), "cert", "does not match"},
		{"not a CA", pemBlock("CERTIFICATE", leaf.Certificate[0]), pemBlock("PRIVATE KEY", leafKey), "cert", "not a CA"},
		{"no certificate", []byte("hello\n"), keyDER(ca), "cert", "no PEM CERTIFICATE"},
		{"no key", ca.CertPEM(), []byte("hello\n"), "key", "no PEM private key"},
		{"encrypted key", ca.CertPEM(), pemBlock("ENCRYPTED PRIVATE KEY", []byte{1}), "key", "encrypted"},
		{"chain out of order", append(ca.CertPEM(), pemBlock("CERTIFICATE", inter.Raw)...), keyDER(ca), "cert", "not signed by"},
		{"path length exceeded", append(pemBlock("CERTIFICATE", genInter.Raw), gen.CertPEM()...), pemBlock("PRIVATE KEY", genInterKeyDER), "cert", "path length constraint 0"},
		{"garbage key", ca.CertPEM(), pemBlock("PRIVATE KEY", []byte{1, 2, 3}), "key", "parse PRIVATE KEY"},
		{"not valid yet", pemBlock("CERTIFICATE", futureDER), pemBlock("PRIVATE KEY", futureKeyDER), "cert", "is not valid until"},
		// What to do: the clock, or a new CA.
		{"not valid yet: advice", pemBlock("CERTIFICATE", futureDER), pemBlock("PRIVATE KEY", futureKeyDER), "cert", "check this machine's clock (timedatectl; chronyc tracking)"},
		{"not valid yet: new CA", pemBlock("CERTIFICATE", futureDER), pemBlock("PRIVATE KEY", futureKeyDER), "cert", "gwlbproxy ca init --force --out DIR"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			certFile := writeFile(t, dir, "the-cert.pem", tc.cert)
			keyFile := writeFile(t, dir, "the-key.pem", tc.key)
			_, err := Load(certFile, keyFile)
			if err == nil {
				t.Fatal("Load succeeded")
			}
			named := certFile
			if tc.wantFile == "key" {
				named = keyFile
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), named) {
				t.Errorf("error %q, want it to contain %q and %q", err, tc.want, named)
			}
		})
	}

	t.Run("missing file", func(t *testing.T) {
		missing := filepath.Join(t.TempDir(), "nope.pem")
		_, err := Load(missing, missing)
		if err == nil || !strings.Contains(err.Error(), missing) {
			t.Errorf("error %v, want it to name %s", err, missing)
		}
	})
}
