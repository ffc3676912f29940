package records

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestLogFileReopenTakesTheNewFilesBirth: a file that replaces the log
// under the appliance (an operator's mv of an older file onto the path)
// is followed, and its age counts from its own birth, not from the
// reopen: 2 h old at a 1 h --access-log-max-age, the first batch written
// to it rotates it (two reopens: the follow, and the rotation's new
// file) (review r9s26 F4: nothing tested the birth at a reopen).
func TestLogFileReopenTakesTheNewFilesBirth(t *testing.T) {
	clock := fakeLogClock(t)
	var age time.Duration
	fakeBirth(t, &age)
	dir := t.TempDir()
	path := filepath.Join(dir, "access.log")
	lf, err := OpenLogFile(path, Rotation{MaxAge: time.Hour, Keep: 7})
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	if _, err := lf.Write([]byte("{}\n")); err != nil {
		t.Fatal(err)
	}
	older := filepath.Join(dir, "older")
	if err := os.WriteFile(older, []byte("{\"old\":1}\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(older, path); err != nil {
		t.Fatal(err)
	}
	age = 2 * time.Hour
	clock.Add(int64(2 * reopenCheck))
	if _, err := lf.Write([]byte("{}\n")); err != nil {
		t.Fatal(err)
	}
	st := lf.Stats()
	if _, err := os.Stat(rotated(path, 1)); err != nil || st.Reopens != 2 || st.Rotations != 1 {
		t.Errorf("a 2 h old file followed at a 1 h max age: stats %+v, %s: %v; want it rotated at its first batch", st, rotated(path, 1), err)
	}
}

// TestFileBirthZeroOrFuture: a birth time of 0 (a filesystem that sets the
// mask and no time) is no birth time, and a birth in the future (the wall
// clock set back) counts from now, not from later: either would have put
// the age off by decades or by the clock's jump (review r9s26 F4).
func TestFileBirthZeroOrFuture(t *testing.T) {
	for _, c := range []struct {
		st     unix.Statx_t
		wantOK bool
	}{
		{unix.Statx_t{Mask: unix.STATX_BTIME, Btime: unix.StatxTimestamp{Sec: 0}}, false},
		{unix.Statx_t{Mask: unix.STATX_BASIC_STATS, Btime: unix.StatxTimestamp{Sec: 1.7e9}}, false},
		{unix.Statx_t{Mask: unix.STATX_BTIME, Btime: unix.StatxTimestamp{Sec: 1.7e9, Nsec: 5}}, true},
	} {
		born, ok := statxBorn(&c.st)
		if ok != c.wantOK || ok && !born.Equal(time.Unix(1.7e9, 5)) {
			t.Errorf("statx mask %#x btime %d: born %v, %v; want known %v", c.st.Mask, c.st.Btime.Sec, born, ok, c.wantOK)
		}
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	real := fileBirth
	t.Cleanup(func() { fileBirth = real })
	const now = int64(5 * time.Hour)
	for birth, want := range map[time.Duration]int64{time.Hour: now, -time.Hour: now - int64(time.Hour)} {
		fileBirth = func(*os.File) (time.Time, bool) { return time.Now().Add(birth), true }
		if got := fileOpened(f, now); got < want-int64(time.Minute) || got > want {
			t.Errorf("born %v from now: opened %v, want %v", birth, time.Duration(got), time.Duration(want))
		}
	}
}
