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

	"github.com/gwlbproxy/gwlbproxy/internal/testenv"
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

// readOnlyDir returns a directory that populate has filled and that can
// no longer be written: as root (whom permissions do not stop) a tmpfs
// remounted read-only, unmounted when the test ends; otherwise a
// directory of mode 0500.
func readOnlyDir(t *testing.T, populate func(dir string)) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() != 0 {
		populate(dir)
		if err := os.Chmod(dir, 0o500); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.Chmod(dir, 0o700) })
		return dir
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "mode=0700,size=1m"); err != nil {
		testenv.RequirePrivileged(t, "mounting a tmpfs: "+err.Error())
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	populate(dir)
	if err := syscall.Mount("", dir, "", syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
		t.Fatalf("remount %s read-only: %v", dir, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "probe"), nil, 0o600); err == nil {
		t.Fatal("the read-only directory took a file")
	}
	return dir
}

// TestLoadOrCreateMarkerReadOnly: a complete, valid CA beside a leftover
// creation marker (a stop after both files, before the marker went) in a
// state directory that cannot be written loads, with a warning, and keeps
// the marker. Before, the start failed on the marker's removal, with
// "remove" twice in the message. A cut-short creation there (a lone key
// and the marker) still fails, since it cannot be discarded, and its
// error says "remove" once.
func TestLoadOrCreateMarkerReadOnly(t *testing.T) {
	want := mustGenerate(t)
	dir := readOnlyDir(t, func(dir string) {
		if err := want.WriteFiles(dir); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, creatingFileName), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	})
	ca, created, err := LoadOrCreate(dir)
	if err != nil || created || ca.Fingerprint() != want.Fingerprint() {
		t.Fatalf("complete CA and a marker in a read-only directory: created=%v err=%v, want the CA loaded", created, err)
	}
	if _, err := os.Stat(filepath.Join(dir, creatingFileName)); err != nil {
		t.Errorf("the marker went from a read-only directory: %v", err)
	}

	dir = readOnlyDir(t, func(dir string) {
		if err := want.WriteFiles(dir); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(filepath.Join(dir, CertFileName)); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, creatingFileName), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	})
	_, _, err = LoadOrCreate(dir)
	if err == nil || strings.Count(err.Error(), "remove") != 1 {
		t.Fatalf("cut-short creation in a read-only directory: err=%v, want one failed remove", err)
	}
}

// TestLoadOrCreateInterruptedTempFiles: a creation stopped inside
// writeFileAtomic, between its temporary file and the rename (what a
// SIGTERM during the first start did), leaves .ca-key.pem.tmpNNN, a
// private key, beside the marker. The next LoadOrCreate discards those
// with the half-written CA; before, they stayed in the state directory
// for good. Files of other names are left alone.
func TestLoadOrCreateInterruptedTempFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	stray := mustGenerate(t)
	if err := stray.WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	// The stray CA's files, renamed as writeFileAtomic's temporary files
	// are named before their rename.
	for from, to := range map[string]string{KeyFileName: ".ca-key.pem.tmp610544969", CertFileName: ".ca.pem.tmp1234"} {
		if err := os.Rename(filepath.Join(dir, from), filepath.Join(dir, to)); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{creatingFileName, "..ca-creating.tmp42", "keep.txt", ".ca-key.pem.bak"} {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	ca, created, err := LoadOrCreate(dir)
	if err != nil || !created || ca.Fingerprint() == stray.Fingerprint() {
		t.Fatalf("after a creation stopped before its renames: created=%v err=%v, want a new CA", created, err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if want := []string{".ca-key.pem.bak", KeyFileName, CertFileName, "keep.txt"}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("state directory holds %q, want %q", got, want)
	}
}

// TestLoadOrCreateSyncsDirectory: creating a CA syncs the state directory
// after each rename (marker, key, certificate) and after the marker's
// removal, so that the names, not only the files' data, outlive a power
// cut; and loading a complete CA beside a leftover marker syncs its
// removal. A power cut cannot be staged here, so this checks what can be:
// that the real directory sync (called through) runs, and succeeds, at
// each of those points, seen by what the directory holds then.
func TestLoadOrCreateSyncsDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	var synced []string
	real := syncDir
	t.Cleanup(func() { syncDir = real })
	syncDir = func(d string) error {
		if d != dir {
			t.Errorf("synced %s, want the state directory %s", d, dir)
		}
		entries, err := os.ReadDir(d)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		synced = append(synced, strings.Join(names, " "))
		return real(d)
	}
	ca, created, err := LoadOrCreate(dir)
	if err != nil || !created {
		t.Fatalf("created=%v err=%v", created, err)
	}
	want := []string{
		creatingFileName,                                          // the marker renamed in
		creatingFileName + " " + KeyFileName,                      // the key
		creatingFileName + " " + KeyFileName + " " + CertFileName, // the certificate
		KeyFileName + " " + CertFileName,                          // the marker removed
	}
	if strings.Join(synced, "\n") != strings.Join(want, "\n") {
		t.Errorf("creating: the directory was synced holding\n%q\nwant\n%q", synced, want)
	}

	// A stop after both files, before the marker went.
	if err := os.WriteFile(filepath.Join(dir, creatingFileName), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	synced = nil
	again, created, err := LoadOrCreate(dir)
	if err != nil || created || again.Fingerprint() != ca.Fingerprint() {
		t.Fatalf("complete CA and a marker: created=%v err=%v", created, err)
	}
	if want := []string{KeyFileName + " " + CertFileName}; strings.Join(synced, "\n") != strings.Join(want, "\n") {
		t.Errorf("loading: the directory was synced holding %q, want %q", synced, want)
	}
}
