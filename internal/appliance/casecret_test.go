package appliance

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/certs"
	"github.com/gwlbproxy/gwlbproxy/certs/secretstest"
)

// secretCA stores a new CA as the README says, `cat ca.pem ca-key.pem` as
// the secret's string, and returns ca.pem and its fingerprint.
func secretCA(t *testing.T, srv *secretstest.Server, name string) (caPEM []byte, fingerprint string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	ca, err := certs.Generate(certs.DefaultCommonName)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	caPEM = must(os.ReadFile(filepath.Join(dir, certs.CertFileName)))(t)
	keyPEM := must(os.ReadFile(filepath.Join(dir, certs.KeyFileName)))(t)
	srv.PutString(name, string(caPEM)+string(keyPEM))
	return caPEM, ca.Fingerprint()
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
		r := newRig(t, func(o *Options) {
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
