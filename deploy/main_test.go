package deploy

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// scratch holds what the tests build once and share (the gwlbproxy binary,
// the packages); TestMain removes it.
var scratch string

func TestMain(m *testing.M) {
	var err error
	scratch, err = os.MkdirTemp("", "gwlbproxy-deploy-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(scratch)
	os.Exit(code)
}

// repoRoot is the module's root directory (tests run in deploy/).
func repoRoot(t testing.TB) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root: %v", err)
	}
	return root
}

var (
	buildOnce sync.Once
	buildBin  string
	buildErr  error
)

// gwlbproxyBinary builds cmd/gwlbproxy once, as `make build` does (static,
// trimmed paths: the build cache is shared with it), and returns its path.
func gwlbproxyBinary(t testing.TB) string {
	t.Helper()
	root := repoRoot(t)
	buildOnce.Do(func() {
		bin := filepath.Join(scratch, "gwlbproxy")
		cmd := exec.Command("go", "build", "-trimpath", "-o", bin, "./cmd/gwlbproxy")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/gwlbproxy: %v\n%s", err, out)
			return
		}
		buildBin = bin
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildBin
}

var helpFlag = regexp.MustCompile(`(?m)^  -([a-z0-9][a-z0-9-]*)`)

// applianceFlags lists the flags the built appliance defines, from its
// --help output.
func applianceFlags(t testing.TB) []string {
	t.Helper()
	out, _ := exec.Command(gwlbproxyBinary(t), "-h").CombinedOutput() // exits 2 after printing
	var names []string
	for _, m := range helpFlag.FindAllStringSubmatch(string(out), -1) {
		names = append(names, m[1])
	}
	if len(names) < 10 || !slices.Contains(names, "gwlb-cidrs") {
		t.Fatalf("gwlbproxy -h listed flags %v; output:\n%s", names, out)
	}
	return names
}

const strayArgument = "deploy-test-stray-argument"

// checkAppliancesAccepts runs the appliance with args and a stray argument
// after them. gwlbproxy parses every flag, and only then refuses the stray
// argument: so that refusal, and nothing else, means that every flag exists
// and every value parses, without the appliance starting.
func checkApplianceAccepts(t testing.TB, args []string) {
	t.Helper()
	for _, a := range args {
		if !strings.HasPrefix(a, "-") {
			continue
		}
		name := strings.TrimLeft(strings.SplitN(a, "=", 2)[0], "-")
		if !slices.Contains(applianceFlags(t), name) {
			t.Errorf("flag %s is not one gwlbproxy defines (gwlbproxy -h)", a)
		}
	}
	cmd := exec.Command(gwlbproxyBinary(t), append(slices.Clone(args), strayArgument)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("gwlbproxy %q did not stop at the stray argument: it started", args)
	}
	want := fmt.Sprintf("gwlbproxy: unexpected argument %q", strayArgument)
	if got := strings.TrimSpace(stderr.String()); got != want+" (see --help)" {
		t.Errorf("gwlbproxy %s %s:\n got: %s\nwant: %s (see --help)\n(anything else means a flag or value it refuses)",
			strings.Join(args, " "), strayArgument, got, want)
	}
}

// flagValue is the value the last --name (or -name) in args sets, and
// whether any does. Every flag the deployment passes takes a value.
func flagValue(args []string, name string) (string, bool) {
	val, found := "", false
	for i := 0; i < len(args); i++ {
		a := strings.TrimLeft(args[i], "-")
		if len(a) == len(args[i]) {
			continue
		}
		if n, v, ok := strings.Cut(a, "="); ok {
			if n == name {
				val, found = v, true
			}
			continue
		}
		if a == name && i+1 < len(args) {
			val, found = args[i+1], true
			i++
		}
	}
	return val, found
}

// unit is a parsed systemd unit file: section → key → values, in order.
type unit map[string]map[string][]string

func parseUnit(t testing.TB, path string) unit {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	u := unit{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		for strings.HasSuffix(line, `\`) && sc.Scan() {
			n++
			line = strings.TrimSuffix(line, `\`) + " " + strings.TrimSpace(sc.Text())
		}
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[' && line[len(line)-1] == ']':
			section = line[1 : len(line)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: not a key=value line in a section: %q", path, n, line)
			}
			u[section][strings.TrimSpace(k)] = append(u[section][strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	return u
}

// one is the single value of key in section, failing the test otherwise.
func (u unit) one(t testing.TB, section, key string) string {
	t.Helper()
	v := u[section][key]
	if len(v) != 1 {
		t.Fatalf("unit [%s] %s: want one value, have %q", section, key, v)
	}
	return v[0]
}

// parseEnvFile reads a systemd EnvironmentFile: KEY=VALUE lines, the value
// optionally in double quotes; # comments.
func parseEnvFile(t testing.TB, name, data string) map[string]string {
	t.Helper()
	env := map[string]string{}
	for n, line := range strings.Split(data, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s:%d: not KEY=VALUE: %q", name, n+1, line)
		}
		if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
			v = v[1 : len(v)-1]
		}
		if strings.ContainsAny(v, `"'\$`) {
			t.Fatalf("%s:%d: %q: quotes, backslashes and $ inside a value are not expected here", name, n+1, line)
		}
		env[strings.TrimSpace(k)] = v
	}
	return env
}

// execArgs splits an Exec line as systemd does for the cases used here: at
// whitespace, with $VAR replaced by the words of its value and ${VAR} by its
// value as one word.
func execArgs(t testing.TB, line string, env map[string]string) []string {
	t.Helper()
	if strings.ContainsAny(line, `"'\`) {
		t.Fatalf("Exec line %q: quoting is not expected here", line)
	}
	var args []string
	for _, w := range strings.Fields(line) {
		switch {
		case strings.HasPrefix(w, "${") && strings.HasSuffix(w, "}"):
			args = append(args, env[w[2:len(w)-1]])
		case strings.HasPrefix(w, "$"):
			args = append(args, strings.Fields(env[w[1:]])...)
		default:
			args = append(args, w)
		}
	}
	return args
}

// systemdSpan parses a systemd time span made of Go-style parts ("330",
// "300s 30s", "5min"): a bare number is seconds.
func systemdSpan(t testing.TB, s string) time.Duration {
	t.Helper()
	var total time.Duration
	for _, p := range strings.Fields(s) {
		p = strings.Replace(p, "min", "m", 1)
		if strings.Trim(p, "0123456789") == "" {
			p += "s"
		}
		d, err := time.ParseDuration(p)
		if err != nil {
			t.Fatalf("time span %q: %v", s, err)
		}
		total += d
	}
	return total
}
