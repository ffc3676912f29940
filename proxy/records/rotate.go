package records

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// A client can make records far faster than an hourly logrotate bounds
// them: ordinary allowed HTTP/2 requests with a long path named by HPACK
// index, some 13 bytes of frames each, made 14-18 MB/s of records from
// under 1 Mbit/s of client traffic (review r1dos F3), which fills a 30 GiB
// volume in half an hour; a log that cannot be written fails the health
// check, and a disk so filled stayed full past every hourly logrotate run
// until the daily one. So the access log rotates itself once it holds
// Rotation.MaxSize, or is Rotation.MaxAge old (day-sized files,
// as logrotate's daily made), with logrotate's names (path.1 ... path.Keep,
// the oldest removed), and the disk holds at most Keep+1 files of about
// MaxSize: a flood rotates older local records away (CloudWatch Logs, where
// it is configured, keeps its copy, and drops the biggest client's records
// first when its buffer fills) rather than stop the appliance.
//
// It is the chain's only rotator: the package's logrotate no longer names
// the access log, and a logrotate stanza that does makes the appliance
// leave the file alone (OpenLogFile). Two rotators of one chain cannot be
// made safe: logrotate's renames replace their targets whatever the
// appliance does, and a logrotate paused inside its shift lost a rotated
// file, or the appliance's whole newest one, to a rotation of the
// appliance's (review r3s26 F1).
//
// Only the file the appliance has open is rotated, and only a regular
// file at the path itself: one that an operator moved away is followed (a
// reopen), never rotated again, and a FIFO, a device or a symlink is never
// renamed. The file is taken first (renamed aside), the chain shifted only
// once it was: a rotation that found the path gone after shifting would
// shift again at every batch and remove the whole chain, the file open
// with it (review r4s25 F1).

// Rotation is how the access log rotates itself.
type Rotation struct {
	// MaxSize is the size past which the file is rotated, at the end of
	// the batch that took it there; 0: another rotator's (a logrotate
	// stanza), and DefaultMaxSize when none names the file (OpenLogFile).
	MaxSize int64
	// MaxAge is how old the file gets before it is rotated, at the end
	// of the first batch written from then on: from its birth, or when
	// this process opened it where the filesystem keeps no birth time
	// (birth.go); 0: never by age.
	MaxAge time.Duration
	// Keep is how many rotated files are kept: path.1 (the newest) to
	// path.Keep; at least 1.
	Keep int
}

// due reports whether a file of size bytes, opened at opened (logNow), is
// to be rotated at now. An empty file is not, as logrotate's notifempty.
func (r Rotation) due(size, opened, now int64) bool {
	return r.MaxSize > 0 && size >= r.MaxSize || r.MaxAge > 0 && size > 0 && now-opened >= int64(r.MaxAge)
}

// capped reports whether a file of size bytes takes no more writes until
// it is rotated, once the rotation has failed for capGrace: past twice
// MaxSize, the rotation has failed for a whole file's worth of records (a name it cannot use, a directory it cannot
// rename in), and a file growing on would fill the volume the bound was
// for (review r3s26 F2). Records then fail, as on a full disk, and the
// health check tells of it after --record-stall, with the rest of the
// volume (the journal, the captures) still free.
func (r Rotation) capped(size int64) bool { return r.MaxSize > 0 && size >= 2*r.MaxSize }

// logNow is LogFile's clock (monoNow); tests move it on by hours.
var logNow = monoNow

// rotationHeld is the name the file open is renamed to while the chain
// is shifted.
func rotationHeld(path string) string { return path + ".rotating" }

// rotate rotates the file open, open's FileInfo, if the path still names
// it and it is a regular file: renamed aside, the chain shifted one up
// (the oldest removed), then renamed to path.1; did says it took the file.
// moved reports whether the path no longer names the file open (rotated,
// or moved away by someone else): the caller then opens it anew (follow).
// It runs without l.mu, by the Writer's goroutine, so that Close never
// waits for the renames.
func (l *LogFile) rotate(open os.FileInfo) (did, moved bool, err error) {
	fi, err := os.Lstat(l.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return false, true, nil // moved away by someone else: follow it
	case err != nil:
		return false, false, err
	case !os.SameFile(fi, open):
		return false, true, nil
	case !fi.Mode().IsRegular():
		return false, false, errNotRegular
	}
	held := rotationHeld(l.path)
	if _, err := os.Lstat(held); err == nil {
		// Left by a rotation a crash cut short: kept aside, never
		// overwritten (its records are no one else's copy).
		aside := fmt.Sprintf("%s-%d", held, time.Now().UnixNano())
		if err := renameFile(held, aside); err != nil {
			return false, false, err
		}
		slog.Warn("the access log's rotation found a file left by one cut short; kept aside", "file", aside)
	}
	if err := renameFile(l.path, held); errors.Is(err, fs.ErrNotExist) {
		return false, true, nil // moved away since the look: follow it
	} else if err != nil {
		return false, false, err
	}
	// The file is ours now: the shift cannot run on without it. A
	// rotation that fails undoes what it did, the file taken put back at
	// the path to be written on and rotated later: it must neither leave
	// the taken file where the next rotation would take its name, nor
	// drop the oldest rotation at every try (review r5s25 F3, r6s25 F2).
	undo, commit, err := shiftChain(l.path, max(l.rot.Keep, 1), l.skipName)
	if err == nil {
		if err = renameFile(held, rotated(l.path, 1)); err != nil {
			undo()
		}
	}
	if err != nil {
		if rerr := renameFile(held, l.path); rerr != nil {
			return true, true, fmt.Errorf("%w; and putting the file back: %w (it is kept as %s)", err, rerr, held)
		}
		return false, false, err
	}
	commit()
	return true, true, nil
}

