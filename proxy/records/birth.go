package records

import (
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// A file's age for --access-log-max-age is counted from its birth, where
// its filesystem keeps one (statx's btime: ext4, XFS and btrfs on
// Linux 4.11 and later), not from when this process opened it: restarts
// less than MaxAge apart (upgrades, a crash loop, a nightly restart) kept
// the file from ever rotating by age, and it held weeks (review r7s26 F4).
// Without a birth time (an older kernel, NFS, some FUSE filesystems) the
// count starts when this process opens the file, and a restart starts it
// again.

// fileBirth is f's birth time, and whether its filesystem keeps one;
// tests replace it.
var fileBirth = statxBirth

func statxBirth(f *os.File) (time.Time, bool) {
	// Through SyscallConn, not Fd: Fd would put a FIFO into blocking mode,
	// and Close could no longer wake a write blocked on it.
	rc, err := f.SyscallConn()
	if err != nil {
		return time.Time{}, false
	}
	var st unix.Statx_t
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.Statx(int(fd), "", unix.AT_EMPTY_PATH, unix.STATX_BTIME, &st)
	}); err != nil || serr != nil {
		return time.Time{}, false
	}
	return statxBorn(&st)
}

// statxBorn is the birth time st holds, if any: a filesystem may set the
// mask and leave the time 0 (the epoch), which would make every file
// decades old and rotate it at each batch.
func statxBorn(st *unix.Statx_t) (time.Time, bool) {
	if st.Mask&unix.STATX_BTIME == 0 || st.Btime.Sec == 0 {
		return time.Time{}, false
	}
	return time.Unix(st.Btime.Sec, int64(st.Btime.Nsec)), true
}

// fileOpened is the logNow from which f's age counts, now being logNow:
// its birth where known, else now. A birth in the future (the wall clock
// set back) counts from now.
func fileOpened(f *os.File, now int64) int64 {
	born, ok := fileBirth(f)
	if !ok {
		return now
	}
	return now - int64(max(time.Since(born), 0))
}
