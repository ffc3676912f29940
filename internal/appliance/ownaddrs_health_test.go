package appliance

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testenv"
)

// ownAddrsUnknownHelperEnv runs TestHealthOwnAddrsUnknownHelper as the
// helper process of TestHealthBrokenOwnAddrsUnknown.
const ownAddrsUnknownHelperEnv = "GWLBPROXY_OWNADDRS_UNKNOWN_HELPER"

// TestHealthOwnAddrsUnknownHelper is not a test: TestHealthBrokenOwnAddrsUnknown
// runs it with /proc/self/net hidden. It refuses itself netlink sockets,
// so the appliance can read its own addresses neither way, and checks the
// health check and /stats.
func TestHealthOwnAddrsUnknownHelper(t *testing.T) {
	if os.Getenv(ownAddrsUnknownHelperEnv) == "" {
		t.Skip("the helper process of TestHealthBrokenOwnAddrsUnknown")
	}
	if _, err := os.Stat("/proc/self/net/fib_trie"); err == nil {
		t.Fatal("/proc/self/net/fib_trie is readable: the helper runs without its mount")
	}
	testenv.RefuseNetlink(t)
	r := newRig(t, nil, nil)
	body := waitHealth(t, r, 503, "own addresses could not be read")
	t.Logf("health: %s", strings.TrimSpace(body))
	if st := r.stats(); st.OwnAddrsKnown || len(st.Broken) != 1 {
		t.Errorf("/stats own_addresses_known %v, broken %q; want false and the one reason", st.OwnAddrsKnown, st.Broken)
	}
	_, metrics := httpGet(t, "http://"+r.app.adminLn.Addr().String()+"/metrics")
	if !strings.Contains(metrics, "\ngwlbproxy_broken 1\n") || !strings.Contains(metrics, "\ngwlbproxy_own_addresses_known 0\n") {
		t.Error("/metrics lacks gwlbproxy_broken 1 or gwlbproxy_own_addresses_known 0")
	}
}

// TestHealthBrokenOwnAddrsUnknown: where the appliance's own addresses can
// be read neither through netlink (refused, as by a seccomp profile) nor
// from /proc/self/net (absent, as in a sandbox that does not serve
// fib_trie), every flow is refused; the health check fails and says why,
// and /stats and /metrics show it, so that the GWLB sends flows to another
// target. It answered "serving" while refusing every flow. Where they are
// read, the appliance serves and /stats says so.
func TestHealthBrokenOwnAddrsUnknown(t *testing.T) {
	r := newRig(t, nil, nil)
	waitHealth(t, r, 200, "serving")
	if st := r.stats(); !st.OwnAddrsKnown {
		t.Error("/stats own_addresses_known false where they are read")
	}

	if runtime.GOARCH != "amd64" && runtime.GOARCH != "arm64" {
		t.Skip("the seccomp filter reads a little-endian 64-bit system call's arguments")
	}
	testenv.RequireRoot(t, "/proc/self/net is hidden in a mount namespace of the helper's: that needs root")
	if _, err := exec.LookPath("unshare"); err != nil {
		testenv.RequirePrivileged(t, "unshare (util-linux) is needed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// The helper's own /proc/<pid>/net is covered by an empty directory in
	// a mount namespace of its own: exec keeps the pid, so it is the
	// helper's /proc/self/net.
	cmd := exec.CommandContext(ctx, "unshare", "-m", "--propagation", "private", "sh", "-c",
		`mount --bind "$1" /proc/$$/net && exec "$2" -test.run '^TestHealthOwnAddrsUnknownHelper$' -test.count 1 -test.v`,
		"sh", t.TempDir(), os.Args[0])
	cmd.Env = append(os.Environ(), ownAddrsUnknownHelperEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("--- PASS: TestHealthOwnAddrsUnknownHelper")) {
		t.Fatalf("helper (%v):\n%s", err, out)
	}
	t.Logf("helper:\n%s", out)
}
