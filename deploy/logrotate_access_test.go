package deploy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testenv"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// accessLogPath is where the unit has the appliance write its access log.
const accessLogPath = "/var/log/gwlbproxy/access.log"

// accessExample is the stanza docs/deploy.md gives an operator who turns
// the appliance's own rotation off; the package does not install it.
const accessExample = "etc/logrotate-access.example"

// accessLogrotate returns the operator's stanza for the access log
// (accessExample), pointed at path instead, without its su line (the user
// need not exist here), after the global options of globalLogrotate, and
// the logrotate binary; it skips the test without one.
func accessLogrotate(t *testing.T, path string) (conf, logrotate string) {
	t.Helper()
	_, stanza, ok := strings.Cut(readFile(t, accessExample), accessLogPath+" {")
	if !ok {
		t.Fatalf("%s does not rotate %s", accessExample, accessLogPath)
	}
	stanza, _, _ = strings.Cut(stanza, "}")
	// Rotation by rename, which needs no free space, and nothing that
	// needs any before the oldest rotation is deleted.
	for _, want := range []string{"maxsize 1G", "rotate 7", "nocreate", "su gwlbproxy gwlbproxy"} {
		if !strings.Contains(stanza, want) {
			t.Errorf("the access log's stanza has no %q:\n%s", want, stanza)
		}
	}
	// Whole words: nocompress is wanted, compress is not.
	for _, bad := range []string{"copytruncate", "compress", "postrotate", "dateext"} {
		if slices.Contains(strings.Fields(stanza), bad) {
			t.Errorf("the access log's stanza has %q:\n%s", bad, stanza)
		}
	}
	// What a distribution's /etc/logrotate.conf may set for every stanza.
	for _, want := range []string{"nocompress", "nodateext"} {
		if !slices.Contains(strings.Fields(stanza), want) {
			t.Errorf("the access log's stanza has no %q, so it inherits the global setting:\n%s", want, stanza)
		}
	}
	logrotate = toolPath(t, "logrotate")
	var lines []string
	for _, l := range strings.Split(stanza, "\n") {
		if !strings.Contains(l, "su gwlbproxy") {
			lines = append(lines, l)
		}
	}
	conf = filepath.Join(t.TempDir(), "logrotate.conf")
	if err := os.WriteFile(conf, []byte(globalLogrotate+path+" {"+strings.Join(lines, "\n")+"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return conf, logrotate
}

// packets reads the access records in b and returns their packets fields,
// which the tests use as sequence numbers.
func packets(t *testing.T, b []byte) []int64 {
	t.Helper()
	var out []int64
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		var r records.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		out = append(out, r.Packets)
	}
	return out
}

// TestPackagedLogrotateLeavesAccessLog: the logrotate configuration the
// package installs, run by the real logrotate (forced, its paths moved
// into a temporary directory), rotates the TLS key log and leaves the
// access log alone: the same file, the same bytes, no access.log.1. The
// appliance rotates the access log itself, and the package's stanza for it
// too made two rotators of one chain, whose renames lost rotated files
// (review r3s26 F1). The operator's stanza is a file the package does not
// install, and docs/deploy.md gives it.
func TestPackagedLogrotateLeavesAccessLog(t *testing.T) {
	const dst = "/etc/logrotate.d/gwlbproxy"
	c := loadNfpm(t)
	if src, _ := c.installed(t, dst); src != "deploy/etc/logrotate" {
		t.Fatalf("the package installs %s at %s", src, dst)
	}
	for _, f := range c.Contents {
		if strings.HasSuffix(f.Src, strings.TrimPrefix(accessExample, "etc/")) {
			t.Errorf("the package installs %s at %s: two rotators of the access log", f.Src, f.Dst)
		}
	}
	ex := readFile(t, accessExample)
	if i := strings.Index(ex, accessLogPath+" {"); i < 0 || !strings.Contains(readFile(t, "../docs/deploy.md"), ex[i:]) {
		t.Errorf("docs/deploy.md does not give the stanza of %s as it is", accessExample)
	}
	logrotate := toolPath(t, "logrotate")
	dir := t.TempDir()
	logs, lib := filepath.Join(dir, "log"), filepath.Join(dir, "lib")
	for _, d := range []string{logs, lib} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var lines []string
	for _, l := range strings.Split(readFile(t, "etc/logrotate"), "\n") {
		if !strings.Contains(l, "su gwlbproxy") {
			lines = append(lines, l)
		}
	}
	packaged := strings.Join(lines, "\n")
	packaged = strings.ReplaceAll(packaged, "/var/log/gwlbproxy/", logs+"/")
	packaged = strings.ReplaceAll(packaged, "/var/lib/gwlbproxy/", lib+"/")
	conf := filepath.Join(dir, "logrotate.conf")
	if err := os.WriteFile(conf, []byte(globalLogrotate+packaged), 0o600); err != nil {
		t.Fatal(err)
	}
	access, keys := filepath.Join(logs, "access.log"), filepath.Join(lib, "tls-keys.log")
	body := []byte("{\"kind\":\"tcp\"}\n")
	for _, f := range []string{access, keys} {
		if err := os.WriteFile(f, body, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	before, err := os.Stat(access)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(logrotate, "-f", "-v", "-s", filepath.Join(dir, "state"), conf).CombinedOutput()
	if err != nil {
		t.Fatalf("logrotate: %v\n%s", err, out)
	}
	after, err := os.Stat(access)
	if b, _ := os.ReadFile(access); err != nil || !os.SameFile(before, after) || !bytes.Equal(b, body) {
		t.Errorf("the packaged logrotate touched the access log (%v, same file %v, %q)\n%s", err, err == nil && os.SameFile(before, after), b, out)
	}
	if names, _ := filepath.Glob(access + "?*"); len(names) != 0 {
		t.Errorf("the packaged logrotate rotated the access log: %v\n%s", names, out)
	}
	if _, err := os.Stat(keys + ".1"); err != nil {
		t.Errorf("the packaged logrotate did not rotate the key log (a broken configuration?): %v\n%s", err, out)
	}
}

// TestLogrotateAccessLog: the operator's logrotate stanza (accessExample,
// which makes the appliance leave the rotation to logrotate) rotates the access log by
// renaming it while the appliance's log file (records.LogFile behind a
// records.Writer, as --access-log opens it) streams records into it. The
// appliance then writes to a new file at the path, with the same mode, and
// no record is lost: the two files hold every one, once, in order.
func TestLogrotateAccessLog(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "access.log")
	conf, logrotate := accessLogrotate(t, path)
	lf, err := records.OpenLogFile(path, records.Rotation{})
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	w := records.NewWriter(nil, lf)
	defer w.Close(context.Background())
	n := 0
	write := func(d time.Duration) {
		for end := time.Now().Add(d); time.Now().Before(end); n++ {
			w.Write(&records.Record{Kind: "tcp", Packets: int64(n)})
			time.Sleep(2 * time.Millisecond)
		}
	}
	write(200 * time.Millisecond)
	if out, err := exec.Command(logrotate, "-f", "-s", filepath.Join(t.TempDir(), "state"), conf).CombinedOutput(); err != nil {
		t.Fatalf("logrotate: %v\n%s", err, out)
	}
	write(1500 * time.Millisecond) // the appliance looks at the path once a second
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if st := w.Stats(); st.Written != uint64(n) {
		t.Fatalf("stats %+v; want all %d written", st, n)
	}
	rotated, err := os.ReadFile(path + ".1")
	if err != nil {
		t.Fatalf("logrotate did not rotate the access log: %v", err)
	}
	cur, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("no access log at the path after rotation: %v", err)
	}
	a, b := packets(t, rotated), packets(t, cur)
	t.Logf("%d records: %d in access.log.1, %d in the new access.log", n, len(a), len(b))
	if len(b) == 0 {
		t.Fatal("the appliance never wrote to the new access log")
	}
	if all := slices.Concat(a, b); len(all) != n || !slices.IsSorted(all) || all[0] != 0 || all[n-1] != int64(n-1) {
		t.Fatalf("the two files hold %d records, want %d once each in order", len(all), n)
	}
	for _, f := range []string{path, path + ".1"} {
		if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o640 {
			t.Errorf("%s: mode %v (%v), want 0640", f, fi.Mode().Perm(), err)
		}
	}
}

// TestLogrotateAccessLogFullDisk: a burst of records has filled the disk
// the access log is on (a 256 KiB tmpfs, in a mount namespace of the test's
// own thread), with seven older rotations beside it. Writes fail; the
// operator's logrotate stanza still rotates (renames take no space) and deletes the
// oldest rotation, and the appliance's next write goes to a new file at
// the path, in the space that freed. With copytruncate logrotate failed
// ("error copying ... No space left on device") and the disk stayed full.
func TestLogrotateAccessLogFullDisk(t *testing.T) {
	testenv.RequireRoot(t, "mounting a tmpfs needs root")
	if !testenv.Privileged() {
		t.Skipf("mounts a tmpfs: runs with %s=1", testenv.PrivilegedEnv)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "access.log")
	conf, logrotate := accessLogrotate(t, path)
	state := filepath.Join(t.TempDir(), "state")
	var log []string
	// logrotate, forked from the thread the tmpfs is mounted for, shares it.
	err := testenv.InPrivateTmpfs(dir, "size=256k,mode=0755", func() error {
		for i := 1; i <= 7; i++ {
			if err := os.WriteFile(fmt.Sprintf("%s.%d", path, i), bytes.Repeat([]byte("{}\n"), 16<<10/3), 0o640); err != nil {
				return err
			}
		}
		lf, err := records.OpenLogFile(path, records.Rotation{})
		if err != nil {
			return err
		}
		defer lf.Close()
		line := []byte(`{"kind":"tcp","pad":"` + strings.Repeat("a", 1000) + "\"}\n")
		for {
			_, err := lf.Write(line)
			if errors.Is(err, syscall.ENOSPC) {
				break
			}
			if err != nil {
				return fmt.Errorf("filling the disk: %w", err)
			}
		}
		if _, err := lf.Write(line); !errors.Is(err, syscall.ENOSPC) {
			return fmt.Errorf("a write to the full disk: %v, want ENOSPC", err)
		}
		out, err := exec.Command(logrotate, "-f", "-v", "-s", state, conf).CombinedOutput()
		if err != nil {
			return fmt.Errorf("logrotate on a full disk: %v\n%s", err, out)
		}
		after := []byte(`{"kind":"tcp","rule":"after-rotation"}` + "\n")
		if _, err := lf.Write(after); err != nil {
			return fmt.Errorf("writing after the rotation: %w", err)
		}
		if b, err := os.ReadFile(path); err != nil || !bytes.Equal(b, after) {
			return fmt.Errorf("the new access log holds %q (%v), want the record written after the rotation", b, err)
		}
		if _, err := os.Stat(path + ".8"); err == nil {
			return errors.New("the oldest rotation was kept")
		}
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			fi, _ := e.Info()
			log = append(log, fmt.Sprintf("%s %d", e.Name(), fi.Size()))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the tmpfs after rotation: %s", strings.Join(log, ", "))
}

// TestLogrotateAccessLogManyADay: a burst grows the access log past maxsize
// (scaled down to 1k) three times in one day, logrotate running after each
// as the hourly timer does, under a global configuration that sets dateext
// and compress. Every run rotates: access.log.1 to .3, uncompressed. With
// dateext inherited, the second and third found access.log-YYYYMMDD there
// already ("destination ... already exists, skipping rotation") and the log
// kept growing.
func TestLogrotateAccessLogManyADay(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "access.log")
	conf, logrotate := accessLogrotate(t, path)
	b, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(conf, bytes.Replace(b, []byte("maxsize 1G"), []byte("maxsize 1k"), 1), 0o600); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	for round := 1; round <= 3; round++ {
		if err := os.WriteFile(path, bytes.Repeat([]byte("{}\n"), 4096/3), 0o640); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(logrotate, "-v", "-s", state, conf).CombinedOutput()
		if err != nil || bytes.Contains(out, []byte("error")) {
			t.Fatalf("round %d: logrotate: %v\n%s", round, err, out)
		}
		if _, err := os.Stat(path); err == nil {
			t.Fatalf("round %d: access.log is still there: not rotated\n%s", round, out)
		}
	}
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	for i := 1; i <= 3; i++ {
		if !slices.Contains(names, fmt.Sprintf("access.log.%d", i)) {
			t.Errorf("no access.log.%d after three rotations: %v", i, names)
		}
	}
}
