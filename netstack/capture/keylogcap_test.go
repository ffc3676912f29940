package capture

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestKeyLogCapped: a client opening bumped connections in a loop makes
// the key log grow by about 1.4 KB each; past its cap further writes are
// dropped and counted (never failing the handshake), and once logrotate
// (copytruncate, as the package's stanza does it) has emptied the file,
// writes go on into it.
func TestKeyLogCapped(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tls-keys.log")
	k, err := OpenKeyLog(path)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	k.max = 1000 // ten lines of a hundred bytes
	line := func(i int) []byte {
		return fmt.Appendf(nil, "CLIENT_RANDOM %064x %030x\n", i, i)[:100]
	}
	for i := range 25 {
		if n, err := k.Write(line(i)); n != 100 || err != nil {
			t.Fatalf("write %d: %d, %v", i, n, err)
		}
	}
	if b, _ := os.ReadFile(path); len(b) != 1000 || k.Dropped() != 15 || k.Errors() != 0 {
		t.Fatalf("the key log holds %d bytes after 25 lines of 100, %d dropped, %d errors; want 1000, 15, 0", len(b), k.Dropped(), k.Errors())
	}

	logrotate, err := exec.LookPath("logrotate")
	if err != nil {
		// Without the tool, empty the file as copytruncate does.
		if err := os.Truncate(path, 0); err != nil {
			t.Fatal(err)
		}
	} else {
		conf := filepath.Join(dir, "logrotate.conf")
		os.WriteFile(conf, []byte(path+" {\n    rotate 1\n    copytruncate\n    missingok\n}\n"), 0o600)
		if out, err := exec.Command(logrotate, "-f", "-s", filepath.Join(dir, "state"), conf).CombinedOutput(); err != nil {
			t.Fatalf("logrotate: %v\n%s", err, out)
		}
	}
	k.Write(line(99))
	if b, _ := os.ReadFile(path); !bytes.Equal(b, line(99)) || k.Dropped() != 15 {
		t.Fatalf("after rotation the key log holds %q, %d dropped; want the new line alone", b, k.Dropped())
	}
}

// TestKeyLogWriteErrorCounted: a key log write the file system refuses (a
// full disk: /dev/full) is counted in tls_keylog_errors, so that the
// operator learns connections cannot be decrypted, and never fails the
// handshake.
func TestKeyLogWriteErrorCounted(t *testing.T) {
	f, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
	if err != nil {
		t.Skip(err)
	}
	k := &KeyLog{f: f, max: KeyLogMaxBytes}
	defer k.Close()
	line := []byte("CLIENT_TRAFFIC_SECRET_0 00 00\n")
	if n, err := k.Write(line); n != len(line) || err != nil {
		t.Fatalf("Write: %d, %v (a failed key log write must not fail the handshake)", n, err)
	}
	if k.Errors() != 1 {
		t.Errorf("a refused write: %d errors, want 1", k.Errors())
	}
}
