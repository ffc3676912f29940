package deploy

import (
	"os/exec"
	"regexp"
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
