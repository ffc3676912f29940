package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/certs"
	"github.com/gwlbproxy/gwlbproxy/certs/secretstest"
)

// secretCA follows the README: `gwlbproxy ca init --out DIR`, then
// `cat ca.pem ca-key.pem` stored as the secret's string. It returns ca.pem
// and the fingerprint ca init printed.
func secretCA(t *testing.T, srv *secretstest.Server, name string) (caPEM []byte, fingerprint string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	var out, errb bytes.Buffer
	if err := runMain([]string{"ca", "init", "--out", dir}, &out, &errb); err != nil {
		t.Fatalf("ca init: %v (%s)", err, errb.String())
	}
	m := regexp.MustCompile(`fingerprint: ([0-9A-F:]{95})`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("ca init printed no fingerprint: %q", out.String())
	}
	caPEM = must(os.ReadFile(filepath.Join(dir, certs.CertFileName)))(t)
	keyPEM := must(os.ReadFile(filepath.Join(dir, certs.KeyFileName)))(t)
	srv.PutString(name, string(caPEM)+string(keyPEM))
	return caPEM, m[1]
}

// TestCAFromSecret: two appliances, as two instances of an Auto Scaling
// group, load their CA from one secret through the real SDK client and the
// default credential chain, and present the same CA: the admin listener
// serves it, and a client trusting only the file `ca init` wrote verifies
// connections bumped by either.
func TestCAFromSecret(t *testing.T) {
	secretstest.SetEnv(t, "eu-west-1")
	srv := secretstest.NewServer(t)
	caPEM, fingerprint := secretCA(t, srv, "gwlbproxy/ca")
	trusted := x509.NewCertPool()
	if !trusted.AppendCertsFromPEM(caPEM) {
		t.Fatal("ca.pem holds no certificate")
	}
	up := startUpstream(t, newTestNet().server(3), false)
	pol := filepath.Join(t.TempDir(), "gwlbproxy.yaml")
	os.WriteFile(pol, []byte(interceptPolicy), 0o644)

	// One instance names the secret, the other its ARN (whose region then
	// wins over the environment's).
	for i, id := range []string{"gwlbproxy/ca", secretstest.ARN("gwlbproxy/ca")} {
		var stateDir string
		before := len(srv.Requests())
		r := newRig(t, func(o *options) {
			o.Config = pol
			o.UpstreamCA = []string{up.caFile}
			o.CASecret = certs.Secret{ID: id, Endpoint: srv.URL}
			stateDir = o.StateDir
		}, nil)
		if got := r.app.ca.Fingerprint(); got != fingerprint {
			t.Fatalf("instance %d: CA fingerprint %s, want the secret's %s", i, got, fingerprint)
		}
		if code, served := httpGet(t, "http://"+r.app.adminLn.Addr().String()+"/ca.pem"); code != 200 || served != string(caPEM) {
			t.Errorf("instance %d: /ca.pem answered %d and differs from the secret's ca.pem", i, code)
		}
		if entries, _ := os.ReadDir(stateDir); len(entries) != 0 {
			t.Errorf("instance %d: a CA from a secret wrote %d files to --state-dir", i, len(entries))
		}
		tc, err := r.tlsDial(t, up.addr, &tls.Config{ServerName: "www.example.test", RootCAs: trusted})
		if err != nil {
			t.Fatalf("instance %d: a client trusting the secret's CA fails a bumped handshake: %v", i, err)
		}
		tc.Close()

		reqs := srv.Requests()[before:]
		wantRegion := []string{"eu-west-1", secretstest.Region}[i]
		if len(reqs) != 1 || reqs[0].Target != "secretsmanager.GetSecretValue" || reqs[0].SecretID != id ||
			!reqs[0].Signed || reqs[0].AccessKey != secretstest.AccessKeyID || reqs[0].Region != wantRegion {
			t.Errorf("instance %d: requests %+v, want one GetSecretValue of %s signed for %s", i, reqs, id, wantRegion)
		}
	}
}

