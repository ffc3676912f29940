package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// TestPolicyCheckBinary runs the real binary's `policy check` as the
// unit's ExecReload does: exit 0 and one line naming the policy for a
// valid file; non-zero and the parse error, with file and line, for a bad
// one; non-zero for a file without `default` (what a file cut short
// looks like) and for a missing one.
func TestPolicyCheckBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "gwlbproxy")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	good := "policy:\n  mode: enforce\n  default: deny\n  rules:\n" +
		"    - {name: corp, domains: [\"*.corp.example\"], action: bump}\n" +
		"    - {name: web, ports: [443], action: splice}\n"
	tests := []struct {
		name, doc string
		ok        bool
		want      string // in stdout when ok, in stderr otherwise
	}{
		{"good", good, true,
			"good.yaml: ok: mode enforce, default deny, 2 rules, sha256 " + policy.FileHash([]byte(good)) + ", bumps TLS (needs the CA)\n"},
		{"audit", "policy: {mode: audit, default: allow}\n", true, "audit.yaml: ok: mode audit, default allow, 0 rules, sha256 "},
		{"bad", "policy:\n  default: deny\n  rules:\n    - {name: x, dest_cidrs: [10.0.0.0/33], action: deny}\n", false,
			`bad.yaml:4: rule "x": dest_cidrs: invalid CIDR "10.0.0.0/33"`},
		{"cut", "policy:\n  mode: enforce\n", false, "cut.yaml: no `default`"},
		{"second-document", "policy: {default: deny}\n---\npolicy: {default: allow}\n", false, "second-document.yaml:2: a second YAML document"},
	}
	for _, tc := range tests {
		file := filepath.Join(dir, tc.name+".yaml")
		if err := os.WriteFile(file, []byte(tc.doc), 0o644); err != nil {
			t.Fatal(err)
		}
		var stdout, stderr bytes.Buffer
		cmd := exec.Command(bin, "policy", "check", file)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		t.Logf("%s: exit %v, stdout %q, stderr %q", tc.name, err, stdout.String(), stderr.String())
		if tc.ok {
			if err != nil || !strings.HasPrefix(stdout.String(), file+": ok") || !strings.Contains(stdout.String(), strings.TrimPrefix(tc.want, tc.name)) ||
				strings.Count(stdout.String(), "\n") != 1 {
				t.Errorf("%s: exit %v, stdout %q, want one line %q", tc.name, err, stdout.String(), tc.want)
			}
			continue
		}
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() == 0 || !strings.Contains(stderr.String(), tc.want) || stdout.Len() != 0 {
			t.Errorf("%s: exit %v, stderr %q, want a failure saying %q", tc.name, err, stderr.String(), tc.want)
		}
	}
	if err := exec.Command(bin, "policy", "check", filepath.Join(dir, "missing.yaml")).Run(); err == nil {
		t.Error("a missing file passed the check")
	}
}

// TestConfigurationAllowEverythingAdvice: the file configuration.md tells
// operators to write to allow everything passes `policy check`, which the
// unit's ExecReload runs: advice of `policy: {}` (no default) made
// `systemctl reload` fail on the advised file.
func TestConfigurationAllowEverythingAdvice(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "configuration.md"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("\\(write `(policy:[^`]*)`\\s+to allow everything").FindSubmatch(doc)
	if m == nil {
		t.Fatal("configuration.md no longer says which file allows everything")
	}
	file := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(file, append(m[1], '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := runPolicy([]string{"check", file}, &out, &bytes.Buffer{}); err != nil {
		t.Fatalf("the advised %q: %v", m[1], err)
	}
	if !strings.Contains(out.String(), "default allow") {
		t.Errorf("the advised %q: %s, want default allow", m[1], out.String())
	}
}
