package records

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// writeConf writes a logrotate configuration file, 0644, root's as the
// tests run.
func writeConf(t *testing.T, name, conf string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(name, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	return name
}

// TestOtherRotatorsFollowIncludes: the real logrotate reads the files an
// include names, a directory's entries or a file, from logrotate.conf or
// from any file it reads. The start's look read only logrotate.conf and
// logrotate.d's entries: a stanza in a directory logrotate.conf includes,
// or in a file a logrotate.d entry includes, went unseen, and the
// appliance rotated the chain logrotate rotated too (review r9s26 F2).
// Includes that name each other, or an included directory's taboo
// entries, are read once or not at all.
func TestOtherRotatorsFollowIncludes(t *testing.T) {
	top := t.TempDir()
	log := writeConf(t, filepath.Join(top, "log", "access.log"), "")
	stanza := log + " {\n  daily\n}\n"
	conf := writeConf(t, filepath.Join(top, "logrotate.conf"),
		"weekly\ninclude "+filepath.Join(top, "logrotate.d")+"\ninclude \""+filepath.Join(top, "extra.d")+"\"\n/var/log/wtmp {\n  monthly\n}\n")
	writeConf(t, filepath.Join(top, "logrotate.d", "syslog"), "include "+filepath.Join(top, "other", "x.conf")+"\ninclude "+conf+"\n")
	inDir := writeConf(t, filepath.Join(top, "extra.d", "gwlbproxy-access"), stanza)
	writeConf(t, filepath.Join(top, "extra.d", "old.rpmsave"), stanza)
	inFile := writeConf(t, filepath.Join(top, "other", "x.conf"), "include "+filepath.Join(top, "extra.d")+"\n"+stanza)
	real := logrotateConfs
	logrotateConfs = []string{conf, filepath.Join(top, "logrotate.d")}
	t.Cleanup(func() { logrotateConfs = real })
	found, unread := otherRotators(log)
	slices.Sort(found)
	want := []string{inDir, inFile}
	slices.Sort(want)
	if !slices.Equal(found, want) || len(unread) != 0 {
		t.Errorf("otherRotators found %v, unread %v; want %v, none unread", found, unread, want)
	}
}

// TestOtherRotatorsByIdentity: a stanza names the log when a file its
// glob expands to is the log: a doubled slash (a template's
// "{{ dir }}/access.log"), a "/./", and a symlinked directory on either
// side, which logrotate rotates, were compared as strings and missed
// (review r9s26 F2). A stanza naming a symlink to the log does not name
// it (logrotate does not rotate symlinks), nor one naming another file.
func TestOtherRotatorsByIdentity(t *testing.T) {
	top := t.TempDir()
	dir := filepath.Join(top, "log")
	log := writeConf(t, filepath.Join(dir, "access.log"), "")
	writeConf(t, filepath.Join(dir, "other.log"), "")
	link := filepath.Join(top, "link")
	if err := os.Symlink("log", link); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("access.log", filepath.Join(dir, "alias.log")); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path, head string
		want       bool
	}{
		{log, dir + "//access.log", true},
		{log, dir + "/./access.log", true},
		{log, top + "//log/../log/access.log", true},
		{log, link + "/access.log", true},
		{log, link + "/*.log", true},
		{link + "/access.log", log, true},
		{link + "//access.log", top + "/l*/access.log", true},
		{log, dir + "/alias.log", false},
		{log, dir + "/other.log", false},
		{log, dir + "/access.log.1", false},
	} {
		logrotateDir(t, map[string]string{"gwlbproxy": c.head + " {\n  daily\n}\n"})
		if found, _ := otherRotators(c.path); (len(found) == 1) != c.want {
			t.Errorf("--access-log %s, stanza %s: found %v, want named %v", c.path, c.head, found, c.want)
		}
	}
}

// TestOtherRotatorsRootOwnedOnly: logrotate, run as root, ignores a
// configuration file owned by another user ("the file owner is wrong"),
// so such a stanza names nothing, and the same file owned by root does
// (review r9s26 F4: the rule was untested).
func TestOtherRotatorsRootOwnedOnly(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown")
	}
	top := t.TempDir()
	log := writeConf(t, filepath.Join(top, "access.log"), "")
	d := logrotateDir(t, map[string]string{"gwlbproxy": log + " {\n  daily\n}\n"})
	conf := filepath.Join(d, "gwlbproxy")
	for _, uid := range []int{1000, 0} {
		if err := os.Chown(conf, uid, 0); err != nil {
			t.Fatal(err)
		}
		if found, _ := otherRotators(log); (len(found) == 1) != (uid == 0) {
			t.Errorf("stanza owned by uid %d: found %v, want named only when root's", uid, found)
		}
	}
}

