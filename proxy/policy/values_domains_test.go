package policy

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// TestDomainsDeduplicated: a domains list keeps each name and each
// wildcard once, in the order first given, however it was spelled (case, a
// trailing dot); a name and the wildcard of the same suffix are two
// entries.
func TestDomainsDeduplicated(t *testing.T) {
	p, err := Parse("p.yaml", []byte(`policy:
  default: allow
  rules:
    - name: r
      domains: [a.example, "*.a.example", A.Example., b.example, "*.A.example.", a.example]
      action: deny
`))
	if err != nil {
		t.Fatal(err)
	}
	d := p.rules[0].domains
	if want := []string{"a.example", "b.example"}; !slices.Equal(d.exact, want) {
		t.Errorf("exact names %q, want %q", d.exact, want)
	}
	if want := []string{"a.example"}; !slices.Equal(d.wild, want) {
		t.Errorf("wildcard suffixes %q, want %q", d.wild, want)
	}
}

// BenchmarkParseBlocklist parses one deny rule of 100,000 distinct names,
// a hosts-style blocklist: the duplicate check made it quadratic (over a
// minute for 150,000 names), the appliance's start waiting on it.
func BenchmarkParseBlocklist(b *testing.B) {
	var sb strings.Builder
	sb.WriteString("policy:\n  default: allow\n  rules:\n    - name: blocklist\n      action: deny\n      domains:\n")
	for i := range 100_000 {
		fmt.Fprintf(&sb, "        - ads%d.tracker%d.example\n", i, i%97)
	}
	data := []byte(sb.String())
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := Parse("blocklist.yaml", data); err != nil {
			b.Fatal(err)
		}
	}
}
