package records

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestOtherRotatorsFound: at start, with the appliance rotating the
// access log, a logrotate configuration that names it too is found (the
// package's old /etc/logrotate.d/gwlbproxy, which an upgrade keeps when
// edited), and one that names other files, comments, scripts or an
// upgrade's leftover (.rpmsave, which logrotate skips) is not: two
// rotators of one chain lose rotated files (review r3s26 F1).
func TestOtherRotatorsFound(t *testing.T) {
	const log = "/var/log/gwlbproxy/access.log"
	for conf, want := range map[string]bool{
		"/var/log/gwlbproxy/access.log {\n    daily\n    rotate 7\n}\n":                            true,
		"/var/log/gwlbproxy/*.log {\n  weekly\n}\n":                                                true,
		"\"/var/log/gwlbproxy/access.log\"\n/var/lib/gwlbproxy/tls-keys.log\n{\n  daily\n}\n":      true,
		"weekly\n/var/lib/gwlbproxy/tls-keys.log {\n    daily\n}\n":                                false,
		"# /var/log/gwlbproxy/access.log {\n/var/lib/gwlbproxy/tls-keys.log {\n}\n":                false,
		"/var/log/x.log {\n postrotate\n  ls /var/log/gwlbproxy/* {\n endscript\n}\n":              false,
		"/var/log/x.log {\n daily\n}\n/var/log/gwlbproxy/access.log /var/log/y {\n}\n":             true,
		"include /etc/logrotate.d\n/var/log/wtmp {\n    monthly\n}\n":                              false,
		"/var/log/gwlbproxy/access.log.1 {\n}\n":                                                   false,
		"/var/lib/gwlbproxy/tls-keys.log\n{\n}\n/var/log/gwlbproxy/access.log\n{\n  nocreate\n}\n": true,
	} {
		if got := namesLog(conf, log); got != want {
			t.Errorf("namesLog(%q): %v, want %v", conf, got, want)
		}
	}
	dir := t.TempDir()
	d := filepath.Join(dir, "logrotate.d")
	if err := os.Mkdir(d, 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"logrotate.conf":                "weekly\ninclude " + d + "\n",
		"logrotate.d/gwlbproxy":         log + " {\n  daily\n}\n",
		"logrotate.d/gwlbproxy.rpmsave": log + " {\n  daily\n}\n",
		"logrotate.d/syslog":            "/var/log/messages {\n}\n",
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(b), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	real := logrotateConfs
	logrotateConfs = []string{filepath.Join(dir, "logrotate.conf"), d}
	t.Cleanup(func() { logrotateConfs = real })
	if got := otherRotators(log); !slices.Equal(got, []string{filepath.Join(d, "gwlbproxy")}) {
		t.Errorf("otherRotators: %v, want only logrotate.d/gwlbproxy", got)
	}
}
