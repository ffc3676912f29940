package records

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
)

// errCapped is a write refused: the file holds twice --access-log-max-size
// and its rotation fails (Rotation.capped).
var errCapped = errors.New("not written until the rotation works")

// logrotateConfs are where a logrotate that rotates the access log too is
// looked for at start.
var logrotateConfs = []string{"/etc/logrotate.conf", "/etc/logrotate.d"}

// logrotateTaboo are the name endings logrotate skips in an include
// directory (its default tabooext): an upgrade's leftover .rpmsave or
// .dpkg-old of the old stanza rotates nothing.
var logrotateTaboo = []string{",v", ".cfsaved", ".disabled", ".dpkg-bak", ".dpkg-del", ".dpkg-dist",
	".dpkg-new", ".dpkg-old", ".rpmnew", ".rpmorig", ".rpmsave", ".swp", ".ucf-dist", ".ucf-new", ".ucf-old", "~"}

// warnOtherRotators warns of each logrotate configuration that names path
// while the appliance rotates it: two rotators of one chain lose rotated
// files (rotate.go). The package's /etc/logrotate.d/gwlbproxy named it
// before; edited, it is kept on upgrade (a configuration file), and only
// the operator can take the stanza out.
func warnOtherRotators(path string) {
	for _, conf := range otherRotators(path) {
		slog.Warn("a logrotate configuration rotates the access log, which the appliance rotates itself: remove its stanza, or set --access-log-max-size 0 and --access-log-max-age 0 (docs/deploy.md); two rotators of one file lose rotated files", "config", conf, "file", path)
	}
}

// otherRotators returns the files of logrotateConfs that name path in a
// stanza's head (a glob that matches it included).
func otherRotators(path string) []string {
	var files, found []string
	for _, c := range logrotateConfs {
		fi, err := os.Stat(c)
		if err != nil {
			continue
		}
		if !fi.IsDir() {
			files = append(files, c)
			continue
		}
		ents, _ := os.ReadDir(c)
		for _, e := range ents {
			if e.Type().IsRegular() && !taboo(e.Name()) {
				files = append(files, filepath.Join(c, e.Name()))
			}
		}
	}
	for _, f := range files {
		if b, err := os.ReadFile(f); err == nil && namesLog(string(b), path) {
			found = append(found, f)
		}
	}
	return found
}

func taboo(name string) bool {
	if strings.HasPrefix(name, ".") {
		return true
	}
	for _, t := range logrotateTaboo {
		if strings.HasSuffix(name, t) {
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
