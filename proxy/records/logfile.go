package records

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// LogFile is the access log file (--access-log): an append-only file that
// follows its path. When the path no longer names the file it has open
// (logrotate or an operator renamed or removed it), it opens the path anew,
// creating the file, and writes on there. Rotation by rename so needs
// neither a signal nor free space: copytruncate, which needs as much free
// space as the log, can never succeed on a disk the log has filled.
//
// It looks at the path before a write at most once every reopenCheck, and
// before the first write after a failed one (a full disk: the operator may
// have moved the log away to free space, which only a reopen frees). Lines
// written to the old file until then are in the rotated file, not lost.
//
// Write is called by a Writer's goroutine; the mutex only keeps Close, at
// the end of a drain that gave up on a stuck file, from racing it. It is
// held neither across the write itself nor across the look at the path and
// a reopen: Close must return at once even when they hang (a hung disk or
// NFS mount; a FIFO whose new incarnation has no reader yet, whose open
// blocks until one comes), or shutdown would wait on them.
type LogFile struct {
	path string
	rot  Rotation
	size int64 // bytes in the file open, as far as this process knows
	// opened is the logNow from which the file open's age counts: its
	// birth (birth.go), else when this process opened it (at start, or
	// at a reopen: its own rotation, or someone else's move).
	opened int64
	// rotatedBy says who rotates the file (RotatedByAppliance, ...);
	// otherRotators are the logrotate configurations that name it, and
	// unreadConfigs those the start's look could not read.
	rotatedBy                    string
	otherRotators, unreadConfigs []string
	otherWarned                  int64 // logNow of the last warning of otherRotators
	// backstop is, while otherRotators rotate the file, the size past
	// which it takes no writes after capGrace: twice --access-log-max-size
	// (DefaultMaxSize for 0). A stanza the scan takes to rotate the file
	// may be one logrotate never applies (rejected, not included, not
	// run), and the file grew without bound (review r9s26 F1). It is 0
	// once logrotate has been seen at work (a rename of the file, or a
	// copytruncate) since start: from then on its bound is logrotate's,
	// since a working hourly run lets a busy appliance's file grow past
	// any fixed size between runs, and refusing there lost records and
	// failed the health check every hour (review r13s26 F1).
	backstop int64

	mu        sync.Mutex
	f         *os.File
	fi        os.FileInfo // f's, for os.SameFile
	checked   int64       // monoNow of the last look at the path
	failed    bool        // the last write failed: look at the path before the next
	midLine   bool        // the last write to f stopped within a line
	lastErrAt int64       // monoNow of the last reopen failure logged
	// rotateAfter is the monoNow before which no rotation is tried again,
	// after one that failed.
	rotateAfter int64

	reopens, reopenFailures, rotations atomic.Uint64
	namesSkipped, writesRefused        atomic.Uint64
	// failingSince is the logNow of the first of the rotations failed
	// since the last one done or the last new file; 0 while none fails.
	failingSince atomic.Int64
	lastSkipLog  atomic.Int64 // logNow of the last name skipped logged
	skipped      sync.Map     // the names counted in namesSkipped: at most 2 Keep
}

