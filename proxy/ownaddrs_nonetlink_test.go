package proxy

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testenv"
)

// noNetlinkHelperEnv runs TestOwnAddrsNoNetlinkHelper as the helper
// process of TestOwnAddrsWithoutNetlink; its value is the mode: proc (the
// /proc fallback is readable) or none (it is not either).
const noNetlinkHelperEnv = "GWLBPROXY_NONETLINK_HELPER"

// TestOwnAddrsNoNetlinkHelper is not a test: TestOwnAddrsWithoutNetlink
// runs it in a network namespace of its own, whose addresses are
// followedAddrs. It refuses itself netlink sockets, starts a proxy and
// checks what it refuses.
func TestOwnAddrsNoNetlinkHelper(t *testing.T) {
	mode := os.Getenv(noNetlinkHelperEnv)
	if mode == "" {
		t.Skip("the helper process of TestOwnAddrsWithoutNetlink")
	}
	testenv.RefuseNetlink(t)
	if mode == "none" {
		procNetDir = t.TempDir() // no fib_trie there
	}
	p := New(Config{})
	defer p.Close()
	if known := p.OwnAddrsKnown(); known != (mode == "proc") {
		t.Errorf("%s: OwnAddrsKnown %v, want %v (the health check reads it)", mode, known, mode == "proc")
	}
	other := netip.MustParseAddr("198.18.2.3") // not the host's
	for _, a := range followedAddrs {
		reason := p.forbidden(a)
		switch {
		case mode == "proc" && !strings.Contains(reason, "appliance itself"):
			t.Errorf("proc: the host's address %s is not refused as the appliance's: %q", a, reason)
		case mode == "none" && !strings.Contains(reason, "could not be read"):
			t.Errorf("none: the host's address %s is not refused for addresses unknown: %q", a, reason)
		}
	}
	switch reason := p.forbidden(other); {
	case mode == "proc" && reason != "":
		t.Errorf("proc: %s, not the host's, is refused: %q", other, reason)
	case mode == "none" && reason == "":
		t.Errorf("none: %s is allowed although the host's addresses are not known", other)
	}
}

// TestOwnAddrsWithoutNetlink: where netlink sockets are refused (a
// sandbox, a seccomp profile), net.InterfaceAddrs fails too; the host's
// addresses are then read from /proc and refused as destinations. Where
// they cannot be read at all, every destination is refused rather than
// every one of the appliance's own addresses allowed.
func TestOwnAddrsWithoutNetlink(t *testing.T) {
	if runtime.GOARCH != "amd64" && runtime.GOARCH != "arm64" {
		t.Skip("the seccomp filter reads a little-endian 64-bit system call's arguments")
	}
	testenv.RequireRoot(t, "the host's addresses are set in a network namespace: that needs root")
	if out, err := exec.Command("ip", "netns", "list").CombinedOutput(); err != nil {
		testenv.RequirePrivileged(t, fmt.Sprintf("`ip netns list` fails (iproute2 needed): %v %s", err, bytes.TrimSpace(out)))
	}
	ns := fmt.Sprintf("gwlbt-nonl-%08x", rand.Uint32())
	runIP(t, "netns", "add", ns)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("deleting namespace %s: %v %s", ns, err, out)
		}
	})
	runIP(t, "-n", ns, "link", "set", "lo", "up")
	runIP(t, "-n", ns, "addr", "add", followedAddrs[0].String()+"/32", "dev", "lo")
	runIP(t, "-n", ns, "addr", "add", followedAddrs[1].String()+"/128", "dev", "lo", "nodad")
	for _, mode := range []string{"proc", "none"} {
		t.Run(mode, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, os.Args[0], "-test.run", "^TestOwnAddrsNoNetlinkHelper$", "-test.count", "1", "-test.v")
			cmd.Env = append(os.Environ(), noNetlinkHelperEnv+"="+mode)
			out, err := cmd.CombinedOutput()
			if err != nil || !bytes.Contains(out, []byte("--- PASS: TestOwnAddrsNoNetlinkHelper")) {
				t.Fatalf("helper (%v):\n%s", err, out)
			}
		})
	}
}