// TestCASecretStartupErrors: a CA secret that is missing, forbidden,
// unusable or unreachable stops start-up (main exits 2) with an error naming
// the secret and the cause, before any listener is opened; the CA flags
// that contradict each other are refused.
func TestCASecretStartupErrors(t *testing.T) {
	secretstest.SetEnv(t, "us-east-1")
	srv := secretstest.NewServer(t)
	srv.Fail("denied", 400, "AccessDeniedException", "not authorized to perform: secretsmanager:GetSecretValue")
	srv.PutString("no-key", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
	_, _ = secretCA(t, srv, "good")
	srv.Hang("slow")

	start := func(t *testing.T, timeout time.Duration, args ...string) error {
		t.Helper()
		tn := newTestNet()
		args = append(args, "--geneve-addr", tn.appliance.String()+":0", "--admin-addr", tn.appliance.String()+":0",
			"--access-log", "", "--state-dir", t.TempDir(), "--ca-secret-endpoint", srv.URL)
		o, err := parseFlags(args, &bytes.Buffer{})
		if err != nil {
			return err
		}
		o.CASecret.Timeout = timeout
		a, err := newAppliance(o)
		if err == nil {
			a.ns.Close()
			a.adminLn.Close()
			t.Fatal("the appliance started")
		}
		return err
	}
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"missing", []string{"--ca-secret", "nope"}, []string{`"nope"`, "ResourceNotFoundException"}},
		{"denied", []string{"--ca-secret", "denied"}, []string{`"denied"`, "AccessDeniedException", "secretsmanager:GetSecretValue"}},
		{"no key", []string{"--ca-secret", "no-key"}, []string{`"no-key"`, "certificate"}},
		{"hangs", []string{"--ca-secret", "slow"}, []string{`"slow"`, "no answer", "300ms"}},
		{"with files", []string{"--ca-secret", "good", "--ca-cert", "ca.pem", "--ca-key", "ca-key.pem"}, []string{"--ca-secret", "--ca-cert"}},
		{"audit mode still loads", []string{"--ca-secret", "nope", "--config", auditPolicyFile(t)}, []string{`"nope"`, "ResourceNotFoundException"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Only the hanging endpoint needs a short timeout; the others
			// must not run into it on a loaded machine.
			timeout := 10 * time.Second
			if tc.name == "hangs" {
				timeout = 300 * time.Millisecond
			}
			began := time.Now()
			err := start(t, timeout, tc.args...)
			if d := time.Since(began); tc.name == "hangs" && d > 5*time.Second {
				t.Errorf("start-up took %v to fail with a 300ms secret timeout", d)
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}

	for _, args := range [][]string{
		{"--ca-secret", "x", "--ca-key", "k.pem"},
		{"--ca-secret-region", "eu-west-1"},
		{"--ca-secret-endpoint", "http://127.0.0.1:1"},
	} {
		var out, errb bytes.Buffer
		if err := runMain(args, &out, &errb); err == nil || !strings.Contains(err.Error(), "--ca-secret") {
			t.Errorf("%v: error %v, want one about --ca-secret", args, err)
		}
	}
}

func auditPolicyFile(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "audit.yaml")
	os.WriteFile(p, []byte("policy:\n  mode: audit\n  default: allow\n"), 0o644)
	return p
}

// TestCATrustFromSecret: `gwlbproxy ca trust --ca-secret` prints the
// commands for the secret's CA.
func TestCATrustFromSecret(t *testing.T) {
	secretstest.SetEnv(t, "us-east-1")
	srv := secretstest.NewServer(t)
	_, fingerprint := secretCA(t, srv, "gwlbproxy/ca")
	var out, errb bytes.Buffer
	err := runMain([]string{"ca", "trust", "--ca-secret", "gwlbproxy/ca", "--ca-secret-endpoint", srv.URL}, &out, &errb)
	if err != nil || !strings.Contains(out.String(), fingerprint) {
		t.Fatalf("ca trust --ca-secret: %v (%s)\n%s", err, errb.String(), out.String())
	}
	err = runMain([]string{"ca", "trust", "--ca-secret", "other", "--ca-secret-endpoint", srv.URL}, &out, &errb)
	if err == nil || !strings.Contains(err.Error(), `"other"`) {
		t.Fatalf("ca trust with a missing secret: %v", err)
	}
}
