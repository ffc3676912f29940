package records

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestLogFileRotatesBySize: a flood of records into an access log that
// rotates itself past MaxSize. The disk holds at most Keep+1 files, each
// about MaxSize (it rotates at the end of the batch that took it past),
// the oldest records rotated away; the newest are all there, in order, no
// line split across two files. Without it, the log grew as fast as a
// client made records, and a full disk failed the health check (review
// r1dos F3: 14-18 MB/s of records from under 1 Mbit/s of requests).
func TestLogFileRotatesBySize(t *testing.T) {
	path := filepath.Join(t.TempDir(), "access.log")
	const maxSize, keep, lines, batch = 4096, 3, 1000, 5
	lf, err := OpenLogFile(path, Rotation{MaxSize: maxSize, Keep: keep})
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	line := func(i int) []byte {
		return fmt.Appendf(nil, "{\"n\":%06d,\"pad\":%q}\n", i, bytes.Repeat([]byte("x"), 60))
	}
	for i := 0; i < lines; i += batch {
		var b []byte
		for j := i; j < i+batch; j++ {
			b = append(b, line(j)...)
		}
		if n, err := lf.Write(b); err != nil || n != len(b) {
			t.Fatalf("write of lines %d-%d: %d, %v", i, i+batch-1, n, err)
		}
	}
	names := []string{rotated(path, 3), rotated(path, 2), rotated(path, 1), path} // oldest first
	if _, err := os.Stat(rotated(path, keep+1)); err == nil {
		t.Errorf("%s kept: want at most %d rotations", rotated(path, keep+1), keep)
	}
	next := -1 // the line number expected next, once the first is known
	total := 0
	for _, name := range names {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(b) > maxSize+batch*len(line(0)) {
			t.Errorf("%s holds %d bytes, past %d and a batch", name, len(b), maxSize)
		}
		for _, l := range bytes.SplitAfter(b, []byte("\n")) {
			if len(l) == 0 {
				continue
			}
			var n int
			if _, err := fmt.Sscanf(string(l), "{\"n\":%06d,", &n); err != nil || !bytes.HasSuffix(l, []byte("\n")) {
				t.Fatalf("%s: a line cut or garbled: %q", name, l)
			}
			if next >= 0 && n != next {
				t.Fatalf("%s: line %d where %d was next: lost or reordered", name, n, next)
			}
			next = n + 1
			total++
		}
	}
	if next != lines {
		t.Errorf("the newest line on disk is %d, want %d", next-1, lines-1)
	}
	if st := lf.Stats(); int(st.Rotations) < lines*len(line(0))/maxSize-1 {
		t.Errorf("%d rotations for %d bytes of %d-byte files", st.Rotations, lines*len(line(0)), maxSize)
	}
	t.Logf("%d of %d lines on disk in %d files, %d rotations", total, lines, len(names), lf.Stats().Rotations)
}

