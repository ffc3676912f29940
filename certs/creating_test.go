package certs

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// interruptDirEnv makes TestLoadOrCreateInterrupted, run as a child, create
// a CA in that directory and die between the key's file and the
// certificate's.
const interruptDirEnv = "CERTS_TEST_INTERRUPT_DIR"

// TestLoadOrCreateInterrupted: a process killed while LoadOrCreate writes a
// new CA, after the key's file and before the certificate's (what a stop
// during the first start did), leaves a state directory the next
// LoadOrCreate recovers: it makes a new CA, which is kept from then on.
// Before, every later start failed with "ca-key.pem exists but ca.pem does
// not". A lone key that LoadOrCreate did not leave is still refused.
func TestLoadOrCreateInterrupted(t *testing.T) {
	if dir := os.Getenv(interruptDirEnv); dir != "" {
		testHookKeyWritten = func() { _ = syscall.Kill(os.Getpid(), syscall.SIGKILL); select {} }
		_, _, _ = LoadOrCreate(dir)
		t.Fatal("not killed")
	}
	dir := filepath.Join(t.TempDir(), "state")
	cmd := exec.Command(os.Args[0], "-test.run=^TestLoadOrCreateInterrupted$")
	cmd.Env = append(os.Environ(), interruptDirEnv+"="+dir)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || !ee.Sys().(syscall.WaitStatus).Signaled() {
		t.Fatalf("the child was not killed: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, KeyFileName)); err != nil {
		t.Fatalf("no key left by the interrupted creation: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, CertFileName)); err == nil {
		t.Fatal("the certificate was written: the creation was not interrupted between the files")
	}

	ca, created, err := LoadOrCreate(dir)
	if err != nil || !created {
		t.Fatalf("after an interrupted creation: created=%v err=%v, want a new CA", created, err)
	}
	again, created, err := LoadOrCreate(dir)
	if err != nil || created || again.Fingerprint() != ca.Fingerprint() {
		t.Fatalf("the recovered CA is not kept: created=%v err=%v", created, err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != KeyFileName && e.Name() != CertFileName {
			t.Errorf("state directory holds %s after a complete creation", e.Name())
		}
	}

	// Without the marker a lone key is an operator's loss, never replaced.
	if err := os.Remove(filepath.Join(dir, CertFileName)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadOrCreate(dir); err == nil || !strings.Contains(err.Error(), "exists but") {
		t.Fatalf("lone key without the creation marker: err=%v, want it refused", err)
	}
}