// renameFile is renameNoReplace; tests make it fail.
var renameFile = renameNoReplace

// renameat2 is unix.Renameat2; tests take the flag away.
var renameat2 = unix.Renameat2

// renameNoReplace renames from to to unless to exists (an error then,
// fs.ErrExist). Every rename of the rotation goes through it, so that a
// file that appeared at a name (an operator's copy, a logrotate still
// configured for the path against the docs) is never replaced: the
// rotation fails, is undone and tried again a second later (review r7s25
// F3). It protects the appliance's renames only: another rotator's plain
// renames replace whatever the appliance moved, which is why the appliance
// is the chain's only rotator (review r3s26 F1).
func renameNoReplace(from, to string) error {
	err := renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, to, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		// A filesystem (NFS, some FUSE ones) or a kernel (before 3.15)
		// without the flag: a look, then a plain rename. It leaves the
		// race the window of a stat and a rename, no longer that of the
		// whole shift. A link and an unlink would refuse atomically, but
		// the unlink could then remove a file logrotate renamed onto the
		// old name meanwhile, and a crash between leaves one file twice.
		if _, lerr := os.Lstat(to); lerr == nil {
			err = unix.EEXIST
		} else {
			return os.Rename(from, to)
		}
	}
	if err != nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
	}
	return nil
}

// errUnusable is a name of the chain whose file cannot be renamed (an
// immutable or append-only file, a mount point): the chain ends below it.
type errUnusable struct {
	i   int
	err error
}

func (e *errUnusable) Error() string { return e.err.Error() }
func (e *errUnusable) Unwrap() error { return e.err }

// shiftChain moves path.1 ... path.(keep-1) one up, and path.keep aside,
// to be removed by commit or put back by undo, which also moves the others
// back down. On an error it has undone what it did. A name whose file
// cannot be moved, path.i, ends the chain below it, path.(i-1) the one
// dropped: an operator's chattr +i (evidence kept) blocked every rotation
// while the file open grew without bound (review r3s26 F2). skip is told
// of each name gone around. A path.1 that cannot be moved leaves the
// chain no name: the rotation fails.
func shiftChain(path string, keep int, skip func(name string, err error)) (undo, commit func(), err error) {
	for k := keep; ; {
		undo, commit, err = shiftOnce(path, k, skip)
		var u *errUnusable
		if !errors.As(err, &u) {
			return undo, commit, err
		}
		skip(rotated(path, u.i), u.err)
		if u.i <= 1 {
			return nil, nil, fmt.Errorf("no name of the chain can take the rotated file: %w", err)
		}
		k = u.i - 1
	}
}

