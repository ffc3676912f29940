package certs

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
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

// TestLoadOrCreateWaitsForAnother: LoadOrCreate waits while another holder
// of the state directory's lock (another process sharing it, creating its
// CA) works in it, and then loads what that one made, rather than taking
// its creation under way for a cut-short one and replacing it. And two at
// once end with one CA between them.
func TestLoadOrCreateWaitsForAnother(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	unlock, err := lockStateDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		ca      *CA
		created bool
		err     error
	}
	done := make(chan result, 1)
	go func() {
		ca, created, err := LoadOrCreate(dir)
		done <- result{ca, created, err}
	}()
	select {
	case r := <-done:
		t.Fatalf("LoadOrCreate went ahead while another held the directory: created %v, %v", r.created, r.err)
	case <-time.After(300 * time.Millisecond):
	}
	first, err := Generate("the other's CA")
	if err != nil {
		t.Fatal(err)
	}
	if err := first.WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	unlock()
	r := <-done
	if r.err != nil || r.created || r.ca.Fingerprint() != first.Fingerprint() {
		t.Fatalf("after the other's CA: created %v, %v; want that CA loaded", r.created, r.err)
	}

	dir = filepath.Join(t.TempDir(), "state")
	results := make(chan result, 2)
	for range 2 {
		go func() {
			ca, created, err := LoadOrCreate(dir)
			results <- result{ca, created, err}
		}()
	}
	a, b := <-results, <-results
	if a.err != nil || b.err != nil || a.created == b.created || a.ca.Fingerprint() != b.ca.Fingerprint() {
		t.Fatalf("two at once: created %v and %v, errors %v and %v, the same CA %v", a.created, b.created, a.err, b.err,
			a.err == nil && b.err == nil && a.ca.Fingerprint() == b.ca.Fingerprint())
	}
}
