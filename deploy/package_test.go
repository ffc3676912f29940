package deploy

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/internal/testenv"
)

var (
	pkgOnce     sync.Once
	pkgDeb      string
	pkgRPM      string
	pkgBinDir   string
	pkgBuildErr error
)

// buildPackages runs `make deb rpm` once, into a scratch BIN, and returns
// the two packages.
func buildPackages(t *testing.T) (deb, rpm string) {
	t.Helper()
	root := repoRoot(t)
	pkgOnce.Do(func() {
		pkgBinDir = filepath.Join(scratch, "bin")
		cmd := exec.Command("make", "-C", root, "deb", "rpm", "BIN="+pkgBinDir)
		cmd.Env = append(os.Environ(), "MAKEFLAGS=")
		if out, err := cmd.CombinedOutput(); err != nil {
			pkgBuildErr = fmt.Errorf("make deb rpm: %v\n%s", err, out)
			return
		}
		debs, _ := filepath.Glob(filepath.Join(pkgBinDir, "gwlbproxy_*.deb"))
		rpms, _ := filepath.Glob(filepath.Join(pkgBinDir, "gwlbproxy-*.rpm"))
		if len(debs) != 1 || len(rpms) != 1 {
			pkgBuildErr = fmt.Errorf("make deb rpm made %v and %v, want one of each", debs, rpms)
			return
		}
		pkgDeb, pkgRPM = debs[0], rpms[0]
	})
	if pkgBuildErr != nil {
		t.Fatal(pkgBuildErr)
	}
	return pkgDeb, pkgRPM
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

func requireTool(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.RequirePrivileged(t, tool+" is not installed (.ci/run installs it as root on Debian)")
		}
	}
}