// shiftOnce is shiftChain with path.keep the chain's end. A chain with a
// gap (a rotation whose undo stopped short, an operator's rm) is shifted
// only up to its lowest gap, nothing dropped: shifted whole, each such gap
// cost a rotated file that had room.
func shiftOnce(path string, keep int, skip func(name string, err error)) (undo, commit func(), err error) {
	top := keep // the highest name a file moves to
	for i := 1; i < keep; i++ {
		if _, err := os.Lstat(rotated(path, i)); errors.Is(err, fs.ErrNotExist) {
			top = i
			break
		}
	}
	oldest, drop := rotated(path, keep), rotated(path, keep)+".dropping"
	dropped := false
	if top < keep {
		err = fs.ErrNotExist // nothing to drop
	} else {
		err = renameFile(oldest, drop)
	}
	if errors.Is(err, fs.ErrExist) {
		// Left by a rotation whose undo stopped short, or whose remove
		// failed: older than every file in the chain now, and past keep
		// once this shift is done. The name is the appliance's own.
		if rerr := os.Remove(drop); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			// A non-empty directory, an immutable file: it would fail
			// every try (review r3s26 F2). A fresh name instead.
			skip(drop, rerr)
			drop = fmt.Sprintf("%s-%d", drop, time.Now().UnixNano())
		}
		err = renameFile(oldest, drop)
	}
	if err == nil {
		dropped = true
	} else if !errors.Is(err, fs.ErrNotExist) {
		if errors.Is(err, fs.ErrExist) {
			return nil, nil, err
		}
		return nil, nil, &errUnusable{keep, err}
	}
	var moved []int // i: path.i went to path.(i+1)
	undo = func() {
		// A rename that failed leaves its file where the next would land
		// (a target that exists, or the fallback's plain rename), so the
		// undo stops at the first failure, the chain left with a gap but
		// no file lost.
		for j := len(moved) - 1; j >= 0; j-- {
			if err := renameFile(rotated(path, moved[j]+1), rotated(path, moved[j])); err != nil {
				slog.Error("undoing a failed rotation of the access log; the rotated files keep their new names", "err", err)
				return
			}
		}
		if dropped {
			if err := renameFile(drop, oldest); err != nil {
				slog.Error("undoing a failed rotation of the access log", "file", drop, "err", err)
			}
		}
	}
	for i := top - 1; i >= 1; i-- {
		err := renameFile(rotated(path, i), rotated(path, i+1))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			undo()
			if !errors.Is(err, fs.ErrExist) {
				// The target did not exist (RENAME_NOREPLACE), the
				// directory took the file's own rename: path.i's file
				// is what cannot move.
				return nil, nil, &errUnusable{i, err}
			}
			return nil, nil, err
		}
		moved = append(moved, i)
	}
	commit = func() {
		if dropped {
			if err := os.Remove(drop); err != nil {
				skip(drop, err)
			} else {
				removeLeftDroppings(path)
			}
		}
	}
	return undo, commit, nil
}

// removeLeftDroppings removes the regular files at path.K.dropping-<ns>
// names: a fresh name for the oldest, taken when .dropping was stuck, is
// left by an undo that stopped short or a crash before the remove, and no
// rotation used that name again, so each such file stayed for good
// (review r7s26 F5). Each held the chain's oldest file, older than any
// now in the chain. Called once a drop succeeded, so at most once a
// rotation.
func removeLeftDroppings(path string) {
	dir, base := filepath.Split(path)
	ents, err := os.ReadDir(filepath.Clean(dir))
	if err != nil {
		return
	}
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), base+".")
		k, ns, ok2 := strings.Cut(rest, ".dropping-")
		if !ok || !ok2 || !digits(k) || !digits(ns) || !e.Type().IsRegular() {
			continue
		}
		name := filepath.Join(dir, e.Name())
		if err := os.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			slog.Warn("removing a rotated file a rotation left to be dropped", "file", name, "err", err)
		}
	}
}

func digits(s string) bool {
	return s != "" && strings.Trim(s, "0123456789") == ""
}

// errNotRegular is a rotation refused: the path is no regular file.
var errNotRegular = errors.New("not a regular file (a FIFO, a device or a symlink is never renamed)")

// rotateFailed counts and logs a rotation that did not happen, at most
// once a minute as reopens are; l.mu is held.
func (l *LogFile) rotateFailed(now int64, err error) {
	l.reopenFailures.Add(1)
	l.failingSince.CompareAndSwap(0, now)
	if l.lastErrAt == 0 || now-l.lastErrAt >= int64(60e9) {
		l.lastErrAt = now
		slog.Error("rotating the access log (--access-log-max-size, --access-log-max-age); writing on to it until it holds twice --access-log-max-size and the rotation has failed for 10s", "file", l.path, "size", l.size, "err", err)
	}
}

// skipName counts and logs a name the rotation could not use (shiftChain),
// the log at most once a minute: it may come at every rotation. Each name
// is counted once, the fresh .dropping-<ns> names as their .dropping: one
// stuck directory counted 37 over 40 rotations, which read as 37 names
// (review r7s26 F6).
func (l *LogFile) skipName(name string, err error) {
	if i := strings.LastIndex(name, ".dropping-"); i >= 0 {
		name = name[:i+len(".dropping")]
	}
	if _, seen := l.skipped.LoadOrStore(name, struct{}{}); !seen {
		l.namesSkipped.Add(1)
	}
	now := logNow()
	if last := l.lastSkipLog.Load(); last == 0 || now-last >= int64(time.Minute) {
		l.lastSkipLog.Store(now)
		slog.Warn("the access log's rotation cannot use a name and goes around it: remove or rename the file (rotation_names_skipped in /stats)", "file", name, "err", err)
	}
}

// rotated is the name of the i-th rotation of path, as logrotate names it.
func rotated(path string, i int) string { return fmt.Sprintf("%s.%d", path, i) }
