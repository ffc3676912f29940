package certs

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// creatingFileName marks a state directory whose CA LoadOrCreate is
// writing: written before the key, removed once the certificate is in
// place. Found with only one of the two files, it says that creation was
// cut short (the process stopped or the machine went down between them),
// not that an operator lost half of a CA clients trust.
const creatingFileName = ".ca-creating"

// testHookKeyWritten, when set by a test, runs in WriteFiles between the
// key's file and the certificate's.
var testHookKeyWritten func()

// createFiles writes ca into stateDir as LoadOrCreate's new CA, inside the
// marker that lets a later LoadOrCreate recover from an interruption.
func createFiles(ca *CA, stateDir string) error {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return fmt.Errorf("create CA directory: %w", err)
	}
	marker := filepath.Join(stateDir, creatingFileName)
	if err := writeFileAtomic(marker, nil, 0o600); err != nil {
		return err
	}
	if err := ca.WriteFiles(stateDir); err != nil {
		return err
	}
	if err := removeIfExists(marker); err != nil {
		return err
	}
	// Until the directory is synced the marker's removal may be lost to
	// a power cut, and the next start would discard this CA, maybe served
	// by then, as a cut-short creation.
	return syncDir(stateDir)
}

// syncDir makes the entries of dir durable: fsync on a file makes its
// data durable, but its name, given by a rename or taken by a removal, is
// the directory's, which stays in memory until the file system commits it
// (seconds later) unless the directory is synced. Without it a power cut
// right after a CA was created could take all of its names, and the next
// boot would make a different CA while clients may already have installed
// this one. A variable so that a test can see when it is called.
var syncDir = func(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	defer d.Close()
	// A file system that cannot sync directories (EINVAL, ENOTSUP) has no
	// better way to offer; writing the CA should not fail for it.
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOTSUP) {
		return fmt.Errorf("sync directory: %w", err)
	}
	return nil
}

// lockStateDir takes an exclusive lock (flock) on stateDir, making it if
// need be, and returns what releases it; the kernel releases it too when
// the process ends. LoadOrCreate holds it throughout: two processes that
// share a state directory would otherwise each take the other's creation
// under way for a cut-short one (the marker with one file), discard it and
// write their own, and end with a key of one CA beside the certificate of
// the other.
func lockStateDir(stateDir string) (func(), error) {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("create CA directory: %w", err)
	}
	d, err := os.Open(stateDir)
	if err != nil {
		return nil, fmt.Errorf("lock the CA directory: %w", err)
	}
	if err := syscall.Flock(int(d.Fd()), syscall.LOCK_EX); err != nil {
		d.Close()
		return nil, fmt.Errorf("lock the CA directory %s: %w", stateDir, err)
	}
	return func() { d.Close() }, nil
}

// discardInterrupted removes what a cut-short creation left in stateDir,
// marker last, so that an interruption of this too is recovered from:
// the files, and the temporary files writeFileAtomic had not yet renamed
// into place (a stop between its create and its rename), one of which
// may hold the discarded private key.
func discardInterrupted(stateDir string) error {
	slog.Warn("the CA's creation in the state directory was cut short (stopped during the first start): discarding the half-written CA, never served, and creating one", "dir", stateDir)
	names := []string{KeyFileName, CertFileName, creatingFileName}
	entries, err := os.ReadDir(stateDir)
	if err != nil {
		return fmt.Errorf("discard the cut-short CA: %w", err)
	}
	for _, e := range entries {
		for _, name := range names {
			if strings.HasPrefix(e.Name(), tempPrefix(name)) {
				if err := removeIfExists(filepath.Join(stateDir, e.Name())); err != nil {
					return err
				}
			}
		}
	}
	for _, name := range names {
		if err := removeIfExists(filepath.Join(stateDir, name)); err != nil {
			return err
		}
	}
	return nil
}

// tempPrefix is how the names of writeFileAtomic's temporary files for
// the file name begin.
func tempPrefix(name string) string { return "." + name + ".tmp" }

// removeIfExists removes path, and is content when it is already gone.
// The error is os.Remove's, which names the operation and the path
// already ("remove PATH: ...").
func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
