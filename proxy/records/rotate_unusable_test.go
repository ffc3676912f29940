package records

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testenv"
)

// TestLogFileRotationGoesAroundUnusableNames: a name of the chain the
// rotation can never use, and 12 files' worth of records (keep 3, MaxSize
// 512). Every rotation still happens, none fails, the access log stays
// within MaxSize and a line, and the name gone around is counted. A
// non-empty directory moved up to access.log.3 could not be removed as
// access.log.3.dropping, and every later rotation failed on it; an
// immutable access.log.2 failed every move; the access log grew to 10-13
// times MaxSize, and on (review r3s26 F2).
func TestLogFileRotationGoesAroundUnusableNames(t *testing.T) {
	dirAt := func(name string) func(t *testing.T, path string) {
		return func(t *testing.T, path string) {
			if err := os.MkdirAll(filepath.Join(path+name, "sub"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, c := range []struct {
		name    string
		make    func(t *testing.T, path string)
		rotates int // rotations in the chain: old files kept beyond it are left alone
	}{
		{"a non-empty directory at .1", dirAt(".1"), 3},
		{"a non-empty directory at .2", dirAt(".2"), 3},
		{"a non-empty directory at .3.dropping", dirAt(".3.dropping"), 3},
		{"an immutable .2", immutable(".2"), 1},
		{"an immutable .3", immutable(".3"), 2},
		{"an immutable .3.dropping", immutable(".3.dropping"), 3},
	} {
		t.Run(c.name, func(t *testing.T) { goAround(t, c.make, c.rotates) })
	}
}

// immutable makes path+name a file chattr +i made immutable (an operator
// keeping evidence), removed again at the end.
func immutable(name string) func(t *testing.T, path string) {
	return func(t *testing.T, path string) {
		testenv.RequireRoot(t, "chattr +i needs CAP_LINUX_IMMUTABLE")
		chattr, err := exec.LookPath("chattr")
		if err != nil {
			testenv.RequirePrivileged(t, "no chattr")
		}
		f := path + name
		if err := os.WriteFile(f, []byte("{\"evidence\":1}\n"), 0o640); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(chattr, "+i", f).CombinedOutput(); err != nil {
			testenv.RequirePrivileged(t, fmt.Sprintf("chattr +i on %s: %v %s", f, err, out))
		}
		t.Cleanup(func() { _ = exec.Command(chattr, "-i", f).Run() })
		if err := os.Rename(f, f+"x"); err == nil || !strings.Contains(err.Error(), syscall.EPERM.Error()) {
			t.Fatalf("renaming the immutable %s: %v, want EPERM", f, err)
		}
	}
}

func goAround(t *testing.T, makeIt func(t *testing.T, path string), rotates int) {
	path := filepath.Join(t.TempDir(), "access.log")
	makeIt(t, path)
	const keep, maxSize, files = 3, 512, 12
	lf, err := OpenLogFile(path, Rotation{MaxSize: maxSize, Keep: keep})
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	line := []byte("{\"pad\":\"" + strings.Repeat("x", 53) + "\"}\n") // 64 bytes
	for i := 0; i < files*maxSize/len(line); i++ {
		if _, err := lf.Write(line); err != nil {
			t.Fatalf("write %d: %v (stats %+v)", i, err, lf.Stats())
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := lf.Stats()
	t.Logf("stats %+v, access.log %d bytes", st, fi.Size())
	if st.Rotations < files-1 || st.ReopenFailures != 0 || st.RotationFailingSeconds != 0 {
		t.Errorf("stats %+v: want every rotation done, none failed", st)
	}
	if fi.Size() > maxSize+int64(len(line)) {
		t.Errorf("access.log holds %d bytes: past MaxSize and a line", fi.Size())
	}
	if st.NamesSkipped == 0 {
		t.Error("the name gone around is not counted")
	}
	for i := 1; i <= rotates; i++ {
		if b, err := os.ReadFile(rotated(path, i)); err != nil || !bytes.HasPrefix(b, line) || len(b) < maxSize {
			t.Errorf("%s: %d bytes (%v), want a rotated file of MaxSize", rotated(path, i), len(b), err)
		}
	}
	names, _ := filepath.Glob(path + "*")
	if len(names) > keep+3 {
		t.Errorf("files %v: more than the chain, the access log and the name gone around", names)
	}
}

// TestLogFileCappedEndsACutLine: a write cut mid-line took the file past
// twice MaxSize while its rotation fails. The Writer's newline that ends
// the cut line still goes in (the rotation waits for whole lines, so a
// refused newline would leave it never tried again); the next batch is
// refused; once the rotation works, writes go on in a new file.
func TestLogFileCappedEndsACutLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "access.log")
	fail := true
	real := renameFile
	renameFile = func(from, to string) error {
		if fail {
			return &os.LinkError{Op: "rename", Old: from, New: to, Err: syscall.EROFS}
		}
		return real(from, to)
	}
	t.Cleanup(func() { renameFile = real })
	clock := fakeLogClock(t)
	lf, err := OpenLogFile(path, Rotation{MaxSize: 100, Keep: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	if _, err := lf.Write(append(bytes.Repeat([]byte("x"), 150), '\n')); err != nil { // its rotation fails
		t.Fatal(err)
	}
	if _, err := lf.Write(append([]byte("{\"cut\":"), bytes.Repeat([]byte("x"), 60)...)); err != nil { // as a partial write leaves it
		t.Fatal(err)
	}
	if n, err := lf.Write([]byte("\n")); n != 1 || err != nil {
		t.Fatalf("the newline ending the cut line: %d, %v; want it written", n, err)
	}
	clock.Add(int64(capGrace))
	if _, err := lf.Write([]byte("{}\n")); !errors.Is(err, errCapped) {
		t.Fatalf("a batch past twice MaxSize, the rotation failing for capGrace: %v, want it refused", err)
	}
	fail = false
	clock.Add(int64(2 * time.Second))
	if _, err := lf.Write([]byte("{\"after\":1}\n")); err != nil {
		t.Fatalf("after the rotation works: %v", err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "{\"after\":1}\n" {
		t.Errorf("the new access log: %q, %v", b, err)
	}
	if st := lf.Stats(); st.Rotations != 1 || st.WritesRefused != 1 || st.RotationFailingSeconds != 0 {
		t.Errorf("stats %+v: want one rotation, one batch refused, not failing", st)
	}
}

// TestLogFileCapWaitsForARotationFailingAWhile: --access-log-max-size at
// its minimum (1 MiB), a 16 MB/s flood (64 KiB batches every 4 ms): one
// failed rotation (a name found taken once) refuses nothing, since the
// next try, a second later, works; the cap refused 0.93 s of records
// (review r7s26 F3). A rotation that keeps failing is refused past twice
// MaxSize once it has failed for capGrace, the file bounded there.
func TestLogFileCapWaitsForARotationFailingAWhile(t *testing.T) {
	for _, always := range []bool{false, true} {
		clock := fakeLogClock(t)
		path := filepath.Join(t.TempDir(), "access.log")
		lf, err := OpenLogFile(path, Rotation{MaxSize: 1 << 20, Keep: 7})
		if err != nil {
			t.Fatal(err)
		}
		real := renameFile
		failed := false
		renameFile = func(from, to string) error {
			if (always || !failed) && to == rotated(path, 1) {
				failed = true
				return &os.LinkError{Op: "rename", Old: from, New: to, Err: syscall.EEXIST}
			}
			return real(from, to)
		}
		batch := append(bytes.Repeat([]byte("x"), 64<<10-1), '\n')
		const step = 4 * time.Millisecond
		refused, firstRefused := 0, time.Duration(0)
		for i := range 4000 { // 16 s
			clock.Add(int64(step))
			if _, err := lf.Write(batch); errors.Is(err, errCapped) {
				if refused++; refused == 1 {
					firstRefused = time.Duration(i) * step
				}
			} else if err != nil {
				t.Fatal(err)
			}
		}
		renameFile = real
		st := lf.Stats()
		lf.Close()
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if !always {
			if refused != 0 || st.Rotations < 200 || st.ReopenFailures != 1 {
				t.Errorf("one failed rotation: %d batches refused, stats %+v; want none refused, the rotation going on", refused, st)
			}
			continue
		}
		// The file took 2 MiB in 128 ms: refused from capGrace on.
		bound := 2<<20 + int64(capGrace/step+1)*int64(len(batch))
		if refused == 0 || firstRefused < capGrace || firstRefused > capGrace+time.Second || fi.Size() > bound {
			t.Errorf("rotation always failing: %d refused from %v, file %d bytes; want refusals from capGrace on, the file at most %d", refused, firstRefused, fi.Size(), bound)
		}
	}
}

// TestLogFileRotationRemovesLeftDroppings: with a stuck .dropping (a
// non-empty directory), the oldest goes to a fresh .dropping-<ns> name; an
// undo that stops short (names found taken) leaves it there, as a crash
// before the remove would, and nothing looked at such names again: each
// kept a rotated file for good (review r7s26 F5). The next drop that
// succeeds removes them, and leaves other names alone.
func TestLogFileRotationRemovesLeftDroppings(t *testing.T) {
	clock := fakeLogClock(t)
	path := filepath.Join(t.TempDir(), "access.log")
	const keep = 3
	if err := os.MkdirAll(filepath.Join(rotated(path, keep)+".dropping", "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	crashed := rotated(path, 2) + ".dropping-12345" // a crash's, with a shorter chain
	other := rotated(path, keep) + ".dropping-notes"
	for _, name := range []string{crashed, other} {
		if err := os.WriteFile(name, []byte("{}\n"), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	lf, err := OpenLogFile(path, Rotation{MaxSize: 512, Keep: keep})
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	line := []byte("{\"pad\":\"" + strings.Repeat("x", 53) + "\"}\n")
	write := func(batches int) {
		for range batches {
			clock.Add(int64(50 * time.Millisecond))
			if _, err := lf.Write(line); err != nil {
				t.Fatal(err)
			}
		}
	}
	write(5 * 512 / len(line)) // the chain full
	real := renameFile
	conflicts := 0
	renameFile = func(from, to string) error {
		// held -> .1 finds .1 taken, and so does the undo's .2 -> .1.
		if conflicts < 2 && to == rotated(path, 1) && (from == rotationHeld(path) || from == rotated(path, 2)) {
			conflicts++
			return &os.LinkError{Op: "rename", Old: from, New: to, Err: syscall.EEXIST}
		}
		return real(from, to)
	}
	write(512 / len(line))
	renameFile = real
	if left, _ := filepath.Glob(rotated(path, keep) + ".dropping-[0-9]*"); len(left) != 1 || conflicts != 2 {
		t.Fatalf("left at .dropping-<ns>: %v (%d conflicts); want the undo to leave one", left, conflicts)
	}
	// The stuck directory freed: the next drops succeed.
	if err := os.RemoveAll(rotated(path, keep) + ".dropping"); err != nil {
		t.Fatal(err)
	}
	write(4 * 512 / len(line))
	if left, _ := filepath.Glob(path + ".*.dropping-[0-9]*"); len(left) != 0 {
		t.Errorf("left at .dropping-<ns> after drops that succeeded: %v", left)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("%s, no name of the rotation's, removed: %v", other, err)
	}
}

// TestLogFileNamesSkippedCountsNames: rotation_names_skipped counts the
// names the rotation could not use, each once, not the rotations that
// found them: a stuck .dropping and an unmovable .2 over 20 rotations
// are 2; they counted 40 (review r7s26 F6).
func TestLogFileNamesSkippedCountsNames(t *testing.T) {
	clock := fakeLogClock(t)
	path := filepath.Join(t.TempDir(), "access.log")
	const keep = 4
	if err := os.MkdirAll(filepath.Join(rotated(path, keep)+".dropping", "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	lf, err := OpenLogFile(path, Rotation{MaxSize: 512, Keep: keep})
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	line := []byte("{\"pad\":\"" + strings.Repeat("x", 53) + "\"}\n")
	write := func(rotations int) {
		for range rotations * 512 / len(line) {
			clock.Add(int64(50 * time.Millisecond))
			if _, err := lf.Write(line); err != nil {
				t.Fatal(err)
			}
		}
	}
	write(8) // the chain full: the stuck .dropping met at each rotation
	real := renameFile
	renameFile = func(from, to string) error {
		if from == rotated(path, 2) && to == rotated(path, 3) {
			return &os.LinkError{Op: "rename", Old: from, New: to, Err: syscall.EPERM}
		}
		return real(from, to)
	}
	t.Cleanup(func() { renameFile = real })
	write(12)
	if st := lf.Stats(); st.NamesSkipped != 2 || st.Rotations < 15 {
		t.Errorf("stats %+v: want 2 names skipped (.4.dropping, .2) over the rotations", st)
	}
}
