package certs

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/base64"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/certs/secretstest"
)

// bundleOf writes ca with WriteFiles, as `gwlbproxy ca init` does, and
// returns `cat ca.pem ca-key.pem` of the result.
func bundleOf(t *testing.T, ca *CA) []byte {
	t.Helper()
	dir := t.TempDir()
	if err := ca.WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	var b []byte
	for _, name := range []string{CertFileName, KeyFileName} {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		b = append(b, data...)
	}
	return b
}

func keyPEMOf(t *testing.T, ca *CA) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return pemBlock("PRIVATE KEY", der)
}

// TestLoadSecret loads CAs from a local Secrets Manager endpoint through the
// real SDK client and the default credential chain: as SecretString and
// SecretBinary, by name and by ARN, key first or last, and an intermediate
// with its root.
func TestLoadSecret(t *testing.T) {
	secretstest.SetEnv(t, "eu-west-1")
	srv := secretstest.NewServer(t)
	ca := mustGenerate(t)
	bundle := bundleOf(t, ca)
	srv.PutString("gwlbproxy/ca", string(bundle))
	srv.PutBinary("gwlbproxy/ca-binary", bundle)
	keyFirst := append(keyPEMOf(t, ca), ca.CertPEM()...)
	srv.PutString("gwlbproxy/ca-key-first", string(keyFirst))

	root := newRoot(t)
	inter, interKey := issueCA(t, "secret intermediate", root.cert, root.key)
	interCA := newCA([]*x509.Certificate{inter, root.cert}, interKey)
	srv.PutString("gwlbproxy/intermediate", string(bundleOf(t, interCA)))

	for _, tc := range []struct {
		id, region string
		want       *CA
	}{
		{id: "gwlbproxy/ca", region: "eu-west-1", want: ca},
		{id: "gwlbproxy/ca-binary", region: "eu-west-1", want: ca},
		{id: "gwlbproxy/ca-key-first", region: "eu-west-1", want: ca},
		// An ARN's region wins over the environment's.
		{id: secretstest.ARN("gwlbproxy/ca"), region: secretstest.Region, want: ca},
		{id: "gwlbproxy/intermediate", region: "eu-west-1", want: interCA},
	} {
		t.Run(tc.id, func(t *testing.T) {
			before := len(srv.Requests())
			got, err := LoadSecret(t.Context(), Secret{ID: tc.id, Endpoint: srv.URL})
			if err != nil {
				t.Fatalf("LoadSecret: %v", err)
			}
			if got.Fingerprint() != tc.want.Fingerprint() || !bytes.Equal(got.CertDER(), tc.want.CertDER()) {
				t.Errorf("loaded fingerprint %s, want %s", got.Fingerprint(), tc.want.Fingerprint())
			}
			if !got.key.Public().(*ecdsa.PublicKey).Equal(tc.want.key.Public()) {
				t.Error("loaded key differs")
			}
			if len(got.Chain()) != len(tc.want.Chain()) {
				t.Errorf("chain of %d, want %d", len(got.Chain()), len(tc.want.Chain()))
			}
			reqs := srv.Requests()[before:]
			if len(reqs) != 1 {
				t.Fatalf("%d requests, want 1", len(reqs))
			}
			r := reqs[0]
			if r.Target != "secretsmanager.GetSecretValue" || r.SecretID != tc.id || r.ContentType != "application/x-amz-json-1.1" {
				t.Errorf("request %+v", r)
			}
			if !r.Signed || r.AccessKey != secretstest.AccessKeyID || r.Service != "secretsmanager" || r.Region != tc.region {
				t.Errorf("request not signed with the environment's credentials for %s: %+v", tc.region, r)
			}
		})
	}

	t.Run("explicit region", func(t *testing.T) {
		before := len(srv.Requests())
		if _, err := LoadSecret(t.Context(), Secret{ID: "gwlbproxy/ca", Region: "ap-south-1", Endpoint: srv.URL}); err != nil {
			t.Fatal(err)
		}
		if r := srv.Requests()[before]; r.Region != "ap-south-1" {
			t.Errorf("signed for %q, want ap-south-1", r.Region)
		}
	})
}

// TestLoadSecretRejects: values that are not a usable CA bundle give errors
// that name the secret and the fault, never the key material.
func TestLoadSecretRejects(t *testing.T) {
	secretstest.SetEnv(t, "us-east-1")
	srv := secretstest.NewServer(t)
	ca := mustGenerate(t)
	other := mustGenerate(t)
	keyPEM := keyPEMOf(t, ca)
	bundle := bundleOf(t, ca)
	// The body of the key block: what must never be printed.
	keyBody := strings.Join(strings.Split(string(keyPEM), "\n")[1:3], "")

	for _, tc := range []struct {
		name  string
		value []byte
		want  string
	}{
		{"no-key", ca.CertPEM(), "no PEM private key"},
		{"bad-key", append(ca.CertPEM(), pemBlock("PRIVATE KEY", []byte{0x30, 3, 2, 1, 0})...), "parse PRIVATE KEY"},
		{"mismatched-key", append(ca.CertPEM(), keyPEMOf(t, other)...), "does not match"},
		{"no-certificate", keyPEM, "no PEM CERTIFICATE"},
		{"json", []byte(`{"cert":"` + base64.StdEncoding.EncodeToString(bundle) + `"}`), "JSON"},
		{"escaped-newlines", bytes.ReplaceAll(bundle, []byte("\n"), []byte(`\n`)), `\n`},
		{"encrypted-key", append(ca.CertPEM(), pemBlock("ENCRYPTED PRIVATE KEY", []byte{1})...), "encrypted"},
		{"empty", nil, "no value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := "bad/" + tc.name
			srv.PutString(id, string(tc.value))
			_, err := LoadSecret(t.Context(), Secret{ID: id, Endpoint: srv.URL})
			if err == nil {
				t.Fatal("LoadSecret succeeded")
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.want) || !strings.Contains(msg, `"`+id+`"`) {
				t.Errorf("error %q, want it to contain %q and name the secret", msg, tc.want)
			}
			if strings.Contains(msg, keyBody[:24]) || strings.Contains(msg, "BEGIN") {
				t.Errorf("error carries PEM content: %q", msg)
			}
		})
	}
}

