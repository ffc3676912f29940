package deploy

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// packagePin runs the user data's package step (from `pkg=` to `dnf install
// -y "$pkg"`), with its `set -euo pipefail` and ERR trap, against fake curl,
// aws, dnf and cfn-signal and the real sha256sum. The rpm it fetched is
// installed only when its digest is PackageSha256; any other file (the
// object rewritten after the stack was made, a hostile https host) fails
// the boot: no install, and the stack is signalled failure.
func (c *templateCheck) packagePin(t *testing.T, script string) {
	header, _, ok := strings.Cut(script, "\n\n")
	if !ok || !strings.Contains(header, "trap 'signal 1' ERR") {
		t.Fatalf("user data header:\n%s", header)
	}
	const install = "dnf install -y \"$pkg\"\n"
	start, end := strings.Index(script, "pkg=/root/gwlbproxy.rpm\n"), strings.Index(script, install)
	if start < 0 || end < start {
		t.Fatalf("user data lacks pkg=/root/gwlbproxy.rpm ... %s", install)
	}
	step := script[start : end+len(install)]
	sum := c.vals["PackageSha256"]
	if strings.Count(step, sum) != 1 {
		t.Fatalf("the package step names PackageSha256 %s %d times, want once:\n%s", sum, strings.Count(step, sum), step)
	}

	// run fetches content as the package, with want as the pinned digest,
	// and reports the packages dnf was asked to install and the signals.
	run := func(t *testing.T, content, want string) (installed, signals []string, err error) {
		dir := t.TempDir()
		fake := func(name, body string) {
			if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/bash\n"+body+"\n"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		log, src := filepath.Join(dir, "log"), filepath.Join(dir, "fetched")
		if err := os.WriteFile(src, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		// curl -fsSL --retry 5 -o FILE URL; aws s3 cp URL FILE.
		fake("curl", `while [ "$1" != -o ]; do shift; done; cp `+src+` "$2"`)
		fake("aws", `cp `+src+` "$4"`)
		fake("dnf", `echo "dnf $*" >> `+log)
		fake("cfn-signal", `echo "signal $*" >> `+log)
		pkg := filepath.Join(dir, "gwlbproxy.rpm")
		body := strings.ReplaceAll(header, "/opt/aws/bin/cfn-signal", filepath.Join(dir, "cfn-signal")) + "\n\n" +
			strings.ReplaceAll(strings.ReplaceAll(step, "/root/gwlbproxy.rpm", pkg), sum, want)
		cmd := exec.Command("bash", "-c", body)
		cmd.Env = append(os.Environ(), "PATH="+dir+":"+os.Getenv("PATH"))
		out, err := cmd.CombinedOutput()
		t.Logf("package step: %v\n%s", err, out)
		data, rerr := os.ReadFile(log)
		if rerr != nil && !os.IsNotExist(rerr) {
			t.Fatal(rerr)
		}
		for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			if s, ok := strings.CutPrefix(l, "dnf install -y "); ok {
				installed = append(installed, s)
			} else if s, ok := strings.CutPrefix(l, "signal "); ok {
				signals = append(signals, strings.Fields(s)[1])
			}
		}
		if len(installed) > 0 && installed[0] != pkg {
			t.Errorf("dnf installs %v, want %s", installed, pkg)
		}
		return installed, signals, err
	}

	const built = "the rpm the stack was made for\n"
	digest := sha256.Sum256([]byte(built))
	t.Run("digest matches", func(t *testing.T) {
		installed, signals, err := run(t, built, hex.EncodeToString(digest[:]))
		if err != nil || len(installed) != 1 || len(signals) != 0 {
			t.Errorf("exit %v, installed %v, signals %v: want the package installed, no failure", err, installed, signals)
		}
	})
	t.Run("digest differs", func(t *testing.T) {
		installed, signals, err := run(t, "a package put in its place later\n", hex.EncodeToString(digest[:]))
		if err == nil || len(installed) != 0 || strings.Join(signals, " ") != "1" {
			t.Errorf("exit %v, installed %v, signals %v: want no install, the boot failed and signal 1", err, installed, signals)
		}
	})
}
