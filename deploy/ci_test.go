package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestCIRunPrefersUsrLocalGo: .ci/run puts the README's Go, in
// /usr/local/go/bin, before the PATH it was given, so that a distribution's
// older go in /usr/bin (Debian's golang-go is 1.19, too old to fetch the
// toolchain go.mod names) cannot win over it.
func TestCIRunPrefersUsrLocalGo(t *testing.T) {
	line := regexp.MustCompile(`(?m)^export PATH=.*$`).FindString(readFile(t, "../.ci/run"))
	if line == "" {
		t.Fatal(".ci/run sets no PATH")
	}
	out, err := exec.Command("bash", "-c", `PATH=/usr/bin:/bin; `+line+`; printf %s "$PATH"`).Output()
	if err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	if !strings.HasPrefix(string(out), "/usr/local/go/bin:") {
		t.Errorf("%s: PATH %s, want /usr/local/go/bin first", line, out)
	}
}

// TestBenchcmpLayoutAndResults runs .ci/benchcmp's callgrind and benchmem
// steps on stand-in test binaries and valgrind: the base side runs the
// head's package and pattern (the current layout) unless BASE_LAYOUT=ba6b547
// asks for the layout before issue 8, and a run whose log has no benchmark
// result line fails the script. Before, the base always ran ba6b547's
// BenchmarkRecordWriter in ./proxy, which a current base does not have: its
// binary printed PASS alone, which was all the script checked, and the
// summary gave a ratio of two start-ups (review r3s29 F3).
func TestBenchcmpLayoutAndResults(t *testing.T) {
	script, err := filepath.Abs("../.ci/benchcmp")
	if err != nil {
		t.Fatal(err)
	}
	const result = "printf 'BenchmarkWriter/discard/parallel \\t 40000\\t 1000 ns/op\\n'\n"
	for _, tc := range []struct {
		name, layout, steps string
		baseResult          bool
		wantDir, wantPat    string // where and what the base ran; "" if it fails
	}{
		{"current", "", "callgrind benchmem", true, "proxy/records", "^BenchmarkWriter$/^discard$/^parallel$"},
		{"ba6b547", "ba6b547", "callgrind benchmem", true, "proxy", "^BenchmarkRecordWriter$/^discard$/^parallel$"},
		{"callgrind without a result", "", "callgrind", false, "", ""},
		{"benchmem without a result", "", "benchmem", false, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			out, bin, logf := filepath.Join(dir, "out"), filepath.Join(dir, "bin"), filepath.Join(dir, "ran")
			for _, d := range []string{out, bin, "base/proxy/records", "head/proxy/records"} {
				if !filepath.IsAbs(d) {
					d = filepath.Join(dir, d)
				}
				if err := os.MkdirAll(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			write := func(path, body string) {
				t.Helper()
				if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			// valgrind: writes the callgrind file's totals, runs the rest.
			write(filepath.Join(bin, "valgrind"), `for a; do case $a in --callgrind-out-file=*) f=${a#*=};; --*) ;; *) break;; esac; shift; done
echo 'totals: 1000' >"$f"
exec "$@"
`)
			for _, side := range []string{"base", "head"} {
				body := "echo \"" + side + " ${PWD#" + dir + "/" + side + "/} $*\" >>" + logf + "\n"
				if side == "head" || tc.baseResult {
					body += result
				}
				write(filepath.Join(out, side+"-records.test"), body+"echo PASS\n")
			}
			cmd := exec.Command("bash", script)
			cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "OUT="+out, "BASE="+filepath.Join(dir, "base"),
				"HEAD="+filepath.Join(dir, "head"), "STEPS="+tc.steps, "ONLY=writer-discard-par", "BASE_LAYOUT="+tc.layout)
			got, err := cmd.CombinedOutput()
			if tc.wantDir == "" {
				if err == nil || !strings.Contains(string(got), "no benchmark result line") {
					t.Fatalf("a base run with no result line: %v, want a failure saying so; output:\n%s", err, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("%v; output:\n%s", err, got)
			}
			ran, err := os.ReadFile(logf)
			if err != nil {
				t.Fatal(err)
			}
			cgRuns, memRuns := 0, 0
			for _, line := range strings.Split(strings.TrimSpace(string(ran)), "\n") {
				if f := strings.Fields(line); f[0] == "base" {
					if slices.Contains(f, "-test.benchmem") {
						memRuns++
					} else {
						cgRuns++
					}
					if f[1] != tc.wantDir || !slices.Contains(f, tc.wantPat) {
						t.Errorf("the base ran %q, want in %s with -test.bench %s", line, tc.wantDir, tc.wantPat)
					}
				}
			}
			if cgRuns == 0 || memRuns != 1 {
				t.Errorf("the base ran %d times under callgrind and %d for allocations, want some and 1:\n%s", cgRuns, memRuns, ran)
			}
		})
	}
}
