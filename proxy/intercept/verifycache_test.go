package intercept_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// shortLeaf makes a CA and a leaf for name it signed, valid until
// notAfter; it returns the leaf and the CA's certificate.
func shortLeaf(t *testing.T, name string, notBefore, notAfter time.Time) (*tls.Certificate, *x509.Certificate) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "short-lived test CA"},
		NotBefore: notBefore, NotAfter: notAfter.Add(365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: notBefore, NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, ca
}

// TestVerifiedChainRemembered: a chain that verified for a name is not
// verified again for it, and remembering it never lets through what
// verifying it would refuse: the same chain for a name it does not cover,
// or once its certificate has expired. A failure is remembered, with its
// reason, for failedChainMemory (a minute), then verified again.
func TestVerifiedChainRemembered(t *testing.T) {
	start := time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC)
	leaf, ca := shortLeaf(t, "short.example.test", start.Add(-time.Hour), start.Add(5*time.Minute))
	r := newRig(t, testPolicy, func(c *intercept.Config) { c.UpstreamRoots.AddCert(ca) })
	var clock atomic.Int64
	clock.Store(start.UnixNano())
	intercept.SetVerifyClock(r.ic, func() time.Time { return time.Unix(0, clock.Load()) })
	steps := []struct {
		what    string
		name    string
		at      time.Duration // after start
		wantErr string        // in the record; "" for a bumped connection
		verify  bool          // verified, not taken as read
	}{
		{"first connection", "short.example.test", 0, "", true},
		{"again", "short.example.test", time.Minute, "", false},
		{"the same chain for a name it does not cover", "other.example.test", 2 * time.Minute,
			"upstream certificate: x509: certificate is valid for short.example.test, not other.example.test", true},
		{"still valid", "short.example.test", 4 * time.Minute, "", false},
		{"expired", "short.example.test", 6 * time.Minute, "upstream certificate: x509: certificate has expired", true},
		{"expired, at once again", "short.example.test", 6*time.Minute + 30*time.Second, "upstream certificate: x509: certificate has expired", false},
		{"expired, a minute later", "short.example.test", 7 * time.Minute, "upstream certificate: x509: certificate has expired", true},
	}
	for i, st := range steps {
		clock.Store(start.Add(st.at).UnixNano())
		before := intercept.Verifications(r.ic)
		upEnd, _ := r.startUpstream(leaf, "http/1.1")
		c, sv := r.connect(upEnd, tlsDest)
		client := tls.Client(c, &tls.Config{ServerName: st.name, RootCAs: r.caPool()})
		client.SetDeadline(time.Now().Add(waitLimit))
		err := client.Handshake()
		if (err == nil) != (st.wantErr == "") {
			t.Fatalf("step %d, %s: client handshake: %v", i, st.what, err)
		}
		client.Close()
		sv.waitDoneOnce(t)
		recs := r.records()
		rec := recs[len(recs)-1]
		if st.wantErr == "" && rec.UpstreamVerify != "ok" ||
			st.wantErr != "" && (rec.UpstreamVerify != "failed" || !strings.HasPrefix(rec.Error, st.wantErr)) {
			t.Errorf("step %d, %s: record %+v", i, st.what, rec)
		}
		if verified := intercept.Verifications(r.ic) > before; verified != st.verify {
			t.Errorf("step %d, %s: chain verified %v, want %v", i, st.what, verified, st.verify)
		}
	}
}
