package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// keyLogPath is where docs/ids.md puts --tls-keylog.
const keyLogPath = "/var/lib/gwlbproxy/tls-keys.log"

// globalLogrotate is what the tests put ahead of a packaged stanza: the
// global options of /etc/logrotate.conf on Amazon Linux 2023 and the RHEL
// family (dateext, create), and an administrator's compress. The stanzas
// inherit them unless they say otherwise.
const globalLogrotate = "weekly\nrotate 4\ncreate\ndateext\ncompress\n"

// TestLogrotateKeyLog: the package rotates the TLS key log at the path the
// documentation gives, which clients make grow by about 1.4 KB per bumped
// connection: with a size bound, copytruncate (the appliance keeps its
// file open, appending) and shred (it holds secrets). Run by logrotate on
// a copy of the stanza pointed at a temporary file, it empties the file,
// keeps the rotated copy private (0600, as the appliance makes the file),
// and leaves the file open for appending at its start.
func TestLogrotateKeyLog(t *testing.T) {
	conf := readFile(t, "etc/logrotate")
	if !strings.Contains(readFile(t, "../docs/ids.md"), "--tls-keylog "+keyLogPath) {
		t.Fatalf("docs/ids.md no longer gives --tls-keylog %s", keyLogPath)
	}
	_, stanza, ok := strings.Cut(conf, keyLogPath+" {")
	if !ok {
		t.Fatalf("etc/logrotate does not rotate %s", keyLogPath)
	}
	stanza, _, _ = strings.Cut(stanza, "}")
	for _, want := range []string{"maxsize ", "copytruncate", "shred", "su gwlbproxy gwlbproxy", "nocompress", "nodateext"} {
		if !strings.Contains(stanza, want) {
			t.Errorf("the key log's stanza has no %q:\n%s", want, stanza)
		}
	}
	logrotate := toolPath(t, "logrotate")
	dir := t.TempDir()
	keys := filepath.Join(dir, "tls-keys.log")
	f, err := os.OpenFile(keys, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.WriteString("CLIENT_RANDOM aa bb\n")
	// The stanza as packaged, for the temporary file, run as whoever runs
	// the test (the su user need not exist here).
	var lines []string
	for _, l := range strings.Split(stanza, "\n") {
		if !strings.Contains(l, "su gwlbproxy") {
			lines = append(lines, l)
		}
	}
	c := filepath.Join(dir, "logrotate.conf")
	os.WriteFile(c, []byte(globalLogrotate+keys+" {"+strings.Join(lines, "\n")+"}\n"), 0o600)
	if out, err := exec.Command(logrotate, "-f", "-s", filepath.Join(dir, "state"), c).CombinedOutput(); err != nil {
		t.Fatalf("logrotate: %v\n%s", err, out)
	}
	f.WriteString("CLIENT_RANDOM cc dd\n")
	if b, _ := os.ReadFile(keys); string(b) != "CLIENT_RANDOM cc dd\n" {
		t.Errorf("after rotation the key log holds %q", b)
	}
	rotated := keys + ".1"
	if b, err := os.ReadFile(rotated); err != nil || string(b) != "CLIENT_RANDOM aa bb\n" {
		t.Fatalf("the rotated key log holds %q (%v)", b, err)
	}
	if fi, _ := os.Stat(rotated); fi.Mode().Perm() != 0o600 {
		t.Errorf("the rotated key log has mode %v, want 0600", fi.Mode().Perm())
	}
}
