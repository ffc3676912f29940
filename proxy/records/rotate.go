package records

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
)

// A client can make records far faster than an hourly logrotate bounds
// them: ordinary allowed HTTP/2 requests with a long path named by HPACK
// index, some 13 bytes of frames each, made 14-18 MB/s of records from
// under 1 Mbit/s of client traffic (review r1dos F3), which fills a 30 GiB
// volume in half an hour; a log that cannot be written fails the health
// check, and a disk so filled stayed full past every hourly logrotate run
// until the daily one. So the access log rotates itself once it holds
// Rotation.MaxSize, as logrotate would (path.1 ... path.Keep, the oldest
// removed), and the disk holds at most Keep+1 files of about MaxSize: a
// flood rotates older local records away (CloudWatch Logs, where it is
// configured, keeps its copy, and drops the biggest client's records
// first when its buffer fills) rather than stop the appliance. The names
// are logrotate's, so that a logrotate of the same path (the package's,
// daily) and this one rotate the same chain.

// Rotation is how the access log rotates itself by size.
type Rotation struct {
	// MaxSize is the size past which the file is rotated, at the end of
	// the batch that took it there; 0: never (logrotate's alone).
	MaxSize int64
	// Keep is how many rotated files are kept: path.1 (the newest) to
	// path.Keep; at least 1 when MaxSize is set.
	Keep int
}

// due reports whether a file of size bytes is to be rotated.
func (r Rotation) due(size int64) bool { return r.MaxSize > 0 && size >= r.MaxSize }

// rotate renames the chain of rotated files one up, removing the oldest,
// and the path to path.1, and reports whether it did; the caller then
// opens the path anew (follow). It is called with l.mu held, after a write,
// by the Writer's goroutine: the renames are quick on a local disk, and
// Close, which is all that races a write, does not wait for them. A rename
// that fails is logged, at most once a minute as reopens are, and the file
// goes on growing until the next write past MaxSize tries again.
func (l *LogFile) rotate() bool {
	keep := max(l.rot.Keep, 1)
	err := os.Remove(rotated(l.path, keep))
	if errors.Is(err, fs.ErrNotExist) {
		err = nil
	}
	for i := keep - 1; i >= 1 && err == nil; i-- {
		if e := os.Rename(rotated(l.path, i), rotated(l.path, i+1)); e != nil && !errors.Is(e, fs.ErrNotExist) {
			err = e
		}
	}
	if err == nil {
		err = os.Rename(l.path, rotated(l.path, 1))
	}
	if err != nil {
		now := monoNow()
		l.reopenFailures.Add(1)
		if l.lastErrAt == 0 || now-l.lastErrAt >= int64(60e9) {
			l.lastErrAt = now
			slog.Error("rotating the access log past its --access-log-max-size; writing on to it", "file", l.path, "err", err)
		}
		return false
	}
	l.rotations.Add(1)
	return true
}

// rotated is the name of the i-th rotation of path, as logrotate names it.
func rotated(path string, i int) string { return fmt.Sprintf("%s.%d", path, i) }