// LogFileStats counts a LogFile's reopens.
type LogFileStats struct {
	// Reopens counts the times the path named another file or none and
	// the file was opened anew there (a rotation, a removal).
	Reopens uint64 `json:"reopens"`
	// ReopenFailures counts the looks that found the path moved on but
	// could not open it (records went on to the file open, or failed if
	// it had no link left).
	ReopenFailures uint64 `json:"reopen_failures"`
	// Rotations counts the times the file reached --access-log-max-size
	// or --access-log-max-age and the appliance rotated it (rotate.go).
	Rotations uint64 `json:"rotations"`
	// RotationFailingSeconds is how long the rotation has failed at every
	// try (a failed rename, or no new file made at the path after one);
	// 0 while it works.
	RotationFailingSeconds float64 `json:"rotation_failing_seconds"`
	// NamesSkipped counts the names of the chain the rotation found it
	// could not use (a rotated file it cannot move, gone around, or at .1
	// failing the rotation; a .dropping it cannot remove), each once
	// since start however many rotations find it, and not again after it
	// was fixed and broke anew (skipped is never emptied), and logged
	// with its path.
	NamesSkipped uint64 `json:"rotation_names_skipped"`
	// WritesRefused counts the batches refused because the file held twice
	// --access-log-max-size, its rotation failing for capGrace: their
	// records are counted failed.
	WritesRefused uint64 `json:"writes_refused"`
	// RotatedBy is who rotates the file, decided at start: "appliance",
	// "other" (OtherRotators name it: the appliance follows their renames
	// and does not rotate it, and past twice --access-log-max-size for
	// capGrace it refuses writes, a backstop) or "none" (no regular file).
	RotatedBy     string   `json:"rotated_by"`
	OtherRotators []string `json:"other_rotators,omitempty"`
	// UnreadableConfigs are the logrotate configuration files the start's
	// look could not read: any of them may name the file too.
	UnreadableConfigs []string `json:"rotation_configs_unreadable,omitempty"`
}

// Stats returns the reopen counts.
func (l *LogFile) Stats() LogFileStats {
	st := LogFileStats{Reopens: l.reopens.Load(), ReopenFailures: l.reopenFailures.Load(), Rotations: l.rotations.Load(),
		NamesSkipped: l.namesSkipped.Load(), WritesRefused: l.writesRefused.Load(),
		RotatedBy: l.rotatedBy, OtherRotators: l.otherRotators, UnreadableConfigs: l.unreadConfigs}
	st.RotationFailingSeconds = l.failingFor(logNow()).Seconds()
	return st
}

// reopenCheck is how often LogFile looks at its path: a stat a second
// while records come, and records go to a rotated file at most this long.
const reopenCheck = time.Second

// logFileFlags and logFileMode are how the access log is opened, the first
// time and on every reopen: appended to, created 0640 if missing.
const (
	logFileFlags = os.O_WRONLY | os.O_APPEND | os.O_CREATE
	logFileMode  = 0o640
)

// DefaultMaxSize is --access-log-max-size's default, and the size the
// appliance rotates at when the flag is 0 (another rotator's) but no
// logrotate configuration names the file.
const DefaultMaxSize = 1 << 30

// OpenLogFile opens path for appending, creating it if missing, and
// rotates it as rot says (rotate.go), unless a logrotate configuration
// names it (otherRotators): one rotator, decided here.
func OpenLogFile(path string, rot Rotation) (*LogFile, error) {
	f, fi, err := openLog(path)
	if err != nil {
		return nil, err
	}
	by, others, unread, backstop := RotatedByAppliance, []string(nil), []string(nil), int64(0)
	if lfi, err := os.Lstat(path); err != nil || !lfi.Mode().IsRegular() {
		// A collector's FIFO, /dev/stdout, or a symlink to a log elsewhere:
		// renamed, it would be replaced by regular files here (rotate.go).
		slog.Warn("the access log is not a regular file at its path: it is not rotated (--access-log-max-size, --access-log-max-age)", "file", path)
		rot, by = Rotation{}, RotatedByNone
	} else {
		if n := hardLinks(lfi); n > 1 {
			slog.Warn("the access log has more than one hard link: logrotate rotates no such file, so the appliance rotates it whatever a logrotate stanza names", "file", path, "links", n)
		}
		var bad []configRead
		others, bad = otherRotators(path)
		for _, c := range bad {
			// logrotate runs as root, the appliance as gwlbproxy.
			slog.Warn("a logrotate configuration file could not be read: if it names the access log, two rotators rotate it and lose rotated files", "config", c.path, "err", c.err, "file", path)
			unread = append(unread, c.path)
		}
		switch {
		case len(others) > 0:
			// Two rotators of one chain lose rotated files (rotate.go),
			// and the operator who kept a stanza chose logrotate.
			backstop = 2 * cmp.Or(rot.MaxSize, DefaultMaxSize)
			rot, by = Rotation{}, RotatedByOther
			warnOtherRotators(path, others, backstop)
		case rot.MaxSize == 0:
			// 0 was "logrotate alone": an upgrade replaced the unedited
			// stanza, and a flood would fill the disk (review r7s26 F1).
			rot.MaxSize = DefaultMaxSize
			slog.Warn("--access-log-max-size 0 leaves the access log to another rotator, and no logrotate configuration names it: the appliance rotates it at 1GiB (docs/deploy.md)", "file", path)
		}
	}
	now := logNow()
	return &LogFile{path: path, rot: rot, rotatedBy: by, otherRotators: others, unreadConfigs: unread, backstop: backstop,
		f: f, fi: fi, size: fi.Size(), opened: fileOpened(f, now), checked: now, otherWarned: now}, nil
}

