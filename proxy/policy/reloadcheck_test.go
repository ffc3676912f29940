package policy

import (
	"strings"
	"testing"
)

// The rule every flow a reload decides again applies to its destination
// check: a passed check holds and a failed one ends it under enforce, with
// no lookup; one never made is made (ending it on a mismatch, under
// enforce) or, where no lookup may wait, ends it under enforce and goes on
// unchecked, saying so, under audit.
func TestDestCheckAfterReload(t *testing.T) {
	enforce := mustParse(t, "policy: {default: allow}\n")
	audit := mustParse(t, "policy: {mode: audit, default: allow}\n")
	pass := func() bool { return false }
	fail := func() bool { return true }
	for _, tc := range []struct {
		name            string
		p               *Policy
		prior           string
		check           func() bool
		ends, unchecked bool
	}{
		{"passed holds", enforce, "ok", fail, false, false},
		{"failed ends", enforce, "mismatch", pass, true, false},
		{"failed, audited", audit, "mismatch", pass, false, false},
		{"made, passes", enforce, "", pass, false, false},
		{"made, fails", enforce, "", fail, true, false},
		{"made, fails, audited", audit, "", fail, false, false},
		{"no lookup may wait", enforce, "", nil, true, false},
		{"no lookup may wait, audited", audit, "", nil, false, true},
	} {
		why, unchecked := tc.p.DestCheckAfterReload(tc.prior, tc.check)
		if (why != "") != tc.ends || unchecked != tc.unchecked {
			t.Errorf("%s: why %q, unchecked %v; want ends %v, unchecked %v", tc.name, why, unchecked, tc.ends, tc.unchecked)
		}
	}
}

// A flow whose pass rested on evidence the reload withdrew (an observed DNS
// answer it forgot) is checked again as one never checked is, with its own
// reasons: its "ok" no longer holds.
func TestDestCheckWithdrawn(t *testing.T) {
	enforce := mustParse(t, "policy: {default: allow}\n")
	audit := mustParse(t, "policy: {mode: audit, default: allow}\n")
	pass := func() bool { return false }
	fail := func() bool { return true }
	for _, tc := range []struct {
		name            string
		p               *Policy
		check           func() bool
		ends, unchecked bool
		why             string
	}{
		{"checked, passes", enforce, pass, false, false, ""},
		{"checked, fails", enforce, fail, true, false, "passed on a DNS answer the reload forgot"},
		{"checked, fails, audited", audit, fail, false, false, ""},
		{"no lookup may wait", enforce, nil, true, false, "was forgotten by the reload"},
		{"no lookup may wait, audited", audit, nil, false, true, ""},
	} {
		why, unchecked := tc.p.DestCheckWithdrawn(tc.check)
		if (why != "") != tc.ends || unchecked != tc.unchecked || !strings.Contains(why, tc.why) {
			t.Errorf("%s: why %q, unchecked %v; want ends %v (%q), unchecked %v", tc.name, why, unchecked, tc.ends, tc.why, tc.unchecked)
		}
	}
}
