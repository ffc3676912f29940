// Package testenv decides what a test does when this host cannot run its
// privileged part (network namespaces, TUN, raw sockets, ICMP sockets,
// port 53): skip, saying why, or, where the privileged tests must run,
// fail. CI sets GWLBPROXY_PRIVILEGED_TESTS=1 when it runs as root, so that
// the suite cannot pass having silently shrunk.
package testenv

import (
	"os"
	"strconv"
	"testing"
)

// PrivilegedEnv is the environment variable that makes the privileged tests
// mandatory: 1 (or true) fails a test that cannot run its privileged part.
const PrivilegedEnv = "GWLBPROXY_PRIVILEGED_TESTS"

// Privileged reports whether the privileged tests must run here
// (GWLBPROXY_PRIVILEGED_TESTS=1).
func Privileged() bool {
	v, err := strconv.ParseBool(os.Getenv(PrivilegedEnv))
	return err == nil && v
}

// RequirePrivileged ends a test whose privileged part cannot run on this
// host; why says what is missing (root, a capability, a sysctl, a tool).
// The test skips, or fails when Privileged. A value of
// GWLBPROXY_PRIVILEGED_TESTS that is not a boolean fails it too, rather
// than being taken for "skip".
func RequirePrivileged(t testing.TB, why string) {
	t.Helper()
	v := os.Getenv(PrivilegedEnv)
	if _, err := strconv.ParseBool(v); v != "" && err != nil {
		t.Fatalf("%s; and %s=%q is neither 1 nor 0", why, PrivilegedEnv, v)
		return
	}
	if Privileged() {
		t.Fatalf("%s (%s=%s: privileged tests must run here, not skip)", why, PrivilegedEnv, v)
		return
	}
	t.Skipf("%s (skipped; with %s=1 this fails)", why, PrivilegedEnv)
}

// RequireRoot is RequirePrivileged unless the test runs as root.
func RequireRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		RequirePrivileged(t, why)
	}
}
