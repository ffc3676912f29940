package records

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestOtherRotatorsFound: at start, with the appliance rotating the
// access log, a logrotate configuration that names it too is found (the
// package's old /etc/logrotate.d/gwlbproxy, which an upgrade keeps when
// edited), and one that names other files, comments, scripts or an
// upgrade's leftover (.rpmsave, which logrotate skips) is not: two
// rotators of one chain lose rotated files (review r3s26 F1).
func TestOtherRotatorsFound(t *testing.T) {
	const log = "/var/log/gwlbproxy/access.log"
	for conf, want := range map[string]bool{
		"/var/log/gwlbproxy/access.log {\n    daily\n    rotate 7\n}\n":                            true,
		"/var/log/gwlbproxy/*.log {\n  weekly\n}\n":                                                true,
		"\"/var/log/gwlbproxy/access.log\"\n/var/lib/gwlbproxy/tls-keys.log\n{\n  daily\n}\n":      true,
		"weekly\n/var/lib/gwlbproxy/tls-keys.log {\n    daily\n}\n":                                false,
		"# /var/log/gwlbproxy/access.log {\n/var/lib/gwlbproxy/tls-keys.log {\n}\n":                false,
		"/var/log/x.log {\n postrotate\n  ls /var/log/gwlbproxy/* {\n endscript\n}\n":              false,
		"/var/log/x.log {\n daily\n}\n/var/log/gwlbproxy/access.log /var/log/y {\n}\n":             true,
		"include /etc/logrotate.d\n/var/log/wtmp {\n    monthly\n}\n":                              false,
		"/var/log/gwlbproxy/access.log.1 {\n}\n":                                                   false,
		"/var/lib/gwlbproxy/tls-keys.log\n{\n}\n/var/log/gwlbproxy/access.log\n{\n  nocreate\n}\n": true,
	} {
		if got := namesLog(conf, log); got != want {
			t.Errorf("namesLog(%q): %v, want %v", conf, got, want)
		}
	}
	dir := t.TempDir()
	d := filepath.Join(dir, "logrotate.d")
	if err := os.Mkdir(d, 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"logrotate.conf":                "weekly\ninclude " + d + "\n",
		"logrotate.d/gwlbproxy":         log + " {\n  daily\n}\n",
		"logrotate.d/gwlbproxy.rpmsave": log + " {\n  daily\n}\n",
		"logrotate.d/syslog":            "/var/log/messages {\n}\n",
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(b), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	real := logrotateConfs
	logrotateConfs = []string{filepath.Join(dir, "logrotate.conf"), d}
	t.Cleanup(func() { logrotateConfs = real })
	if got, _ := otherRotators(log); !slices.Equal(got, []string{filepath.Join(d, "gwlbproxy")}) {
		t.Errorf("otherRotators: %v, want only logrotate.d/gwlbproxy", got)
	}
}

// logrotateDir makes a logrotate.d of files (name: content) the start's
// look reads, and nothing else.
func logrotateDir(t *testing.T, files map[string]string) string {
	t.Helper()
	d := filepath.Join(t.TempDir(), "logrotate.d")
	if err := os.Mkdir(d, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(d, name), []byte(b), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	real := logrotateConfs
	logrotateConfs = []string{d}
	t.Cleanup(func() { logrotateConfs = real })
	return d
}

// TestOtherRotatorsReadLikeLogrotate: the start's look reads what
// logrotate 3.21 reads (checked by hand with logrotate -d): a symlink in
// the include directory (a configuration management's layout), a dotfile,
// a dotfile with a taboo ending (FNM_PERIOD: "*.swp" matches no dotfile),
// and names the files it could not read; it skips the taboo endings (.bak,
// .rhn-cfg-tmp-*) and a file writable by others, as logrotate does
// (review r7s26 F2).
func TestOtherRotatorsReadLikeLogrotate(t *testing.T) {
	const log = "/var/log/gwlbproxy/access.log"
	stanza := log + " {\n  daily\n}\n"
	elsewhere := filepath.Join(t.TempDir(), "gwlbproxy")
	if err := os.WriteFile(elsewhere, []byte(stanza), 0o644); err != nil {
		t.Fatal(err)
	}
	d := logrotateDir(t, map[string]string{
		".gwlbproxy": stanza, ".old.swp": stanza, "g.bak": stanza, "h.rhn-cfg-tmp-1": stanza, "syslog": "/var/log/messages {\n}\n",
	})
	if err := os.Symlink(elsewhere, filepath.Join(d, "linked")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("loop", filepath.Join(d, "loop")); err != nil { // ELOOP: cannot be read
		t.Fatal(err)
	}
	if err := os.Symlink("gone", filepath.Join(d, "dangling")); err != nil { // logrotate skips it
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d, "writable"), []byte(stanza), 0o666); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(d, "writable"), 0o666)
	found, unread := otherRotators(log)
	want := []string{filepath.Join(d, ".gwlbproxy"), filepath.Join(d, ".old.swp"), filepath.Join(d, "linked")}
	if !slices.Equal(found, want) {
		t.Errorf("otherRotators found %v, want %v", found, want)
	}
	if len(unread) != 1 || unread[0].path != filepath.Join(d, "loop") || unread[0].err == nil {
		t.Errorf("unread %v, want only the symlink loop", unread)
	}
}

// logCapture makes slog's default write to a buffer the test reads.
func logCapture(t *testing.T) func() string {
	var mu sync.Mutex
	var buf bytes.Buffer
	real := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return buf.Write(p)
	}), nil)))
	t.Cleanup(func() { slog.SetDefault(real) })
	return func() string {
		mu.Lock()
		defer mu.Unlock()
		return buf.String()
	}
}

