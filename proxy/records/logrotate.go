package records

import (
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
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
// A backstop of 0: logrotate has rotated the file since start.
func warnOtherRotators(path string, confs []string, backstop int64) {
	if backstop == 0 {
		slog.Warn("a logrotate configuration names the access log, and logrotate has rotated it since start: the appliance leaves its rotation to logrotate (no --access-log-max-size, --access-log-max-age) and refuses no records, so only logrotate's runs and maxsize bound the file (a flood between hourly runs may fill the disk); to have the appliance rotate it, remove the stanza and restart (docs/deploy.md)", "config", strings.Join(confs, ","), "file", path)
		return
	}
	slog.Warn("a logrotate configuration names the access log: the appliance leaves its rotation to logrotate (no --access-log-max-size, --access-log-max-age), follows its renames, and refuses records once the file has held twice --access-log-max-size for 10s until logrotate is first seen to rotate it (a rename, a copytruncate), in case logrotate never applies the stanza (not run, the stanza rejected: check logrotate -d); to have the appliance rotate it, remove the stanza and restart (docs/deploy.md)", "config", strings.Join(confs, ","), "file", path, "backstop_bytes", backstop)
}

// maxIncludeDepth is logrotate 3.21's MAX_NESTING: a file this many
// includes deep is read, and its includes are not ("include nesting too
// deep"). The look followed any depth, and said "other" for a stanza
// logrotate never reads (review r13s26 F3).
const maxIncludeDepth = 16

// configRead is a logrotate configuration file that could not be read.
type configRead struct {
	path string
	err  error
}

// otherRotators returns the files of logrotateConfs, and those their
// include directives name, that name path in a stanza's head (a glob that
// matches it included), and those it could not read (the appliance runs
// as gwlbproxy, logrotate as root). It reads what logrotate 3.21 reads:
// an include directory's entries through symlinks, dotfiles too, the
// taboo endings skipped, regular files only, and, as root does, none
// writable by group or others or owned by another user than root
// (logrotate ignores those). Includes are followed, files and
// directories, from every file read: a stanza in a directory that
// logrotate.conf includes, or in a file a logrotate.d entry includes, was
// missed, and two rotators shared the chain (review r9s26 F2). As
// logrotate, it follows no include past maxIncludeDepth.
func otherRotators(path string) (found []string, unread []configRead) {
	logFI, _ := os.Stat(path) // nil for a file not there yet
	seen := map[string]bool{}
	type conf struct {
		path  string
		depth int // includes followed to reach it
	}
	var queue []conf
	// add queues the configuration name c, a directory's entries or a
	// file, each once: includes may name each other, or themselves. The
	// queue is breadth first, so a file is first reached by its shortest
	// chain of includes: logrotate reads it if any chain is short enough.
	add := func(c string, depth int) {
		c = filepath.Clean(c)
		if seen[c] {
			return
		}
		seen[c] = true
		fi, err := os.Stat(c)
		if errors.Is(err, fs.ErrNotExist) {
			return // a dangling symlink logrotate skips too
		}
		if err != nil {
			unread = append(unread, configRead{c, err})
			return
		}
		if !fi.IsDir() {
			queue = append(queue, conf{c, depth})
			return
		}
		ents, err := os.ReadDir(c)
		if err != nil {
			unread = append(unread, configRead{c, err})
		}
		for _, e := range ents {
			if f := filepath.Join(c, e.Name()); !taboo(e.Name()) && !seen[f] {
				seen[f] = true
				queue = append(queue, conf{f, depth})
			}
		}
	}
	for i, c := range logrotateConfs {
		// logrotate reads /etc/logrotate.d as logrotate.conf's include,
		// one deep.
		add(c, min(i, 1))
	}
	for len(queue) > 0 {
		f, depth := queue[0].path, queue[0].depth
		queue = queue[1:]
		fi, err := os.Stat(f)
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
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
		heads, includes := parseConf(string(b))
		if slices.ContainsFunc(heads, func(w string) bool { return namesFile(w, path, logFI) }) {
			found = append(found, f)
		}
		if depth >= maxIncludeDepth {
			continue // "include nesting too deep": logrotate reads no further
		}
		for _, inc := range includes {
			add(inc, depth+1)
		}
	}
	return found, unread
}

// namesFile reports whether the stanza head word w names the log, path,
// logFI its FileInfo (nil if not there): by identity, each file its glob
// expands to compared with the log's, so that "//", "/./" and a symlinked
// directory on either side name it as they do for logrotate; by the
// string, cleaned, for a file not there yet. A word that expands to a
// symlink names nothing: logrotate refuses to rotate a symlink. Nor does
// any word name a log with more than one hard link: logrotate 3.21 skips
// such a file ("multiple hard links ... skipping") whatever name the
// stanza gives, and "other" left it to no rotator (review r13s26 F2).
func namesFile(w, path string, logFI os.FileInfo) bool {
	w = strings.Trim(w, `"'`)
	if hardLinks(logFI) > 1 {
		return false
	}
	if logFI == nil {
		ok, _ := filepath.Match(filepath.Clean(w), filepath.Clean(path))
		return ok
	}
	matches, _ := filepath.Glob(w)
	for _, m := range matches {
		if fi, err := os.Lstat(m); err == nil && fi.Mode().IsRegular() && os.SameFile(fi, logFI) {
			return true
		}
	}
	return false
}

// hardLinks is fi's link count; 0 for a nil fi or one without it.
func hardLinks(fi os.FileInfo) uint64 {
	if fi == nil {
		return 0
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Nlink)
	}
	return 0
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
// whose head names path (namesFile).
func namesLog(conf, path string) bool {
	fi, _ := os.Stat(path)
	heads, _ := parseConf(conf)
	return slices.ContainsFunc(heads, func(w string) bool { return namesFile(w, path, fi) })
}

// parseConf returns the words of the logrotate configuration conf's
// stanza heads, and the paths its include directives name. A head is the
// words before a "{", on its line or on the lines since the last stanza
// (logrotate lets a stanza name files on lines of their own). A stanza's
// body, its scripts included, names nothing.
func parseConf(conf string) (heads, includes []string) {
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
			if f[0] == "include" && len(f) > 1 {
				includes = append(includes, strings.Trim(f[1], `"'`))
			}
			head = head[:0]
		default:
			before, _, open := strings.Cut(line, "{")
			head = append(head, strings.Fields(before)...)
			if !open {
				continue
			}
			heads = append(heads, head...)
			head, in = head[:0], true
		}
	}
	return heads, includes
}