// toolPath returns where tool is, as requireTool requires it: a missing
// tool skips the test, or fails it in a privileged run, which must not
// pass having silently shrunk.
func toolPath(t *testing.T, tool string) string {
	t.Helper()
	requireTool(t, tool)
	path, err := exec.LookPath(tool)
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// packaged is what both packages must hold, from nfpm.yaml: destination →
// mode, and the configuration files.
func packaged(t *testing.T) (files map[string]string, conffiles []string) {
	files = map[string]string{}
	for _, f := range loadNfpm(t).Contents {
		switch {
		case f.Type == "dir":
			files[f.Dst] = "drwxr-xr-x"
		case f.Dst == "/usr/bin/gwlbproxy":
			files[f.Dst] = "-rwxr-xr-x"
		default:
			files[f.Dst] = "-rw-r--r--"
		}
		if f.Type == "config|noreplace" {
			conffiles = append(conffiles, f.Dst)
		}
	}
	slices.Sort(conffiles)
	return files, conffiles
}

// TestPackages: `make deb` and `make rpm` hold the binary (which runs), the
// unit, the policy, the flags file, the sysctl drop-in and the logrotate
// configuration, with their modes; the /etc files as configuration that
// an upgrade keeps; and the install scripts.
func TestPackages(t *testing.T) {
	requireTool(t, "make", "dpkg-deb", "rpm")
	deb, rpm := buildPackages(t)
	wantFiles, wantConf := packaged(t)
	version := strings.TrimSpace(run(t, filepath.Join(pkgBinDir, "gwlbproxy"), "version"))

	t.Run("deb", func(t *testing.T) {
		if got := run(t, "dpkg-deb", "-f", deb, "Package", "Architecture"); got !=
			"Package: gwlbproxy\nArchitecture: "+strings.TrimSpace(run(t, "go", "env", "GOARCH"))+"\n" {
			t.Errorf("control fields:\n%s", got)
		}
		got := map[string]string{}
		for _, line := range strings.Split(strings.TrimSpace(run(t, "dpkg-deb", "-c", deb)), "\n") {
			f := strings.Fields(line) // mode owner size date time path
			if len(f) < 6 || f[1] != "root/root" {
				t.Errorf("entry %q: want owner root/root", line)
				continue
			}
			if p := strings.TrimSuffix(strings.TrimPrefix(f[5], "."), "/"); wantFiles[p] != "" || !strings.HasPrefix(f[0], "d") {
				got[p] = f[0]
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(wantFiles) {
			t.Errorf("deb files\n got %v\nwant %v", got, wantFiles)
		}
		ctl := t.TempDir()
		run(t, "dpkg-deb", "-e", deb, ctl)
		if conf := strings.Fields(readFile(t, filepath.Join(ctl, "conffiles"))); !slices.Equal(conf, wantConf) {
			t.Errorf("deb conffiles %v, want %v", conf, wantConf)
		}
		for script, file := range map[string]string{"postinst": "postinstall", "prerm": "preremove", "postrm": "postremove"} {
			if readFile(t, filepath.Join(ctl, script)) != readFile(t, "scripts/"+file+".sh") {
				t.Errorf("deb %s is not scripts/%s.sh", script, file)
			}
		}
		// The files are the repository's, and the binary runs.
		tree := t.TempDir()
		run(t, "dpkg-deb", "-x", deb, tree)
		for dst, src := range map[string]string{
			"/usr/lib/systemd/system/gwlbproxy.service": "systemd/gwlbproxy.service",
			"/etc/gwlbproxy/policy.yaml":                "etc/policy.yaml",
			"/etc/gwlbproxy/flags":                      "etc/flags",
		} {
			if readFile(t, filepath.Join(tree, dst)) != readFile(t, src) {
				t.Errorf("deb %s differs from deploy/%s", dst, src)
			}
		}
		if got := strings.TrimSpace(run(t, filepath.Join(tree, "usr/bin/gwlbproxy"), "version")); got != version || !strings.HasPrefix(got, "gwlbproxy ") {
			t.Errorf("packaged gwlbproxy version: %q, want %q", got, version)
		}
	})

	t.Run("rpm", func(t *testing.T) {
		arch := map[string]string{"amd64": "x86_64", "arm64": "aarch64"}[strings.TrimSpace(run(t, "go", "env", "GOARCH"))]
		if got := run(t, "rpm", "-qp", "--qf", "%{NAME} %{ARCH} %{RELEASE}", rpm); got != "gwlbproxy "+arch+" 1" {
			t.Errorf("rpm name, arch, release: %q", got)
		}
		got := map[string]string{}
		for _, line := range strings.Split(strings.TrimSpace(run(t, "rpm", "-qp", "--qf", "[%{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILENAMES}\n]", rpm)), "\n") {
			f := strings.Fields(line)
			if len(f) != 3 || f[1] != "root:root" {
				t.Errorf("rpm file %q: want owner root:root", line)
				continue
			}
			got[f[2]] = f[0]
		}
		if fmt.Sprint(got) != fmt.Sprint(wantFiles) {
			t.Errorf("rpm files\n got %v\nwant %v", got, wantFiles)
		}
		if conf := strings.Fields(run(t, "rpm", "-qpc", rpm)); !slices.Equal(conf, wantConf) {
			t.Errorf("rpm configuration files %v, want %v", conf, wantConf)
		}
		if noreplace := run(t, "rpm", "-qp", "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]", rpm); strings.Count(noreplace, "cn") != len(wantConf) {
			t.Errorf("rpm file flags (want config, noreplace on %v):\n%s", wantConf, noreplace)
		}
		scripts := run(t, "rpm", "-qp", "--scripts", rpm)
		for _, file := range []string{"postinstall", "preremove", "postremove"} {
			if !strings.Contains(scripts, readFile(t, "scripts/"+file+".sh")) {
				t.Errorf("rpm scriptlets lack scripts/%s.sh:\n%s", file, scripts)
			}
		}
	})
}

// TestDebInstall installs the .deb on this machine (root), checks what it
// installed and the unit with systemd-analyze verify, then purges it and
// checks that nothing is left. The unit is never started. The package is
// purged even when the test fails, and the user it creates removed if it
// did not exist before.
func TestDebInstall(t *testing.T) {
	testenv.RequireRoot(t, "installing the .deb needs root")
	requireTool(t, "make", "dpkg", "dpkg-query", "systemd-analyze")
	if st, _ := exec.Command("dpkg-query", "-W", "-f", "${db:Status-Status}", "gwlbproxy").Output(); len(st) > 0 && string(st) != "not-installed" {
		testenv.RequirePrivileged(t, "a gwlbproxy package is already on this machine ("+string(st)+"); the test will not touch it")
	}
	userExisted := exec.Command("getent", "passwd", "gwlbproxy").Run() == nil
	groupExisted := exec.Command("getent", "group", "gwlbproxy").Run() == nil
	deb, _ := buildPackages(t)

	t.Cleanup(func() {
		if st, _ := exec.Command("dpkg-query", "-W", "-f", "${db:Status-Status}", "gwlbproxy").Output(); len(st) > 0 && string(st) != "not-installed" {
			if out, err := exec.Command("dpkg", "--purge", "gwlbproxy").CombinedOutput(); err != nil {
				t.Errorf("cleanup: dpkg --purge gwlbproxy: %v\n%s", err, out)
			}
		}
		if !userExisted && exec.Command("getent", "passwd", "gwlbproxy").Run() == nil {
			if out, err := exec.Command("userdel", "gwlbproxy").CombinedOutput(); err != nil {
				t.Errorf("cleanup: userdel gwlbproxy: %v\n%s", err, out)
			}
		}
		if !groupExisted && exec.Command("getent", "group", "gwlbproxy").Run() == nil {
			if out, err := exec.Command("groupdel", "gwlbproxy").CombinedOutput(); err != nil {
				t.Errorf("cleanup: groupdel gwlbproxy: %v\n%s", err, out)
			}
		}
	})

	run(t, "dpkg", "-i", deb)
	if st := run(t, "dpkg-query", "-W", "-f", "${db:Status-Status}", "gwlbproxy"); st != "installed" {
		t.Fatalf("after dpkg -i: status %q", st)
	}
	owned := strings.Fields(run(t, "dpkg-query", "-L", "gwlbproxy"))
	wantFiles, wantConf := packaged(t)
	for dst, mode := range wantFiles {
		fi, err := os.Stat(dst)
		if err != nil {
			t.Errorf("installed: %v", err)
		} else if fi.Mode().String() != mode {
			t.Errorf("installed %s: mode %s, want %s", dst, fi.Mode(), mode)
		}
		if !slices.Contains(owned, dst) {
			t.Errorf("dpkg does not list %s as the package's", dst)
		}
	}
	var conf []string
	for _, line := range strings.Split(strings.TrimSpace(run(t, "dpkg-query", "-W", "-f", "${Conffiles}", "gwlbproxy")), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			conf = append(conf, f[0])
		}
	}
	slices.Sort(conf)
	if !slices.Equal(conf, wantConf) {
		t.Errorf("conffiles %v, want %v", conf, wantConf)
	}

	if got, want := strings.TrimSpace(run(t, "/usr/bin/gwlbproxy", "version")),
		strings.TrimSpace(run(t, filepath.Join(pkgBinDir, "gwlbproxy"), "version")); got != want {
		t.Errorf("gwlbproxy version: %q, want %q", got, want)
	}
	pw := strings.Split(strings.TrimSpace(run(t, "getent", "passwd", "gwlbproxy")), ":")
	if len(pw) != 7 || pw[5] != "/var/lib/gwlbproxy" || !strings.HasSuffix(pw[6], "/nologin") {
		t.Errorf("user gwlbproxy: %q, want home /var/lib/gwlbproxy and no login shell", pw)
	}
	if uid := pw[2]; len(uid) > 3 {
		t.Errorf("user gwlbproxy has uid %s: want a system user", uid)
	}

	// The unit as systemd reads it; nothing enables or starts it.
	var out bytes.Buffer
	verify := exec.Command("systemd-analyze", "verify", "/usr/lib/systemd/system/gwlbproxy.service")
	verify.Stdout, verify.Stderr = &out, &out
	if err := verify.Run(); err != nil || strings.Contains(out.String(), "gwlbproxy") {
		t.Errorf("systemd-analyze verify gwlbproxy.service: %v\n%s", err, out.String())
	}
	if _, err := os.Lstat("/etc/systemd/system/multi-user.target.wants/gwlbproxy.service"); err == nil {
		t.Errorf("installing enabled the unit: it needs its flags first")
	}

	// What a run leaves behind (the CA, the access log) goes with a purge.
	for _, f := range []string{"/var/lib/gwlbproxy/ca.pem", "/var/log/gwlbproxy/access.log"} {
		if err := os.MkdirAll(filepath.Dir(f), 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f, []byte("left by a run\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	// Every file of the package goes, and the directories that are its alone.
	gone := []string{"/etc/gwlbproxy", "/var/lib/gwlbproxy", "/var/log/gwlbproxy"}
	for _, p := range owned {
		if fi, err := os.Lstat(p); err == nil && !fi.IsDir() {
			gone = append(gone, p)
		}
	}
	run(t, "dpkg", "--purge", "gwlbproxy")
	if st, _ := exec.Command("dpkg-query", "-W", "-f", "${db:Status-Status}", "gwlbproxy").Output(); len(st) > 0 && string(st) != "not-installed" {
		t.Errorf("after dpkg --purge: status %q", st)
	}
	for _, p := range gone {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("after dpkg --purge, %s is still there (%v)", p, err)
		}
	}
}
