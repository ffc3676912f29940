package appliance

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestAuditModeLoadsGivenCA: an appliance started in audit mode with
// --ca-cert/--ca-key loads that CA (configuration.md: the /ca* paths exist
// "not in audit mode without --ca-cert or --ca-secret"). It serves the trust
// page clients are told to fetch before enforcement begins, and a reload to
// a bumping policy is accepted; without the CA that reload is refused with
// "restart it to load one", which a restart would not fix.
func TestAuditModeLoadsGivenCA(t *testing.T) {
	certFile, keyFile, _ := writeCAFiles(t, time.Now().Add(365*24*time.Hour))
	cfg := filepath.Join(t.TempDir(), "gwlbproxy.yaml")
	if err := os.WriteFile(cfg, []byte("policy:\n  mode: audit\n  default: allow\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := newRig(t, func(o *Options) { o.Config, o.CACert, o.CAKey = cfg, certFile, keyFile }, nil)
	if code, _ := httpGet(t, "http://"+r.app.adminLn.Addr().String()+"/ca.pem"); code != 200 {
		t.Errorf("/ca.pem in audit mode with --ca-cert: %d, want 200", code)
	}
	if err := os.WriteFile(cfg, []byte("policy:\n  mode: enforce\n  default: bump\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := r.app.Reload(); err != nil {
		t.Errorf("reload to a bumping policy with --ca-cert given: %v", err)
	}
}
