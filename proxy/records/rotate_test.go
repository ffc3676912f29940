package records

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
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
