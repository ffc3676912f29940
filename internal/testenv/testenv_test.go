package testenv

import (
	"fmt"
	"strings"
	"testing"
)

// recorder stands in for a test: it notes how RequirePrivileged ended it.
type recorder struct {
	testing.TB
	fatal, skip string
}

func (r *recorder) Helper()                        {}
func (r *recorder) Fatalf(format string, a ...any) { r.fatal = fmt.Sprintf(format, a...) }
func (r *recorder) Skipf(format string, a ...any)  { r.skip = fmt.Sprintf(format, a...) }

func TestRequirePrivileged(t *testing.T) {
	for _, tc := range []struct {
		env        string
		privileged bool
		fails      bool
	}{
		{"", false, false},
		{"0", false, false},
		{"false", false, false},
		{"1", true, true},
		{"true", true, true},
		{"yes", false, true}, // not a boolean: no silent skip
	} {
		t.Run(fmt.Sprintf("%s=%q", PrivilegedEnv, tc.env), func(t *testing.T) {
			t.Setenv(PrivilegedEnv, tc.env)
			if got := Privileged(); got != tc.privileged {
				t.Errorf("Privileged() = %v, want %v", got, tc.privileged)
			}
			r := &recorder{TB: t}
			RequirePrivileged(r, "needs root")
			if ended := r.fatal + r.skip; !strings.Contains(ended, "needs root") || r.fatal != "" && r.skip != "" {
				t.Fatalf("failed with %q, skipped with %q: want exactly one, naming the reason", r.fatal, r.skip)
			}
			if failed := r.fatal != ""; failed != tc.fails {
				t.Errorf("failed %v (%q), want %v; skipped with %q", failed, r.fatal, tc.fails, r.skip)
			}
		})
	}
}
