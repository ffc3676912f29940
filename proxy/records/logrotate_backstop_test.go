package records

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestLogFileBackstopsAStanzaNeverApplied: a stanza names the access log,
// so the appliance leaves its rotation to logrotate, but logrotate never
// applies it (here nothing runs it; the scan cannot tell a stanza logrotate
// rejects, `maxsize 1GiB`, or one no configuration includes). The file
// grew without bound (16 MiB of 16 offered, review r9s26 F1). Now past
// twice --access-log-max-size for capGrace writes are refused; the
// appliance still renames nothing. A logrotate rename ends the refusals,
// and so does a copytruncate, which empties the file in place.
func TestLogFileBackstopsAStanzaNeverApplied(t *testing.T) {
	for _, max := range []int64{1 << 20, 0} {
		clock := fakeLogClock(t)
		logs := logCapture(t)
		path := filepath.Join(t.TempDir(), "access.log")
		logrotateDir(t, map[string]string{"gwlbproxy": path + " {\n  maxsize 1GiB\n}\n"})
		lf, err := OpenLogFile(path, Rotation{MaxSize: max, MaxAge: time.Hour, Keep: 7})
		if err != nil {
			t.Fatal(err)
		}
		want := 2 * max
		if max == 0 {
			want = 2 * DefaultMaxSize
		}
		if lf.backstop != want || !strings.Contains(logs(), "refuses records once the file has held twice --access-log-max-size for 10s") {
			t.Errorf("max %d: backstop %d, want %d, said in the warning:\n%s", max, lf.backstop, want, logs())
		}
		if max == 0 {
			lf.Close()
			continue
		}
		batch := append(bytes.Repeat([]byte("x"), 64<<10-1), '\n')
		const step = 30 * time.Millisecond
		write := func(n int) (refused int) {
			for range n {
				clock.Add(int64(step))
				if _, err := lf.Write(batch); errors.Is(err, errCapped) {
					refused++
				} else if err != nil {
					t.Fatal(err)
				}
			}
			return refused
		}
		refused := write(1024) // 31 s, 64 MiB offered
		st := lf.Stats()
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		bound := 2<<20 + int64(capGrace/step+1)*int64(len(batch))
		if refused == 0 || st.WritesRefused == 0 || fi.Size() > bound || st.Rotations != 0 || st.RotationFailingSeconds < 10 || st.RotatedBy != RotatedByOther {
			t.Errorf("stanza never applied: %d refused, file %d bytes (bound %d), stats %+v; want refusals, no rotation", refused, fi.Size(), bound, st)
		}
		if _, err := os.Stat(path + ".1"); err == nil {
			t.Error("the appliance rotated a file logrotate rotates")
		}
		// logrotate's rename: the new file takes the records.
		if err := os.Rename(path, path+".1"); err != nil {
			t.Fatal(err)
		}
		clock.Add(int64(time.Second))
		if refused := write(16); refused != 0 || lf.Stats().RotationFailingSeconds != 0 {
			t.Errorf("after logrotate's rename: %d refused, stats %+v; want none", refused, lf.Stats())
		}
		// copytruncate: the same file, emptied.
		write(int(2 * capGrace / step))
		if refused := write(8); refused == 0 {
			t.Fatal("past the backstop again: none refused")
		}
		if err := os.Truncate(path, 0); err != nil {
			t.Fatal(err)
		}
		if refused := write(8); refused != 0 || lf.Stats().RotationFailingSeconds != 0 {
			t.Errorf("after a copytruncate: %d refused, stats %+v; want none", refused, lf.Stats())
		}
		lf.Close()
	}
}