func openLog(path string) (*os.File, os.FileInfo, error) {
	f, err := os.OpenFile(path, logFileFlags, logFileMode)
	if err != nil {
		return nil, nil, fmt.Errorf("opening access log: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("access log %s: %w", path, err)
	}
	return f, fi, nil
}

// Write appends p, whole lines (a Writer's batch), to the file the path
// names, reopening it first if the path has moved on.
func (l *LogFile) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return 0, fmt.Errorf("access log %s: %w", l.path, fs.ErrClosed)
	}
	if now := logNow(); l.failed || now-l.checked >= int64(reopenCheck) {
		l.checked = now
		if l.otherRotators != nil && now-l.otherWarned >= int64(otherRotatorWarn) {
			l.otherWarned = now
			warnOtherRotators(l.path, l.otherRotators, l.backstop)
		}
		if err := l.follow(now); err != nil {
			// Look again before the next write: the reopen may work then.
			l.failed = true
			return 0, err
		}
	}
	// The Writer ends a line a failed write cut short with a newline of
	// its own before its next write. When the cut line was in a file since
	// rotated away, the new file has no line to end: a blank line would
	// only be noise.
	if len(p) == 1 && p[0] == '\n' && !l.midLine {
		return 1, nil
	}
	if l.backstop > 0 && l.size >= l.backstop && !(len(p) == 1 && p[0] == '\n') {
		if err := l.backstopped(); err != nil {
			return 0, err
		}
	}
	// The newline that ends a line a failed write cut goes through: the
	// rotation waits for whole lines.
	if now := logNow(); l.rot.capped(l.size) && !(len(p) == 1 && p[0] == '\n') {
		if !l.midLine && now >= l.rotateAfter {
			l.rotateNow(now)
		}
		if l.f != nil && l.rot.capped(l.size) && l.failingFor(now) >= capGrace {
			l.writesRefused.Add(1)
			return 0, fmt.Errorf("access log %s: %d bytes, twice --access-log-max-size, and its rotation has failed for 10s (see rotation_failing_seconds): %w", l.path, l.size, errCapped)
		}
		if l.f == nil {
			return 0, fmt.Errorf("access log %s: %w", l.path, fs.ErrClosed)
		}
	}
	f := l.f
	l.mu.Unlock()
	// Unlocked: Close may close f under a write that hangs. One Writer
	// goroutine calls Write, so nothing else touches f, midLine or failed
	// meanwhile but Close.
	n, err := f.Write(p)
	l.mu.Lock()
	if n > 0 {
		l.midLine = p[n-1] != '\n'
	}
	l.failed = err != nil
	l.size += int64(n)
	if now := logNow(); l.f != nil && l.rot.due(l.size, l.opened, now) && !l.midLine && now >= l.rotateAfter {
		l.rotateNow(now)
	}
	return n, err
}