// TestOtherRotatorsHardLink: logrotate 3.21 rotates no file with more than
// one hard link ("Rotation of files with multiple hard links is not
// allowed ... skipping"), whether its stanza names the access log or
// another link of it (a collector's spool link). The scan found such a
// stanza by identity, said "other", and nobody rotated the file: past the
// backstop every record was refused for good (review r13s26 F2). It names
// nothing now, and the appliance rotates the file, with a warning.
func TestOtherRotatorsHardLink(t *testing.T) {
	top := t.TempDir()
	log := writeConf(t, filepath.Join(top, "log", "access.log"), "x\n")
	spool := filepath.Join(top, "spool", "gw.log")
	if err := os.MkdirAll(filepath.Dir(spool), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(log, spool); err != nil {
		t.Fatal(err)
	}
	logrotateDir(t, map[string]string{
		"spool": spool + " {\n  rotate 2\n}\n",
		"own":   log + " {\n  rotate 2\n}\n",
	})
	if found, _ := otherRotators(log); len(found) != 0 {
		t.Errorf("a log with 2 hard links: found %v, want none (logrotate skips it)", found)
	}
	if lr, err := exec.LookPath("logrotate"); err == nil { // what the scan mirrors
		conf := writeConf(t, filepath.Join(top, "logrotate.conf"), "include "+logrotateConfs[0]+"\n")
		out, _ := exec.Command(lr, "-f", "-v", "-s", filepath.Join(top, "state"), conf).CombinedOutput()
		if _, err := os.Stat(log + ".1"); err == nil || !strings.Contains(string(out), "hard links") {
			t.Errorf("the installed logrotate rotated a file of 2 hard links, or said nothing of them:\n%s", out)
		}
	}
	logs := logCapture(t)
	lf, err := OpenLogFile(log, Rotation{MaxSize: 1 << 20, Keep: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	if st := lf.Stats(); st.RotatedBy != RotatedByAppliance || !strings.Contains(logs(), "more than one hard link") {
		t.Errorf("rotated_by %q, want appliance, and a warning; log:\n%s", st.RotatedBy, logs())
	}
	// One link again: the stanza names it.
	if err := os.Remove(spool); err != nil {
		t.Fatal(err)
	}
	if found, _ := otherRotators(log); len(found) != 1 {
		t.Errorf("one link: found %v, want the own stanza", found)
	}
}

// TestOtherRotatorsIncludeDepth: logrotate 3.21 follows includes 16 deep
// and no further ("include nesting too deep"): a stanza in the file 16
// includes down is applied, one 17 down is not. The look followed any
// depth and said "other" for the latter, which nobody applies (review
// r13s26 F3). A cycle still ends, and its stanza is found.
func TestOtherRotatorsIncludeDepth(t *testing.T) {
	const log = "/var/log/gwlbproxy/access.log"
	for _, tc := range []struct {
		at   int // the file of the chain that holds the stanza
		want bool
	}{{16, true}, {17, false}} {
		top := t.TempDir()
		for i := 1; i <= 20; i++ {
			conf := "include " + filepath.Join(top, fmt.Sprintf("f%d.conf", i+1)) + "\n"
			if i == tc.at {
				conf += log + " {\n  missingok\n}\n"
			}
			writeConf(t, filepath.Join(top, fmt.Sprintf("f%d.conf", i)), conf)
		}
		main := writeConf(t, filepath.Join(top, "main.conf"), "include "+filepath.Join(top, "f1.conf")+"\n")
		real := logrotateConfs
		logrotateConfs = []string{main}
		found, _ := otherRotators(log)
		logrotateConfs = real
		if got := len(found) > 0; got != tc.want {
			t.Errorf("stanza %d includes deep: found %v, want found %v", tc.at, found, tc.want)
		}
		if lr, err := exec.LookPath("logrotate"); err == nil { // what the scan mirrors
			out, _ := exec.Command(lr, "-d", "-s", filepath.Join(top, "state"), main).CombinedOutput()
			if applied := strings.Contains(string(out), "Handling 1 logs"); applied != tc.want {
				t.Errorf("stanza %d includes deep: the installed logrotate applies it: %v, want %v:\n%s", tc.at, applied, tc.want, out)
			}
		}
	}
	// A cycle: a includes b includes a; the stanza in b.
	top := t.TempDir()
	a, b := filepath.Join(top, "a.conf"), filepath.Join(top, "b.conf")
	writeConf(t, a, "include "+b+"\n")
	writeConf(t, b, "include "+a+"\n"+log+" {\n}\n")
	real := logrotateConfs
	logrotateConfs = []string{a}
	t.Cleanup(func() { logrotateConfs = real })
	if found, _ := otherRotators(log); !slices.Equal(found, []string{b}) {
		t.Errorf("include cycle: found %v, want %s", found, b)
	}
}
