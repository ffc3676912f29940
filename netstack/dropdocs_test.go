package netstack

import (
	"os"
	"strings"
	"testing"
)

// TestDropReasonsDocumented: every drop reason /stats and /metrics show is
// named in docs/configuration.md, which says what each one means: the
// reasons added for packets the stack dropped uncounted
// (inner_bad_destination, tcp_setups_full, udp_create_failed) are not left
// for an operator to guess.
func TestDropReasonsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	for r := DropReason(1); r < dropReasons; r++ {
		if !strings.Contains(string(doc), "`"+r.String()+"`") {
			t.Errorf("drop reason %s is not in docs/configuration.md", r)
		}
	}
}