// backstopped says whether a write is refused by the backstop (a file
// another rotator rotates, past l.backstop for capGrace). The size is
// looked at anew first: a copytruncate empties the file in place, no
// reopen seen. Called with l.mu held, l.size past the backstop.
func (l *LogFile) backstopped() error {
	f := l.f
	l.mu.Unlock()
	fi, err := f.Stat() // unlocked: it may hang on NFS, as the write may
	l.mu.Lock()
	if l.f != f {
		return fmt.Errorf("access log %s: %w", l.path, fs.ErrClosed)
	}
	if err == nil {
		if fi.Size() < l.size {
			// Emptied in place: a copytruncate, logrotate at work.
			l.size = fi.Size()
			l.rotatorWorks("copytruncate")
			return nil
		}
		l.size = fi.Size()
	}
	now := logNow()
	if l.size < l.backstop {
		l.failingSince.Store(0)
		return nil
	}
	l.failingSince.CompareAndSwap(0, now)
	if l.failingFor(now) < capGrace {
		return nil
	}
	l.writesRefused.Add(1)
	return fmt.Errorf("access log %s: %d bytes, twice --access-log-max-size, and the logrotate configuration that names it has not rotated it for 10s (rotation_failing_seconds): %w", l.path, l.size, errCapped)
}

// rotatorWorks disarms the backstop: logrotate has been seen at work, by
// how. Called with l.mu held.
func (l *LogFile) rotatorWorks(how string) {
	l.backstop = 0
	l.failingSince.Store(0)
	slog.Info("logrotate rotated the access log: the appliance no longer refuses records past twice --access-log-max-size; logrotate's runs and maxsize bound the file (docs/deploy.md)", "file", l.path, "seen", how)
}

// capGrace is how long the rotation fails before the cap refuses writes:
// one transient failure (a name found taken once) at --access-log-max-size's
// 1 MiB minimum refused a second of a flood's records, although the next
// try worked (review r7s26 F3). The file so holds at most twice MaxSize
// and capGrace's worth of records.
const capGrace = 10 * time.Second

// failingFor is how long the rotation has failed at every try at now; 0
// while it works.
func (l *LogFile) failingFor(now int64) time.Duration {
	if since := l.failingSince.Load(); since != 0 {
		return time.Duration(now - since)
	}
	return 0
}

// rotateNow rotates the file (rotate.go) and opens the path anew; a
// rotation that failed is tried again reopenCheck later at the soonest,
// not at every batch. Called with l.mu held, after a write.
func (l *LogFile) rotateNow(now int64) {
	open := l.fi
	l.mu.Unlock()
	did, moved, err := l.rotate(open)
	l.mu.Lock()
	if did && err == nil {
		l.rotations.Add(1)
		l.failingSince.Store(0)
	}
	if err != nil {
		l.rotateFailed(now, err)
		l.rotateAfter = now + int64(reopenCheck)
	}
	if !moved || l.f == nil {
		return
	}
	if l.follow(now) != nil || os.SameFile(l.fi, open) {
		// Not opened anew (no file can be made there now: inodes, EMFILE,
		// EDQUOT, a directory at the path; or the path is a symlink to
		// the file open): writes go on to the file open, wherever it
		// went, and the next look is reopenCheck away, not at every
		// batch. The file open still grows, so the rotation fails: only
		// a failed rename counted, and the file took every record for
		// good, past the cap (review r9s26 F3).
		l.rotateAfter = now + int64(reopenCheck)
		if l.f != nil {
			l.failingSince.CompareAndSwap(0, now)
		}
	}
}

