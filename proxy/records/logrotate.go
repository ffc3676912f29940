package records

import (
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// errCapped is a write refused: the file holds twice --access-log-max-size
// and its rotation fails (Rotation.capped).
var errCapped = errors.New("not written until the rotation works")

// logrotateConfs are where a logrotate that rotates the access log too is
// looked for at start.
var logrotateConfs = []string{"/etc/logrotate.conf", "/etc/logrotate.d"}

// logrotateTaboo are the name endings logrotate 3.21 skips in an include
// directory (its default tabooext, matched as "*" + ending with
// FNM_PERIOD, so that a dotfile never matches and is read): an upgrade's
// leftover .rpmsave or .dpkg-old of the old stanza rotates nothing. An
// ending with a "*" matches anything there.
var logrotateTaboo = []string{",v", ".bak", ".cfsaved", ".disabled", ".dpkg-bak", ".dpkg-del", ".dpkg-dist",
	".dpkg-new", ".dpkg-old", ".dpkg-tmp", ".rhn-cfg-tmp-*", ".rpmnew", ".rpmorig", ".rpmsave", ".swp",
	".ucf-dist", ".ucf-new", ".ucf-old", "~"}

// Who rotates the access log (LogFileStats.RotatedBy), decided at start.
const (
	// RotatedByAppliance: the appliance, by --access-log-max-size and
	// --access-log-max-age.
	RotatedByAppliance = "appliance"
	// RotatedByOther: a logrotate configuration names the file, so the
	// appliance only follows its renames.
	RotatedByOther = "other"
	// RotatedByNone: the path is no regular file (a FIFO, /dev/stdout, a
	// symlink), which nothing here renames.
	RotatedByNone = "none"
)

// otherRotatorWarn is how often the appliance repeats that another
// rotator rotates the access log: a start's journal line scrolls away.
const otherRotatorWarn = time.Hour

// warnOtherRotators warns that the configurations confs name the access
// log, path, whose rotation the appliance therefore leaves to them, the
// backstop (bytes) aside; at start and every otherRotatorWarn. That they
// name it does not make logrotate apply them: the scan is no logrotate.
func warnOtherRotators(path string, confs []string, backstop int64) {
	slog.Warn("a logrotate configuration names the access log: the appliance leaves its rotation to logrotate (no --access-log-max-size, --access-log-max-age), follows its renames, and refuses records once the file has held twice --access-log-max-size for 10s, in case logrotate never applies the stanza (not run, the stanza rejected: check logrotate -d); to have the appliance rotate it, remove the stanza and restart (docs/deploy.md)", "config", strings.Join(confs, ","), "file", path, "backstop_bytes", backstop)
}

// configRead is a logrotate configuration file that could not be read.
type configRead struct {
	path string
	err  error
}

// otherRotators returns the files of logrotateConfs that name path in a
// stanza's head (a glob that matches it included), and those it could
// not read (the appliance runs as gwlbproxy, logrotate as root). It reads
// what logrotate 3.21 reads: an include directory's entries through
// symlinks, dotfiles too, the taboo endings skipped, regular files only,
// and, as root does, none writable by group or others or owned by
// another user than root (logrotate ignores those).
func otherRotators(path string) (found []string, unread []configRead) {
	var files []string
	for _, c := range logrotateConfs {
		fi, err := os.Stat(c)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			unread = append(unread, configRead{c, err})
			continue
		}
		if !fi.IsDir() {
			files = append(files, c)
			continue
		}
		ents, err := os.ReadDir(c)
		if err != nil {
			unread = append(unread, configRead{c, err})
		}
		for _, e := range ents {
			if !taboo(e.Name()) {
				files = append(files, filepath.Join(c, e.Name()))
			}
		}
	}
	for _, f := range files {
		fi, err := os.Stat(f)
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) { // a dangling symlink logrotate skips too
				unread = append(unread, configRead{f, err})
			}
			continue
		}
		if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o022 != 0 || !rootOwned(fi) {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			unread = append(unread, configRead{f, err})
			continue
		}
		if namesLog(string(b), path) {
			found = append(found, f)
		}
	}
	return found, unread
}

func rootOwned(fi os.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	return !ok || st.Uid == 0
}

// taboo reports whether logrotate skips the include directory's entry
// name: an ending of logrotateTaboo, on a name not starting with a dot.
func taboo(name string) bool {
	if strings.HasPrefix(name, ".") {
		return false
	}
	for _, t := range logrotateTaboo {
		if ok, _ := filepath.Match("*"+t, name); ok {
			return true
		}
	}
	return false
}

// namesLog reports whether the logrotate configuration conf has a stanza
// whose head names path: the words before a "{", on its line or on the
// lines since the last stanza (logrotate lets a stanza name files on lines
// of their own). A stanza's body, its scripts included, names nothing.
func namesLog(conf, path string) bool {
	var head []string
	in, script := false, false
	for _, line := range strings.Split(conf, "\n") {
		line = strings.TrimSpace(line)
		f := strings.Fields(line)
		switch {
		case strings.HasPrefix(line, "#") || len(f) == 0:
		case script:
			script = f[0] != "endscript"
		case in:
			switch f[0] {
			case "postrotate", "prerotate", "firstaction", "lastaction", "preremove":
				script = true
			case "}":
				in = false
			}
		case !strings.ContainsAny(f[0][:1], `/"'*~{`): // a global directive
			head = head[:0]
		default:
			before, _, open := strings.Cut(line, "{")
			head = append(head, strings.Fields(before)...)
			if !open {
				continue
			}
			for _, w := range head {
				if ok, _ := filepath.Match(strings.Trim(w, `"'`), path); ok {
					return true
				}
			}
			head, in = head[:0], true
		}
	}
	return false
}