// TestLogFileRotationFollowsAMovedPath: logrotate (or an operator) moves
// the path away while the file open is about to reach MaxSize, and the
// batches that take it there come before the once-a-second look. The
// rotation finds the path gone, takes nothing and shifts nothing: it
// follows the move, opening the path anew, and every rotated file and
// every record is still on disk. The rotation shifted the chain first
// and renamed the path last: with the path gone, each batch shifted the
// chain again, and within 10 batches it removed every rotated file and the
// file open itself, its records counted written (review r4s25 F1).
func TestLogFileRotationFollowsAMovedPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "access.log")
	const maxSize, keep = 4096, 3
	for i := 1; i <= keep; i++ {
		if err := os.WriteFile(rotated(path, i), fmt.Appendf(nil, "{\"kept\":%d}\n", i), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	lf, err := OpenLogFile(path, Rotation{MaxSize: maxSize, Keep: keep})
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	line := func(i int) []byte { return fmt.Appendf(nil, "{\"n\":%06d}\n", i) }
	n := 0
	write := func() {
		t.Helper()
		if _, err := lf.Write(line(n)); err != nil {
			t.Fatalf("write %d: %v", n, err)
		}
		n++
	}
	for size := 0; size < maxSize-100; size += len(line(0)) {
		write()
	}
	// logrotate's rotation: the chain one up, the oldest gone, the path
	// renamed to .1, nothing created (nocreate).
	if err := os.Remove(rotated(path, keep)); err != nil {
		t.Fatal(err)
	}
	for i := keep - 1; i >= 1; i-- {
		if err := os.Rename(rotated(path, i), rotated(path, i+1)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Rename(path, rotated(path, 1)); err != nil {
		t.Fatal(err)
	}
	for range 50 { // well within a second: before the look at the path
		write()
	}
	for i := 2; i <= keep; i++ {
		if b, err := os.ReadFile(rotated(path, i)); err != nil || !bytes.HasPrefix(b, []byte(`{"kept":`)) {
			t.Errorf("%s: %.20q, %v; want the file kept there", rotated(path, i), b, err)
		}
	}
	seen := map[int]bool{}
	for _, name := range []string{rotated(path, 1), path} {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, l := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
			var i int
			if _, err := fmt.Sscanf(string(l), "{\"n\":%06d}", &i); err == nil {
				seen[i] = true
			}
		}
	}
	if len(seen) != n {
		t.Errorf("%d of %d lines on disk: records counted written were removed", len(seen), n)
	}
	t.Logf("stats %+v", lf.Stats())
}

// TestLogFileRotationLeavesSymlinksAndFIFOs: an access log path that is
// a symlink (to a log on a bigger volume) or a FIFO (a collector's) is
// never renamed by the rotation: it would be replaced by regular files
// at the path, on the small volume, or cut the collector off (review
// r4s25 F2).
func TestLogFileRotationLeavesSymlinksAndFIFOs(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "elsewhere.log")
	link := filepath.Join(dir, "access.log")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	lf, err := OpenLogFile(link, Rotation{MaxSize: 1024, Keep: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	for i := range 100 {
		if _, err := lf.Write(fmt.Appendf(nil, "{\"n\":%06d}\n", i)); err != nil {
			t.Fatal(err)
		}
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the symlink at the path: %v, %v; want it kept", fi, err)
	}
	if _, err := os.Lstat(rotated(link, 1)); err == nil {
		t.Error("the symlinked log was rotated")
	}
	if b, _ := os.ReadFile(target); bytes.Count(b, []byte("\n")) != 100 {
		t.Errorf("the symlink's target holds %d lines, want 100", bytes.Count(b, []byte("\n")))
	}
	if lf.Stats().Rotations != 0 {
		t.Errorf("%d rotations", lf.Stats().Rotations)
	}
}

// TestLogFileRotationLosesNothingItCannotDo: a rotation whose shift
// fails midway (a rotated file that cannot be moved) undoes it: the file
// it took goes back to the path, written on there, and the rotated files
// stay as they were, however often it is tried again; a file a crash left
// mid-rotation (access.log.rotating) is kept aside, not overwritten. The
// taken file stayed as access.log.rotating and the next rotation took the
// new file's records over it (90 of 240 records left; a crash's leftover
// lost all 50 of its own: review r5s25 F3); then each try, once a second,
// removed the oldest rotation before the shift failed again (r6s25 F2).
func TestLogFileRotationLosesNothingItCannotDo(t *testing.T) {
	for _, stuck := range []string{"a middle rename", "the final rename"} {
		t.Run(stuck, func(t *testing.T) { rotationStuck(t, stuck == "the final rename") })
	}
}

// rotationStuck writes for 2.5 s into a log whose rotations fail: the
// move of path.1 up, or (final) the taken file's to path.1 (review r7s25
// F2: that undo was not tested).
func rotationStuck(t *testing.T, final bool) {
	dir := t.TempDir()
	path := filepath.Join(dir, "access.log")
	const keep = 3
	for i := 1; i <= keep; i++ {
		if err := os.WriteFile(rotated(path, i), fmt.Appendf(nil, "{\"kept\":%d}\n", i), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(rotationHeld(path), []byte("{\"left\":1}\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	stuck := rotated(path, 1)
	if final {
		stuck = rotationHeld(path)
	}
	renameFile = func(from, to string) error {
		if from == stuck && (!final || to == rotated(path, 1)) {
			return &os.LinkError{Op: "rename", Old: from, New: to, Err: syscall.EPERM}
		}
		return os.Rename(from, to)
	}
	t.Cleanup(func() { renameFile = os.Rename })
	lf, err := OpenLogFile(path, Rotation{MaxSize: 512, Keep: keep})
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	lines := 0
	for end := time.Now().Add(2500 * time.Millisecond); time.Now().Before(end); lines++ {
		if _, err := lf.Write(fmt.Appendf(nil, "{\"n\":%06d}\n", lines)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
	for i := 1; i <= keep; i++ {
		if b, err := os.ReadFile(rotated(path, i)); err != nil || string(b) != fmt.Sprintf("{\"kept\":%d}\n", i) {
			t.Errorf("%s: %q, %v; want it as it was", rotated(path, i), b, err)
		}
	}
	seen, left := map[int]bool{}, 0
	names, _ := filepath.Glob(path + "*")
	for _, name := range names {
		b, _ := os.ReadFile(name)
		for _, l := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
			var i int
			if _, err := fmt.Sscanf(string(l), "{\"n\":%06d}", &i); err == nil {
				seen[i] = true
			} else if string(l) == `{"left":1}` {
				left++
			}
		}
	}
	if len(seen) != lines || left != 1 {
		t.Errorf("%d of %d lines on disk, the leftover's line %d times (files %v)", len(seen), lines, left, names)
	}
	if st := lf.Stats(); st.Rotations != 0 || st.ReopenFailures < 2 {
		t.Errorf("stats %+v: want no rotation counted, the tries' failures counted", st)
	}
}
