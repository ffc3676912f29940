package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// startGate runs the end of the user data (from `systemctl daemon-reload`
// to the final signal), with its `set -euo pipefail` and ERR trap, against
// fake systemctl, curl, sleep and cfn-signal. A first start that fails
// (Type=notify: the appliance exited before READY=1, as when Secrets
// Manager is not reachable yet at boot) must not signal failure while the
// unit's restarts bring the health check up; the health check is the gate,
// and it waits minutes before the stack is told the instance failed.
func (c *templateCheck) startGate(t *testing.T, script string) {
	header, _, ok := strings.Cut(script, "\n\n")
	if !ok || !strings.Contains(header, "set -euo pipefail") || !strings.Contains(header, "trap 'signal 1' ERR") {
		t.Fatalf("user data header:\n%s", header)
	}
	i := strings.Index(script, "systemctl daemon-reload\n")
	if i < 0 {
		t.Fatal("user data lacks systemctl daemon-reload")
	}
	if !strings.Contains(script, "systemctl enable --now gwlbproxy.service || true\n") {
		t.Error("user data: `systemctl enable --now gwlbproxy.service` without `|| true`: a first start that fails signals the stack's failure")
	}
	tail := script[i:]

	run := func(t *testing.T, healthyAfter int) (signals []string, slept time.Duration, out []byte) {
		dir := t.TempDir()
		fake := func(name, body string) {
			if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/bash\n"+body+"\n"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		log := filepath.Join(dir, "log")
		// enable fails as a Type=notify start does when the process exits
		// before READY=1.
		fake("systemctl", `[ "$1" = enable ] && exit 1; exit 0`)
		// The health check answers from its healthyAfter-th attempt on
		// (never when 0).
		fake("curl", `n=$(( $(cat `+dir+`/curls 2>/dev/null || echo 0) + 1 )); echo $n > `+dir+`/curls
[ `+strconv.Itoa(healthyAfter)+` -gt 0 ] && [ $n -ge `+strconv.Itoa(healthyAfter)+` ]`)
		fake("sleep", `echo "sleep $1" >> `+log)
		fake("cfn-signal", `echo "signal $*" >> `+log)
		body := strings.ReplaceAll(header, "/opt/aws/bin/cfn-signal", filepath.Join(dir, "cfn-signal")) + "\n\n" + tail
		cmd := exec.Command("bash", "-c", body)
		cmd.Env = append(os.Environ(), "PATH="+dir+":"+os.Getenv("PATH"))
		out, _ = cmd.CombinedOutput()
		data, err := os.ReadFile(log)
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			if s, ok := strings.CutPrefix(l, "sleep "); ok {
				n, err := strconv.ParseFloat(s, 64)
				if err != nil {
					t.Fatalf("sleep %q", s)
				}
				slept += time.Duration(n * float64(time.Second))
			} else if s, ok := strings.CutPrefix(l, "signal "); ok {
				signals = append(signals, strings.Fields(s)[1])
			}
		}
		return signals, slept, out
	}

	t.Run("first start fails, restart serves", func(t *testing.T) {
		if signals, _, out := run(t, 3); strings.Join(signals, " ") != "0" {
			t.Errorf("signals %v, want [0]: the unit serves after its restart\n%s", signals, out)
		}
	})
	t.Run("never healthy", func(t *testing.T) {
		signals, slept, out := run(t, 0)
		if strings.Join(signals, " ") != "1" {
			t.Errorf("signals %v, want [1]\n%s", signals, out)
		}
		// Restarts every RestartSec (2 s) for as long as it fails: give
		// a boot-time failure (credentials, instance metadata, Secrets
		// Manager) minutes to clear.
		if slept < 4*time.Minute {
			t.Errorf("the health check gives up after %s, want at least 4 minutes", slept)
		}
	})
}
