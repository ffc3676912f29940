package policy

import (
	"strings"
	"testing"
)

// TestKeyTables: each table names a key once, and a key that is not in a
// table is refused with a message listing the table's keys, so that a row
// added to a table is both accepted and offered.
func TestKeyTables(t *testing.T) {
	for _, c := range []struct {
		where string
		names []string
		doc   string
	}{
		{"policy", policyKeys.names(), "policy:\n  nope: 1\n"},
		{"rule", ruleKeys.names(), rulesDoc("    - {name: r, action: deny, nope: 1}")},
	} {
		seen := map[string]bool{}
		for _, n := range c.names {
			if seen[n] {
				t.Errorf("%s: key %q has two rows", c.where, n)
			}
			seen[n] = true
		}
		_, err := Parse("p.yaml", []byte(c.doc))
		want := c.where + `: unknown key "nope" (want ` + strings.Join(c.names, ", ") + ")"
		if err == nil || !strings.HasSuffix(err.Error(), want) {
			t.Errorf("%s: error %v, want one ending %q", c.where, err, want)
		}
	}
}
