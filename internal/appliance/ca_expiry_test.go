package appliance

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// writeCAFiles writes a self-signed P-256 CA valid until notAfter (whole
// seconds, as certificates carry it) to PEM files in a temporary
// directory and returns their paths and the NotAfter the certificate got.
func writeCAFiles(t *testing.T, notAfter time.Time) (certFile, keyFile string, got time.Time) {
	t.Helper()
	key := must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))(t)
	return writeCAOf(t, key, &pem.Block{Type: "PRIVATE KEY", Bytes: must(x509.MarshalPKCS8PrivateKey(key))(t)}, notAfter)
}

// TestCAExpiryReported: a running appliance tells of its CA's end. /stats
// (ca.not_after, ca.expires_in_seconds) and /metrics
// (gwlbproxy_ca_not_after_timestamp_seconds, gwlbproxy_ca_expires_in_seconds)
// give it; the "expires soon" warning is repeated while it runs (every
// caExpiryCheckEvery, a day, shortened here), not only logged at start;
// and once the CA has expired an error is logged and expires_in_seconds
// goes negative, while the health check still passes (design.md, Health:
// relayed and spliced traffic is still served, and every target shares
// the CA). Before, nothing but the one warning at start said so.
func TestCAExpiryReported(t *testing.T) {
	var logs bytes.Buffer
	lw := &lockedWriter{w: &logs}
	old := slog.Default()
	t.Cleanup(func() { slog.SetDefault(old) })
	slog.SetDefault(slog.New(slog.NewTextHandler(lw, nil)))
	every := caExpiryCheckEvery
	t.Cleanup(func() { caExpiryCheckEvery = every })
	caExpiryCheckEvery = 100 * time.Millisecond
	logged := func(msg string) int {
		lw.mu.Lock()
		defer lw.mu.Unlock()
		return strings.Count(logs.String(), msg)
	}

	// Ending in a few seconds: within the 30 days' warning, and soon enough
	// to see it expire while the appliance runs.
	certFile, keyFile, notAfter := writeCAFiles(t, time.Now().Add(6*time.Second))
	r := newRig(t, func(o *Options) { o.CACert, o.CAKey = certFile, keyFile }, nil)

	s := r.stats()
	if s.CA == nil || !s.CA.NotAfter.Equal(notAfter) || s.CA.ExpiresInSeconds <= 0 || s.CA.ExpiresInSeconds > 6 || s.CA.Fingerprint != r.app.ca.Fingerprint() {
		t.Fatalf("/stats ca %+v, want not_after %v, expires_in_seconds in (0, 6], fingerprint %s", s.CA, notAfter, r.app.ca.Fingerprint())
	}
	mfs := scrapeMetrics(t, r)
	if v, ok := single(t, mfs, "gwlbproxy_ca_not_after_timestamp_seconds", dto.MetricType_GAUGE); ok && v != float64(notAfter.Unix()) {
		t.Errorf("gwlbproxy_ca_not_after_timestamp_seconds %v, want %d", v, notAfter.Unix())
	}
	if v, ok := single(t, mfs, "gwlbproxy_ca_expires_in_seconds", dto.MetricType_GAUGE); ok && (v <= 0 || v > 6) {
		t.Errorf("gwlbproxy_ca_expires_in_seconds %v, want in (0, 6]", v)
	}
	// One warning at start (the load), then again while running.
	waitFor(t, "the expiry warning repeated while running", func() string {
		if n := logged("CA expires soon"); n < 3 {
			return fmt.Sprintf("%d warnings", n)
		}
		return ""
	})

	// waitFor's 5 s start once the CA has ended.
	time.Sleep(time.Until(notAfter))
	waitFor(t, "the CA's expiry logged", func() string {
		if logged("CA has expired") == 0 {
			return "no error logged"
		}
		return ""
	})
	s = r.stats()
	if s.CA == nil || s.CA.ExpiresInSeconds >= 0 {
		t.Errorf("/stats ca %+v after expiry, want expires_in_seconds negative", s.CA)
	}
	mfs = scrapeMetrics(t, r)
	if v, ok := single(t, mfs, "gwlbproxy_ca_expires_in_seconds", dto.MetricType_GAUGE); ok && v >= 0 {
		t.Errorf("gwlbproxy_ca_expires_in_seconds %v after expiry, want negative", v)
	}
	resp, err := http.Get("http://" + r.app.adminLn.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("health after the CA's expiry: %d %q, want 200 (the CA's expiry is not the target's fault)", resp.StatusCode, body)
	}
}
