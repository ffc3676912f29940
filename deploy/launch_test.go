package deploy

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestDocsLaunchSecondRelease runs docs/deploy.md's "Launching it" commands
// as written, with the real `make` (its packages in a scratch bin/ that
// already holds an earlier build's rpm, as bin/ does at the second release)
// and an `aws` that keeps its arguments: the package uploaded and the
// PackageSha256 given are this build's, each one argument. The commands
// globbed bin/gwlbproxy-*-1.x86_64.rpm, which then named both packages:
// `aws s3 cp` got two sources (and refused them), and the unquoted sum split
// into two arguments (review r3s29 F4).
func TestDocsLaunchSecondRelease(t *testing.T) {
	requireTool(t, "make", "sha256sum", "bash")
	realMake, err := exec.LookPath("make")
	if err != nil {
		t.Fatal(err)
	}
	root := repoRoot(t)
	doc := readFile(t, "../docs/deploy.md")
	start := strings.Index(doc, "\n### Launching it\n")
	if start < 0 {
		t.Fatal("docs/deploy.md has no section \"Launching it\"")
	}
	block := doc[start:]
	open := strings.Index(block, "```sh\n")
	if open < 0 {
		t.Fatal("docs/deploy.md, \"Launching it\": no sh block")
	}
	block = block[open+len("```sh\n"):]
	block = block[:strings.Index(block, "```")]

	dir := t.TempDir()
	stubs, bin, calls := filepath.Join(dir, "stubs"), filepath.Join(dir, "bin"), filepath.Join(dir, "aws-calls")
	for _, d := range []string{stubs, bin} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	old := filepath.Join(bin, "gwlbproxy-0.0.0+git.0000000-1.x86_64.rpm")
	if err := os.WriteFile(old, []byte("the previous release"), 0o644); err != nil {
		t.Fatal(err)
	}
	stub := func(name, body string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(stubs, name), []byte("#!/bin/bash\n"+body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The doc's make, run in the module with its packages in the scratch
	// bin/ the doc's relative paths name (the working directory's).
	stub("make", "GOARCH=amd64 exec "+realMake+" -C "+root+" BIN="+bin+` "$@"`+"\n")
	// aws: each call's arguments, one a line, then an empty line.
	stub("aws", `printf '%s\n' "$@" "" >>`+calls+"\n")
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", block)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PATH="+stubs+":"+os.Getenv("PATH"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("the commands: %v\n%s", err, out)
	}

	rpms, err := filepath.Glob(filepath.Join(bin, "gwlbproxy-*-1.x86_64.rpm"))
	if err != nil || len(rpms) != 2 {
		t.Fatalf("bin/ holds %v (%v), want the earlier rpm and this build's", rpms, err)
	}
	built := rpms[slices.IndexFunc(rpms, func(p string) bool { return p != old })]
	data, err := os.ReadFile(built)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	raw, err := os.ReadFile(calls)
	if err != nil {
		t.Fatal(err)
	}
	var cp, deploy []string
	for _, call := range strings.Split(strings.TrimSuffix(string(raw), "\n\n"), "\n\n") {
		args := strings.Split(call, "\n")
		switch {
		case len(args) >= 2 && args[0] == "s3" && args[1] == "cp":
			cp = args
		case len(args) >= 2 && args[0] == "cloudformation" && args[1] == "deploy":
			deploy = args
		}
	}
	if len(cp) != 4 || cp[2] != built {
		t.Errorf("aws got %q, want s3 cp %s and the destination", cp, built)
	}
	if want := "PackageSha256=" + hex.EncodeToString(sum[:]); !slices.Contains(deploy, want) {
		t.Errorf("aws cloudformation deploy got %q, want the argument %s", deploy, want)
	}
}
