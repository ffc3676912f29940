package cliflag

import (
	"bytes"
	"errors"
	"flag"
	"strings"
	"testing"
)

// TestParse: an error is returned and nothing printed; -h and -help print
// the usage to the flag set's output and return flag.ErrHelp; a good
// command line parses as fs.Parse would.
func TestParse(t *testing.T) {
	newSet := func() (*flag.FlagSet, *bytes.Buffer, *int) {
		var out bytes.Buffer
		fs := flag.NewFlagSet("cmd", flag.ContinueOnError)
		fs.SetOutput(&out)
		n := fs.Int("n", 1, "a number")
		return fs, &out, n
	}
	for _, args := range [][]string{{"-n", "x"}, {"-bogus"}, {"-n"}} {
		fs, out, _ := newSet()
		if err := Parse(fs, args); err == nil || errors.Is(err, flag.ErrHelp) {
			t.Errorf("%q: error %v, want a parse error", args, err)
		}
		if out.Len() != 0 {
			t.Errorf("%q: printed %q, want nothing", args, out)
		}
	}
	for _, h := range []string{"-h", "-help"} {
		fs, out, _ := newSet()
		if err := Parse(fs, []string{h}); !errors.Is(err, flag.ErrHelp) {
			t.Errorf("%s: error %v, want flag.ErrHelp", h, err)
		}
		if !strings.Contains(out.String(), "Usage of cmd:") || !strings.Contains(out.String(), "a number") {
			t.Errorf("%s: printed %q, want the usage", h, out)
		}
	}
	fs, out, n := newSet()
	if err := Parse(fs, []string{"-n", "7", "rest"}); err != nil || *n != 7 || fs.Arg(0) != "rest" || out.Len() != 0 {
		t.Errorf("good line: err %v, n %d, args %q, printed %q", err, *n, fs.Args(), out)
	}
}
