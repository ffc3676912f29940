package records

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestLogFileCapRefusesWhenNoNewFileCanBeMade: the rotation's renames
// work, but no new file can be made at the path (a directory appears
// there, as inodes exhausted, EMFILE or EDQUOT make the create fail), or
// the path becomes a symlink to the file open. The file open takes every
// record: it must still be refused past twice MaxSize once the rotation
// has not worked for capGrace. Only a failed rename started the grace, so
// the file grew to 128 MiB against a 2 MiB cap (review r9s26 F3).
func TestLogFileCapRefusesWhenNoNewFileCanBeMade(t *testing.T) {
	for _, name := range []string{"directory", "symlink"} {
		t.Run(name, func(t *testing.T) {
			clock := fakeLogClock(t)
			dir := t.TempDir()
			path := filepath.Join(dir, "access.log")
			lf, err := OpenLogFile(path, Rotation{MaxSize: 1 << 20, Keep: 7})
			if err != nil {
				t.Fatal(err)
			}
			defer lf.Close()
			open := path // the file the appliance ends up writing
			switch name {
			case "directory":
				real := renameFile
				t.Cleanup(func() { renameFile = real })
				renameFile = func(from, to string) error {
					err := real(from, to)
					if err == nil && from == rotationHeld(path) && to == rotated(path, 1) {
						if err := os.Mkdir(path, 0o755); err != nil {
							t.Error(err)
						}
					}
					return err
				}
				open = rotated(path, 1)
			case "symlink":
				// Someone replaces the file with a symlink to one
				// elsewhere: followed, never renamed.
				open = filepath.Join(t.TempDir(), "collector.log")
				if err := os.Remove(path); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink(open, path); err != nil {
					t.Fatal(err)
				}
			}
			batch := append(bytes.Repeat([]byte("x"), 64<<10-1), '\n')
			const step = 30 * time.Millisecond
			refused := 0
			for range 2048 { // 61 s, 128 MiB offered
				clock.Add(int64(step))
				if _, err := lf.Write(batch); errors.Is(err, errCapped) {
					refused++
				} else if err != nil {
					t.Fatal(err)
				}
			}
			st := lf.Stats()
			fi, err := os.Stat(open)
			if err != nil {
				t.Fatal(err)
			}
			// 2 MiB, then capGrace of batches (the cap's own bound), and
			// the MiB before the grace started.
			bound := 3<<20 + int64(capGrace/step+1)*int64(len(batch))
			if refused == 0 || st.WritesRefused == 0 || fi.Size() > bound || st.RotationFailingSeconds < 40 {
				t.Errorf("%s at the path: %d refused, %s %d bytes, stats %+v; want refusals, the file at most %d, rotation_failing_seconds about 60",
					name, refused, open, fi.Size(), st, bound)
			}
		})
	}
}
