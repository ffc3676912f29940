package certs

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// platformMarkers are strings the page and the terminal text must contain,
// one or more per platform the brief lists.
var platformMarkers = []string{
	"Amazon Linux", "update-ca-trust",
	"Ubuntu", "Debian", "update-ca-certificates",
	"RHEL",
	"Windows", "Import-Certificate", "Cert:\\LocalMachine\\Root",
	"macOS", "security add-trusted-cert", "-p ssl",
	"keytool",
	"requests", "certifi", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE",
	"Node.js", "NODE_EXTRA_CA_CERTS",
	"AWS CLI", "AWS_CA_BUNDLE",
}

func get(t *testing.T, url string) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

func TestTrustHandlerFiles(t *testing.T) {
	ca := mustGenerate(t)
	srv := httptest.NewServer(TrustHandler(ca, ""))
	defer srv.Close()

	resp, body := get(t, srv.URL+"/ca.pem")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-pem-file" {
		t.Fatalf("/ca.pem: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	block, rest := pem.Decode(body)
	if block == nil || block.Type != "CERTIFICATE" || len(bytes.TrimSpace(rest)) != 0 {
		t.Fatalf("/ca.pem is not exactly one PEM certificate: %q", body)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatalf("parse /ca.pem: %v", err)
	}
	if !c.Equal(ca.Certificate()) {
		t.Error("/ca.pem is not the CA certificate")
	}

	for _, p := range []string{"/ca.crt", "/ca.der"} {
		resp, body := get(t, srv.URL+p)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-x509-ca-cert" {
			t.Errorf("%s: %d %q", p, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		if !bytes.Equal(body, block.Bytes) {
			t.Errorf("%s differs from the DER inside /ca.pem", p)
		}
	}

	resp, err = http.Head(srv.URL + "/ca.crt")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ContentLength != int64(len(block.Bytes)) {
		t.Errorf("HEAD /ca.crt: %d length %d", resp.StatusCode, resp.ContentLength)
	}
	resp, err = http.Post(srv.URL+"/ca.pem", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /ca.pem: %d, want 405", resp.StatusCode)
	}
	if resp, _ := get(t, srv.URL+"/ca.key"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("/ca.key: %d, want 404", resp.StatusCode)
	}
}

// TestTrustHandlerHeaders: every response of the trust page is served as
// its declared type only (nosniff), under a CSP that forbids scripts and
// any load, revalidated on each use (the CA may be rotated); the page names
// its charset, and the PEM is a download, not a page to render.
func TestTrustHandlerHeaders(t *testing.T) {
	ca := mustGenerate(t)
	srv := httptest.NewServer(TrustHandler(ca, ""))
	defer srv.Close()
	for _, c := range []struct{ path, ctype, disposition string }{
		{"/", "text/html; charset=utf-8", ""},
		{"/ca.pem", "application/x-pem-file", `attachment; filename="gwlbproxy-ca.pem"`},
		{"/ca.crt", "application/x-x509-ca-cert", `inline; filename="gwlbproxy-ca.crt"`},
		{"/ca.der", "application/x-x509-ca-cert", `inline; filename="gwlbproxy-ca.crt"`},
	} {
		resp, _ := get(t, srv.URL+c.path)
		h := resp.Header
		for name, want := range map[string]string{
			"Content-Type":            c.ctype,
			"Content-Disposition":     c.disposition,
			"X-Content-Type-Options":  "nosniff",
			"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
			"Cache-Control":           "no-cache",
		} {
			if got := h.Get(name); got != want {
				t.Errorf("%s: %s %q, want %q", c.path, name, got, want)
			}
		}
	}
}

// TestTrustHandlerServesRootOfChain checks that clients are handed the
// root of a loaded chain, not the intermediate that signs leaves.
func TestTrustHandlerServesRootOfChain(t *testing.T) {
	root := newRoot(t)
	inter, key := issueCA(t, "inter", root.cert, root.key)
	ca := newCA([]*x509.Certificate{inter, root.cert}, key)
	srv := httptest.NewServer(TrustHandler(ca, ""))
	defer srv.Close()
	if _, body := get(t, srv.URL+"/ca.der"); !bytes.Equal(body, root.cert.Raw) {
		t.Error("/ca.der is not the root")
	}
}

func TestTrustPage(t *testing.T) {
	ca := mustGenerate(t)
	mux := http.NewServeMux()
	// Mounted under a prefix as on the admin port: relative links must work.
	mux.Handle("/ca/", http.StripPrefix("/ca", TrustHandler(ca, "trust.example.test")))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	resp, body := get(t, srv.URL+"/ca/")
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("/ca/: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	page := string(body)
	for _, want := range append(platformMarkers, ca.Fingerprint(), "http://trust.example.test/ca.pem", `href="ca.pem"`, `href="ca.crt"`) {
		if !strings.Contains(page, want) && !strings.Contains(page, htmlEscape(want)) {
			t.Errorf("page lacks %q", want)
		}
	}
	if strings.Contains(page, DefaultTrustHost) {
		t.Error("page uses the default trust host although another was configured")
	}
	if resp, _ := get(t, srv.URL+"/ca/ca.pem"); resp.StatusCode != 200 {
		t.Errorf("relative link ca.pem under the prefix: %d", resp.StatusCode)
	}
	if resp, _ := get(t, srv.URL+"/ca/nope"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("/ca/nope: %d, want 404", resp.StatusCode)
	}

	// The trust host comes from configuration, but it is still escaped.
	srv2 := httptest.NewServer(TrustHandler(ca, "<script>x</script>"))
	defer srv2.Close()
	if _, body := get(t, srv2.URL+"/"); bytes.Contains(body, []byte("<script>x")) {
		t.Error("trust host rendered unescaped")
	}
}

func htmlEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&#34;", "'", "&#39;").Replace(s)
}

func TestWriteTrustCommands(t *testing.T) {
	ca := mustGenerate(t)
	var b bytes.Buffer
	if err := WriteTrustCommands(&b, ca, ""); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range append(platformMarkers, ca.Fingerprint(),
		"http://"+DefaultTrustHost+"/ca.pem", "http://"+DefaultTrustHost+"/ca.crt") {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(out, "<") {
		t.Error("terminal output contains markup")
	}

	b.Reset()
	if err := WriteTrustCommands(&b, ca, "10.0.0.5:8080"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "http://10.0.0.5:8080/ca.pem") || strings.Contains(b.String(), DefaultTrustHost) {
		t.Error("configured trust host not used")
	}

	if err := WriteTrustCommands(failWriter{}, ca, ""); err == nil {
		t.Error("write error not reported")
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

// TestOpenSSLReadsServedFiles has a real client, openssl, parse both served
// files and compute the fingerprint the page shows.
func TestOpenSSLReadsServedFiles(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed; skipping the real-client check")
	}
	ca := mustGenerate(t)
	srv := httptest.NewServer(TrustHandler(ca, ""))
	defer srv.Close()
	dir := t.TempDir()
	for _, f := range []struct{ path, inform string }{{"/ca.pem", "PEM"}, {"/ca.crt", "DER"}} {
		_, body := get(t, srv.URL+f.path)
		file := filepath.Join(dir, strings.TrimPrefix(f.path, "/"))
		if err := os.WriteFile(file, body, 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(openssl, "x509", "-inform", f.inform, "-in", file, "-noout", "-subject", "-fingerprint", "-sha256").CombinedOutput()
		if err != nil {
			t.Fatalf("openssl on %s: %v\n%s", f.path, err, out)
		}
		if !strings.Contains(string(out), "test CA") {
			t.Errorf("openssl subject for %s: %s", f.path, out)
		}
		if !strings.Contains(string(out), ca.Fingerprint()) {
			t.Errorf("openssl fingerprint for %s differs from %s: %s", f.path, ca.Fingerprint(), out)
		}
	}
}
