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
		// logrotate's rename: the new file takes the records, and
		// logrotate, seen at work, owns the bound: past the backstop for
		// longer than capGrace nothing is refused (review r13s26 F1).
		if err := os.Rename(path, path+".1"); err != nil {
			t.Fatal(err)
		}
		clock.Add(int64(time.Second))
		if refused := write(int(2*capGrace/step) + 16); refused != 0 || lf.Stats().RotationFailingSeconds != 0 {
			t.Errorf("after logrotate's rename: %d refused, stats %+v; want none", refused, lf.Stats())
		}
		lf.Close()
	}
}

// TestLogFileBackstopCopytruncateDisarms: a copytruncate, which empties the
// file in place, is logrotate at work as a rename is: it ends the refusals
// and disarms the backstop. An operator's rm is not: the file open has no
// link left, and the backstop stays armed.
func TestLogFileBackstopCopytruncateDisarms(t *testing.T) {
	clock := fakeLogClock(t)
	path := filepath.Join(t.TempDir(), "access.log")
	logrotateDir(t, map[string]string{"gwlbproxy": path + " {\n  maxsize 1GiB\n  copytruncate\n}\n"})
	lf, err := OpenLogFile(path, Rotation{MaxSize: 1 << 20, MaxAge: time.Hour, Keep: 7})
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
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
	// Removed: the new file takes the records, the backstop stays.
	write(16)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	clock.Add(int64(time.Second))
	if write(int(2*capGrace/step)+16) == 0 {
		t.Fatal("after an rm, past the backstop for longer than capGrace: none refused; want the backstop armed still")
	}
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	if refused := write(int(2*capGrace/step) + 16); refused != 0 || lf.Stats().RotationFailingSeconds != 0 {
		t.Errorf("after a copytruncate: %d refused, stats %+v; want none, the backstop disarmed", refused, lf.Stats())
	}
}

// TestLogFileNoRefusalUnderWorkingLogrotate: the shipped example's stanza
// (maxsize, here scaled to the flag, 1 MiB), run hourly by the package's
// timer, renames the file at each run. A steady rate of 3, 4 or 8 times
// maxsize an hour (1 GiB: 3 GiB/h is about 0.9 MB/s, a busy appliance, no
// flood) passed the backstop between runs, and a third to three quarters
// of the records were refused, the health check failing every hour
// (review r13s26 F1). Once logrotate has renamed the file once, nothing is
// refused.
func TestLogFileNoRefusalUnderWorkingLogrotate(t *testing.T) {
	for _, perHour := range []int{3, 4, 8} {
		clock := fakeLogClock(t)
		path := filepath.Join(t.TempDir(), "access.log")
		logrotateDir(t, map[string]string{"gwlbproxy": path + " {\n  maxsize 1M\n  hourly\n}\n"})
		const max = 1 << 20
		lf, err := OpenLogFile(path, Rotation{MaxSize: max, MaxAge: time.Hour, Keep: 7})
		if err != nil {
			t.Fatal(err)
		}
		batch := append(bytes.Repeat([]byte("x"), 16<<10-1), '\n')
		batchesPerHour := perHour * max / len(batch)
		step := time.Hour / time.Duration(batchesPerHour)
		var refused, refusedAfter, renames int
		start, next := logNow(), int64(time.Hour)
		for range 4 * batchesPerHour {
			clock.Add(int64(step))
			if logNow()-start >= next { // logrotate's hourly run
				next += int64(time.Hour)
				if fi, err := os.Stat(path); err == nil && fi.Size() > max {
					os.Remove(path + ".1")
					if err := os.Rename(path, path+".1"); err != nil {
						t.Fatal(err)
					}
					renames++
				}
			}
			if _, err := lf.Write(batch); errors.Is(err, errCapped) {
				refused++
				if renames > 0 {
					refusedAfter++
				}
			} else if err != nil {
				t.Fatal(err)
			}
		}
		st := lf.Stats()
		lf.Close()
		// Before the first run the backstop holds: a stanza logrotate may
		// never apply.
		if renames != 4 || refusedAfter != 0 || st.RotatedBy != RotatedByOther || st.Rotations != 0 {
			t.Errorf("%d x maxsize/h: %d renames, %d batches refused after the first (%d in all), stats %+v; want 4 renames, none refused after the first",
				perHour, renames, refusedAfter, refused, st)
		}
	}
}