// TestLoadSecretServiceErrors: the service's refusals surface as errors that
// name the secret, the error code and what to do.
func TestLoadSecretServiceErrors(t *testing.T) {
	secretstest.SetEnv(t, "us-east-1")
	srv := secretstest.NewServer(t)
	srv.Fail("denied", 400, "AccessDeniedException",
		"User: arn:aws:sts::123456789012:assumed-role/gwlbproxy/i-0 is not authorized to perform: secretsmanager:GetSecretValue")
	srv.Fail("cmk", 400, "DecryptionFailure", "Access to KMS is not allowed")
	for _, tc := range []struct {
		id   string
		want []string
	}{
		{"missing", []string{"not found", "ResourceNotFoundException", "--ca-secret-region"}},
		{"denied", []string{"access denied", "AccessDeniedException", "secretsmanager:GetSecretValue", "kms:Decrypt"}},
		{"cmk", []string{"DecryptionFailure", "kms:Decrypt"}},
	} {
		t.Run(tc.id, func(t *testing.T) {
			start := time.Now()
			_, err := LoadSecret(t.Context(), Secret{ID: tc.id, Endpoint: srv.URL})
			if err == nil {
				t.Fatal("LoadSecret succeeded")
			}
			for _, w := range append(tc.want, `"`+tc.id+`"`, srv.URL) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("a client error took %v: it must not be retried", d)
			}
		})
	}
}

// TestLoadSecretUnreachable: an endpoint that never answers, or refuses
// connections, fails within the timeout with an error saying so.
func TestLoadSecretUnreachable(t *testing.T) {
	secretstest.SetEnv(t, "us-east-1")
	srv := secretstest.NewServer(t)
	srv.Hang("slow")
	t.Run("hangs", func(t *testing.T) {
		start := time.Now()
		_, err := LoadSecret(t.Context(), Secret{ID: "slow", Endpoint: srv.URL, Timeout: 500 * time.Millisecond})
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("LoadSecret took %v with a 500ms timeout", d)
		}
		if err == nil || !strings.Contains(err.Error(), "no answer") || !strings.Contains(err.Error(), `"slow"`) ||
			!strings.Contains(err.Error(), "500ms") {
			t.Fatalf("error %v, want it to name the secret and the timeout", err)
		}
	})
	t.Run("refused", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		closed := "http://" + ln.Addr().String()
		ln.Close()
		start := time.Now()
		_, err = LoadSecret(t.Context(), Secret{ID: "gone", Endpoint: closed, Timeout: 5 * time.Second})
		if d := time.Since(start); d > 6*time.Second {
			t.Errorf("LoadSecret took %v with a 5s timeout", d)
		}
		if err == nil || !strings.Contains(err.Error(), `"gone"`) || !strings.Contains(err.Error(), closed) ||
			!(strings.Contains(err.Error(), "cannot reach") || strings.Contains(err.Error(), "no answer")) {
			t.Fatalf("error %v, want it to say the endpoint cannot be reached", err)
		}
	})
}

// TestLoadSecretConfiguration: missing credentials or region are reported
// before any request, naming the secret.
func TestLoadSecretConfiguration(t *testing.T) {
	srv := secretstest.NewServer(t)
	t.Run("no region", func(t *testing.T) {
		secretstest.SetEnv(t, "")
		_, err := LoadSecret(t.Context(), Secret{ID: "plain-name", Endpoint: srv.URL})
		if err == nil || !strings.Contains(err.Error(), "region") || !strings.Contains(err.Error(), `"plain-name"`) {
			t.Fatalf("error %v, want it to name the missing region and the secret", err)
		}
	})
	t.Run("no credentials", func(t *testing.T) {
		secretstest.SetEnv(t, "us-east-1")
		t.Setenv("AWS_ACCESS_KEY_ID", "")
		t.Setenv("AWS_SECRET_ACCESS_KEY", "")
		_, err := LoadSecret(t.Context(), Secret{ID: "plain-name", Endpoint: srv.URL, Timeout: 5 * time.Second})
		if err == nil || !strings.Contains(err.Error(), "credentials") || !strings.Contains(err.Error(), `"plain-name"`) {
			t.Fatalf("error %v, want it to name missing credentials and the secret", err)
		}
	})
	if n := len(srv.Requests()); n != 0 {
		t.Errorf("%d requests reached the endpoint", n)
	}
	if _, err := LoadSecret(t.Context(), Secret{}); err == nil {
		t.Error("LoadSecret without an ID succeeded")
	}
}

// TestParseBundleNamesSource: Parse and ParseBundle share Load's checks and
// name the source given.
func TestParseBundleNamesSource(t *testing.T) {
	ca := mustGenerate(t)
	got, err := ParseBundle(bundleOf(t, ca), "test bundle")
	if err != nil || got.Fingerprint() != ca.Fingerprint() {
		t.Fatalf("ParseBundle: %v", err)
	}
	_, err = Parse(ca.CertPEM(), keyPEMOf(t, mustGenerate(t)), "somewhere special")
	if err == nil || !strings.Contains(err.Error(), "somewhere special") || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("Parse error %v", err)
	}
}