type writerFunc func([]byte) (int, error)

func (w writerFunc) Write(p []byte) (int, error) { return w(p) }

// TestLogFileLeavesRotationToLogrotate: with a logrotate stanza naming the
// access log (an upgrade that kept an edited stanza), the appliance, its
// size and age flags set, does not rotate the file, nor cap it below the
// backstop (twice the size): one rotator (review r7s26 F2, two rotators
// line up daily); it follows logrotate's rename, says so in its stats,
// and warns at start and once an hour, naming the configuration.
func TestLogFileLeavesRotationToLogrotate(t *testing.T) {
	clock := fakeLogClock(t)
	logs := logCapture(t)
	path := filepath.Join(t.TempDir(), "access.log")
	d := logrotateDir(t, map[string]string{"gwlbproxy": path + " {\n  daily\n  nocreate\n}\n"})
	lf, err := OpenLogFile(path, Rotation{MaxSize: 1 << 20, MaxAge: time.Hour, Keep: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	line := []byte(strings.Repeat("x", 64<<10-1) + "\n")
	for i := range 31 { // past the size and the appliance's cap, not its backstop; an hour
		if i%6 == 0 {
			clock.Add(int64(10 * time.Minute))
		}
		if _, err := lf.Write(line); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	st := lf.Stats()
	if st.Rotations != 0 || st.WritesRefused != 0 || st.RotatedBy != RotatedByOther || !slices.Equal(st.OtherRotators, []string{filepath.Join(d, "gwlbproxy")}) {
		t.Fatalf("stats %+v: want no rotation, no refusal, rotated_by other naming the stanza", st)
	}
	if _, err := os.Stat(path + ".1"); err == nil {
		t.Fatal("the appliance rotated a file logrotate rotates")
	}
	if err := os.Rename(path, path+".1"); err != nil { // logrotate's rotation
		t.Fatal(err)
	}
	clock.Add(int64(time.Hour))
	if _, err := lf.Write([]byte("{\"after\":1}\n")); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "{\"after\":1}\n" {
		t.Fatalf("after logrotate's rename the path holds %q (%v), want the new line", b, err)
	}
	if n := strings.Count(logs(), "a logrotate configuration names the access log"); n != 3 {
		t.Errorf("%d warnings over two hours, want 3 (start, each hour):\n%s", n, logs())
	}
}

// TestLogFileMaxSize0RotatesWithoutLogrotate: --access-log-max-size 0 (the
// old "logrotate alone", kept in an upgraded flags file) with no stanza
// naming the file (the upgrade replaced the unedited one) rotates at the
// default size, with a warning: a flood would fill the disk (review r7s26
// F1). The stats say the appliance rotates it.
func TestLogFileMaxSize0RotatesWithoutLogrotate(t *testing.T) {
	logs := logCapture(t)
	path := filepath.Join(t.TempDir(), "access.log")
	logrotateDir(t, map[string]string{"syslog": "/var/log/messages {\n}\n"})
	for _, rot := range []Rotation{{Keep: 7}, {MaxAge: 24 * time.Hour, Keep: 7}} {
		lf, err := OpenLogFile(path, rot)
		if err != nil {
			t.Fatal(err)
		}
		lf.Close()
		if lf.rot.MaxSize != DefaultMaxSize || lf.rot.MaxAge != rot.MaxAge || lf.Stats().RotatedBy != RotatedByAppliance {
			t.Errorf("%+v: rotation %+v, stats %+v: want the default size, the age kept, rotated_by appliance", rot, lf.rot, lf.Stats())
		}
	}
	if n := strings.Count(logs(), "no logrotate configuration names it"); n != 2 {
		t.Errorf("%d warnings, want 2:\n%s", n, logs())
	}
}

// TestPackagedStanzasSeen: the start's look finds the access log in the
// stanza deploy.md gives for logrotate (deploy/etc/logrotate-access.example)
// and not in the package's /etc/logrotate.d/gwlbproxy, so the appliance
// rotates the file unless the operator installs the former.
func TestPackagedStanzasSeen(t *testing.T) {
	const log = "/var/log/gwlbproxy/access.log"
	for file, want := range map[string]bool{"../../deploy/etc/logrotate-access.example": true, "../../deploy/etc/logrotate": false} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if got := namesLog(string(b), log); got != want {
			t.Errorf("%s names the access log: %v, want %v", file, got, want)
		}
	}
}