// follow reopens the path when it names another file than the one open, or
// none. When it cannot, records go on to the file open if that is still
// linked somewhere (renamed, they are kept), and it tries again at the next
// look. If the file open has no link left (removed, and its directory gone,
// read-only or no longer writable), what is written there is lost for
// good: follow returns an error, so that the Writer counts the records
// failed, tells of them in a records_lost line once a reopen works, and
// the health check fails after --record-stall, as on a full disk.
//
// It is called with l.mu held and l.f open, and drops l.mu while it looks
// at the path and opens it (either may block: see LogFile); it returns with
// l.mu held, and an error if Close came meanwhile.
func (l *LogFile) follow(now int64) error {
	old, oldFI, armed := l.f, l.fi, l.backstop > 0
	l.mu.Unlock()
	f, nfi, err := l.reopen(oldFI)
	var lost error
	var opened int64
	renamed := false
	if err != nil {
		lost = stillLinked(old, err) // old may be closed meanwhile: an error then
	} else if f != nil {
		opened = fileOpened(f, now) // a statx, which may hang on NFS as the open may
		// Still linked: renamed, not removed (an operator's rm is no
		// rotator at work).
		if armed {
			if fi, serr := old.Stat(); serr == nil {
				st, ok := fi.Sys().(*syscall.Stat_t)
				renamed = ok && st.Nlink > 0
			}
		}
	}
	l.mu.Lock()
	if l.f == nil { // closed while the lock was dropped
		if f != nil {
			f.Close()
		}
		return fmt.Errorf("access log %s: %w", l.path, fs.ErrClosed)
	}
	if err != nil {
		return l.reopenFailed(now, err, lost)
	}
	if f == nil { // the path still names the file open
		return nil
	}
	l.f, l.fi, l.midLine, l.size, l.opened = f, nfi, false, nfi.Size(), opened
	l.failingSince.Store(0) // a new file: no rotation is due
	l.reopens.Add(1)
	if renamed && l.backstop > 0 {
		l.rotatorWorks("rename")
	}
	slog.Info("access log reopened: its path named another file or none (rotated or removed)", "file", l.path)
	l.mu.Unlock()
	// Unlocked too: closing a file on NFS flushes it, and may hang.
	if err := old.Close(); err != nil {
		slog.Warn("closing the rotated access log", "file", l.path, "err", err)
	}
	l.mu.Lock()
	if l.f == nil {
		return fmt.Errorf("access log %s: %w", l.path, fs.ErrClosed)
	}
	return nil
}

// reopen opens the path if it names another file than oldFI's, or none;
// it returns a nil file if it names that one still.
func (l *LogFile) reopen(oldFI os.FileInfo) (*os.File, os.FileInfo, error) {
	fi, err := os.Stat(l.path)
	if err == nil && os.SameFile(fi, oldFI) {
		return nil, nil, nil
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("access log %s: %w", l.path, err)
	}
	return openLog(l.path)
}

// stillLinked says, after the failed reopen err, whether records may go on
// to the file open, f: an error if it has no link left (fstat), or cannot
// be stat'ed.
func stillLinked(f *os.File, err error) error {
	if fi, serr := f.Stat(); serr != nil {
		return fmt.Errorf("%w; and the file open: %w", err, serr)
	} else if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink == 0 {
		return fmt.Errorf("%w; and the file open was removed: records written there would be lost", err)
	}
	return nil
}

// reopenFailed counts a failed reopen, err, and returns lost, stillLinked's
// verdict. It logs at most once a minute: on a full disk, or with the log's
// directory gone, it fails before every write.
func (l *LogFile) reopenFailed(now int64, err, lost error) error {
	l.reopenFailures.Add(1)
	if l.lastErrAt == 0 || now-l.lastErrAt >= int64(time.Minute) {
		l.lastErrAt = now
		if lost != nil {
			slog.Error("reopening the access log; the file open was removed: records fail until the reopen works", "err", err)
		} else {
			slog.Error("reopening the access log; writing on to the file open", "err", err)
		}
	}
	return lost
}

// Close closes the file open. Later writes fail. It does not wait for a
// write under way: a write blocked on a pipe is woken with an error; one
// stuck in a hung disk's write(2) is left to finish (or not) on its own, and
// its lines, already counted dropped by the Writer's Close, may still land.
func (l *LogFile) Close() error {
	l.mu.Lock()
	f := l.f
	l.f = nil
	l.mu.Unlock()
	if f == nil {
		return nil
	}
	return f.Close()
}
