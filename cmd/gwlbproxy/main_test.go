package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/certs"
	"github.com/gwlbproxy/gwlbproxy/certs/secretstest"
	"github.com/gwlbproxy/gwlbproxy/internal/appliance"
	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// secretCA follows the README: `gwlbproxy ca init --out DIR`, then
// `cat ca.pem ca-key.pem` stored as the secret's string. It returns ca.pem
// and the fingerprint ca init printed.
func secretCA(t *testing.T, srv *secretstest.Server, name string) (caPEM []byte, fingerprint string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	var out, errb bytes.Buffer
	if err := runMain([]string{"ca", "init", "--out", dir}, &out, &errb); err != nil {
		t.Fatalf("ca init: %v (%s)", err, errb.String())
	}
	m := regexp.MustCompile(`fingerprint: ([0-9A-F:]{95})`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("ca init printed no fingerprint: %q", out.String())
	}
	caPEM = readFile(t, filepath.Join(dir, certs.CertFileName))
	keyPEM := readFile(t, filepath.Join(dir, certs.KeyFileName))
	srv.PutString(name, string(caPEM)+string(keyPEM))
	return caPEM, m[1]
}

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCACommands(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	var out, errb bytes.Buffer
	if err := runMain([]string{"ca", "init", "--out", dir}, &out, &errb); err != nil {
		t.Fatalf("ca init: %v (%s)", err, errb.String())
	}
	if !strings.Contains(out.String(), "fingerprint") {
		t.Errorf("ca init output %q", out.String())
	}
	key := readFile(t, filepath.Join(dir, "ca-key.pem"))
	// Again into the same directory: refused, the CA clients trust kept.
	if err := runMain([]string{"ca", "init", "--out", dir}, &out, &errb); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("a second ca init into the same directory: %v, want it refused", err)
	}
	if !bytes.Equal(readFile(t, filepath.Join(dir, "ca-key.pem")), key) {
		t.Fatal("a refused ca init replaced the key")
	}
	if err := runMain([]string{"ca", "init", "--out", dir, "--force"}, &out, &errb); err != nil || bytes.Equal(readFile(t, filepath.Join(dir, "ca-key.pem")), key) {
		t.Fatalf("ca init --force: %v, want a new key", err)
	}
	out.Reset()
	err := runMain([]string{"ca", "trust", "--ca-cert", filepath.Join(dir, "ca.pem"), "--ca-key", filepath.Join(dir, "ca-key.pem")}, &out, &errb)
	if err != nil || !strings.Contains(out.String(), "http://gwlbproxy.internal/ca.pem") {
		t.Fatalf("ca trust: %v\n%s", err, out.String())
	}
	// From a state directory: the CA there, and none made where there is
	// none (an appliance given --ca-secret uses another, and clients
	// would be handed the wrong one).
	out.Reset()
	if err := runMain([]string{"ca", "trust", "--state-dir", dir}, &out, &errb); err != nil || !strings.Contains(out.String(), "http://gwlbproxy.internal/ca.pem") {
		t.Fatalf("ca trust --state-dir with a CA: %v\n%s", err, out.String())
	}
	empty := t.TempDir()
	if err := runMain([]string{"ca", "trust", "--state-dir", empty}, &out, &errb); err == nil || !strings.Contains(err.Error(), "no CA in --state-dir") {
		t.Fatalf("ca trust --state-dir with no CA: %v, want it refused", err)
	}
	if ents, _ := os.ReadDir(empty); len(ents) != 0 {
		t.Fatalf("ca trust made %d files in an empty state directory", len(ents))
	}
}

func TestFlagValidation(t *testing.T) {
	for _, args := range [][]string{
		{"--tcp-idle-timeout", "30s"},
		{"--return-path", "magic"},
		{"--mtu", "9000"},
		{"--ack-delay", "-1ms"},
		{"--ack-delay", "41ms"},
		{"--max-flows", "0"},
		{"--record-stall", "0s"},
		{"--max-endpoints", "0"},
		{"--gwlb-cidrs", "any,10.0.0.0/8"},
		{"--gwlb-cidrs", "any", "--gwlb-cidrs", "10.0.0.0/8"},
		{"--gwlb-cidrs", "10.0.0.0/33"},
		{"stray"},
	} {
		var out, errb bytes.Buffer
		if err := runMain(args, &out, &errb); err == nil {
			t.Errorf("%v: accepted", args)
		}
	}
	// Refused by the parser itself (runMain would fail later anyway, on
	// the ports it cannot bind here).
	for _, args := range [][]string{
		{"--log-level", "bogus"},
		{"--cloudwatch-group", "g", "--cloudwatch-retention-days", "4294967297"}, // 1 once wrapped to 32 bits
	} {
		if _, err := parseFlags(args, &bytes.Buffer{}); err == nil {
			t.Errorf("%v: accepted", args)
		}
	}
	if o, err := parseFlags([]string{"--log-level", "warn", "--cloudwatch-group", "g", "--cloudwatch-retention-days", "30"}, &bytes.Buffer{}); err != nil || o.LogLevel != "warn" {
		t.Errorf("--log-level warn --cloudwatch-retention-days 30: %v", err)
	}
	o, err := parseFlags([]string{"--record-stall", "45s"}, &bytes.Buffer{})
	if err != nil || o.RecordStall != 45*time.Second {
		t.Errorf("--record-stall 45s: %v, %v", o.RecordStall, err)
	}
	if o.AckDelay != netstack.DefaultAckDelay {
		t.Errorf("--ack-delay defaults to %s, want %s", o.AckDelay, netstack.DefaultAckDelay)
	}
	if o, err := parseFlags([]string{"--ack-delay", "0"}, &bytes.Buffer{}); err != nil || o.AckDelay != 0 || o.Validate() != nil {
		t.Errorf("--ack-delay 0 (off): %v, %v", o.AckDelay, err)
	}
}

// TestCloudWatchNameFlags: a log group or stream name CloudWatch Logs would
// refuse is a flag error (main exits 2) naming the flag, caught before
// anything starts; valid names pass.
func TestCloudWatchNameFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--cloudwatch-group", "my access logs"}, "--cloudwatch-group"},
		{[]string{"--cloudwatch-group", "logs:prod"}, "--cloudwatch-group"},
		{[]string{"--cloudwatch-group", strings.Repeat("g", 513)}, "--cloudwatch-group"},
		{[]string{"--cloudwatch-group", "/gwlbproxy/access", "--cloudwatch-stream", "a:b"}, "--cloudwatch-stream"},
		{[]string{"--cloudwatch-group", "/gwlbproxy/access", "--cloudwatch-stream", "blue*"}, "--cloudwatch-stream"},
	} {
		_, err := parseFlags(tc.args, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%.60q: error %v, want one naming %s", tc.args, err, tc.want)
		}
		// What main turns into exit status 2, before any listener opens.
		if err := runMain(tc.args, &bytes.Buffer{}, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("runMain %.60q: %v, want an error naming %s", tc.args, err, tc.want)
		}
	}
	o, err := parseFlags([]string{"--cloudwatch-group", "/gwlbproxy/access_logs-1.#a", "--cloudwatch-stream", "ip-10-0-1-23 (blue)"}, &bytes.Buffer{})
	if err != nil || o.CloudWatch.Group != "/gwlbproxy/access_logs-1.#a" || o.CloudWatch.Stream != "ip-10-0-1-23 (blue)" {
		t.Errorf("valid names: %q, %q, %v", o.CloudWatch.Group, o.CloudWatch.Stream, err)
	}
}

// TestCASecretStartupErrors: a CA secret that is missing, forbidden,
// unusable or unreachable stops start-up (main exits 2) with an error naming
// the secret and the cause, before any listener is opened; the CA flags
// that contradict each other are refused.
func TestCASecretStartupErrors(t *testing.T) {
	secretstest.SetEnv(t, "us-east-1")
	srv := secretstest.NewServer(t)
	srv.Fail("denied", 400, "AccessDeniedException", "not authorized to perform: secretsmanager:GetSecretValue")
	srv.PutString("no-key", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
	_, _ = secretCA(t, srv, "good")
	srv.Hang("slow")

	start := func(t *testing.T, timeout time.Duration, args ...string) error {
		t.Helper()
		args = append(args, "--geneve-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--gwlb-cidrs", "127.0.0.0/8",
			"--access-log", "", "--state-dir", t.TempDir(), "--ca-secret-endpoint", srv.URL)
		o, err := parseFlags(args, &bytes.Buffer{})
		if err != nil {
			return err
		}
		o.CASecret.Timeout = timeout
		a, err := appliance.New(o)
		if err == nil {
			a.Close()
			t.Fatal("the appliance started")
		}
		return err
	}
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"missing", []string{"--ca-secret", "nope"}, []string{`"nope"`, "ResourceNotFoundException"}},
		{"denied", []string{"--ca-secret", "denied"}, []string{`"denied"`, "AccessDeniedException", "secretsmanager:GetSecretValue"}},
		{"no key", []string{"--ca-secret", "no-key"}, []string{`"no-key"`, "certificate"}},
		{"hangs", []string{"--ca-secret", "slow"}, []string{`"slow"`, "no answer", "300ms"}},
		{"with files", []string{"--ca-secret", "good", "--ca-cert", "ca.pem", "--ca-key", "ca-key.pem"}, []string{"--ca-secret", "--ca-cert"}},
		{"audit mode still loads", []string{"--ca-secret", "nope", "--config", auditPolicyFile(t)}, []string{`"nope"`, "ResourceNotFoundException"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Only the hanging endpoint needs a short timeout; the others
			// must not run into it on a loaded machine.
			timeout := 10 * time.Second
			if tc.name == "hangs" {
				timeout = 300 * time.Millisecond
			}
			began := time.Now()
			err := start(t, timeout, tc.args...)
			if d := time.Since(began); tc.name == "hangs" && d > 5*time.Second {
				t.Errorf("start-up took %v to fail with a 300ms secret timeout", d)
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}

	for _, args := range [][]string{
		{"--ca-secret", "x", "--ca-key", "k.pem"},
		{"--ca-secret-region", "eu-west-1"},
		{"--ca-secret-endpoint", "http://127.0.0.1:1"},
	} {
		var out, errb bytes.Buffer
		if err := runMain(args, &out, &errb); err == nil || !strings.Contains(err.Error(), "--ca-secret") {
			t.Errorf("%v: error %v, want one about --ca-secret", args, err)
		}
	}
}

func auditPolicyFile(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "audit.yaml")
	os.WriteFile(p, []byte("policy:\n  mode: audit\n  default: allow\n"), 0o644)
	return p
}

// TestCATrustFromSecret: `gwlbproxy ca trust --ca-secret` prints the
// commands for the secret's CA.
func TestCATrustFromSecret(t *testing.T) {
	secretstest.SetEnv(t, "us-east-1")
	srv := secretstest.NewServer(t)
	_, fingerprint := secretCA(t, srv, "gwlbproxy/ca")
	var out, errb bytes.Buffer
	err := runMain([]string{"ca", "trust", "--ca-secret", "gwlbproxy/ca", "--ca-secret-endpoint", srv.URL}, &out, &errb)
	if err != nil || !strings.Contains(out.String(), fingerprint) {
		t.Fatalf("ca trust --ca-secret: %v (%s)\n%s", err, errb.String(), out.String())
	}
	err = runMain([]string{"ca", "trust", "--ca-secret", "other", "--ca-secret-endpoint", srv.URL}, &out, &errb)
	if err == nil || !strings.Contains(err.Error(), `"other"`) {
		t.Fatalf("ca trust with a missing secret: %v", err)
	}
}

// TestGWLBCIDRs: --gwlb-cidrs takes CIDRs or "any"; without it, off EC2
// (instance metadata unreachable) the appliance refuses to start, soon,
// naming the flag; "any" starts it, accepting every sender.
func TestGWLBCIDRs(t *testing.T) {
	o, err := parseFlags([]string{"--gwlb-cidrs", "10.0.200.0/28, 10.0.200.16/28", "--max-endpoints", "16"}, &bytes.Buffer{})
	if err != nil || len(o.GWLBCIDRs) != 2 || o.GWLBCIDRs[1].String() != "10.0.200.16/28" || o.AnyGWLBSender || o.MaxEndpoints != 16 {
		t.Fatalf("--gwlb-cidrs with two subnets, --max-endpoints 16: %v, %v, any %v, %d", err, o.GWLBCIDRs, o.AnyGWLBSender, o.MaxEndpoints)
	}
	if o, err = parseFlags(nil, &bytes.Buffer{}); err != nil || o.MaxEndpoints != 1024 || o.GWLBCIDRs != nil || o.AnyGWLBSender {
		t.Fatalf("defaults: %v, --max-endpoints %d, --gwlb-cidrs %v, any %v", err, o.MaxEndpoints, o.GWLBCIDRs, o.AnyGWLBSender)
	}

	common := []string{"--geneve-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--access-log", "", "--state-dir", t.TempDir()}
	// Off EC2: nothing answers where instance metadata would.
	t.Setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:1")
	began := time.Now()
	var errb bytes.Buffer
	err = runMain(common, &bytes.Buffer{}, &errb)
	if err == nil || !strings.Contains(err.Error(), "--gwlb-cidrs") || !strings.Contains(err.Error(), "--gwlb-cidrs any") {
		t.Fatalf("off EC2 without --gwlb-cidrs: error %v, want one naming the flag and its opt-out", err)
	}
	if d := time.Since(began); d > 5*time.Second {
		t.Errorf("refusing to start took %s", d)
	}

	o, err = parseFlags(append(common, "--gwlb-cidrs", "any"), &bytes.Buffer{})
	if err != nil || !o.AnyGWLBSender {
		t.Fatalf("--gwlb-cidrs any: %v, any %v", err, o.AnyGWLBSender)
	}
	a, err := appliance.New(o)
	if err != nil {
		t.Fatalf("--gwlb-cidrs any: the appliance did not start: %v", err)
	}
	a.Close()
}

// TestConfigurationDocumentsEveryFlag: every flag -help lists has a row in
// docs/configuration.md, and every flag row there is a flag.
func TestConfigurationDocumentsEveryFlag(t *testing.T) {
	var help bytes.Buffer
	if _, err := parseFlags([]string{"-help"}, &help); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-help: %v", err)
	}
	flags := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^  -([a-z0-9-]+)`).FindAllStringSubmatch(help.String(), -1) {
		flags[m[1]] = true
	}
	if len(flags) < 20 {
		t.Fatalf("found %d flags in -help:\n%s", len(flags), help.String())
	}
	doc := string(readFile(t, "../../docs/configuration.md"))
	documented := map[string]bool{}
	for _, line := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(line, "| `--") {
			continue
		}
		first, _, _ := strings.Cut(line[1:], " | ") // a row may name several: `--ca-cert`, `--ca-key`
		for _, m := range regexp.MustCompile("`--([a-z0-9-]+)`").FindAllStringSubmatch(first, -1) {
			documented[m[1]] = true
		}
	}
	for f := range flags {
		if !documented[f] {
			t.Errorf("--%s has no row in docs/configuration.md", f)
		}
	}
	for f := range documented {
		if !flags[f] {
			t.Errorf("docs/configuration.md has a row for --%s, which is no flag", f)
		}
	}
}

// TestBadFlagValues: a flag value out of range is refused before anything
// starts, with exit status 2 and an error naming the flag, rather than
// replaced by a default (a zero dial timeout became 10 s, a negative
// --readers one per CPU, a zero pcap or CloudWatch size its default) or
// accepted to fail later (a 100 KiB memory limit: memory critical, health
// 503, for good). Each runs gwlbproxy as its own process.
func TestBadFlagValues(t *testing.T) {
	for _, tc := range []struct {
		flag, value string
	}{
		{"dial-timeout", "0"},
		{"dial-timeout", "-1s"},
		// Twice it overflowed past about 146 years: the transitory
		// timeout became its 30 s floor without a word.
		{"dial-timeout", "10m1s"},
		{"dial-timeout", "2562047h"},
		{"readers", "-3"},
		{"pcap-rotate-bytes", "0"},
		{"pcap-rotate-bytes", "-1"},
		{"pcap-max-bytes", "0"},
		{"pcap-max-bytes", "-1"},
		{"pcap-rotate-age", "-1s"},
		{"pcap-rotate-age", "0"},
		{"cloudwatch-flush", "0"},
		{"cloudwatch-flush", "-1s"},
		{"cloudwatch-buffer", "0"},
		{"memory-limit", "100KiB"},
		{"memory-limit", "2048"}, // meant as MiB
		{"trust-host", ""},
		{"trust-host", "a b"},
		{"trust-host", "-x.example"},
		// An address, not a name: requests to that address, to any
		// destination, would be answered with the CA page.
		{"trust-host", "1.2.3.4"},
		{"trust-host", "ca.10"},
		{"gwlb-cidrs", "10.0.0.1/8"},
		{"idle-timeout", "1ns"},
		{"drain-min", "-1s"},
		{"drain-min", "301s"}, // above the default --drain-timeout, 300s
		// GENEVE on a random port, or on the default without a word:
		// the health check answers while the GWLB's 6081 goes unheard.
		{"geneve-addr", ""},
		{"geneve-addr", ":0"},
		{"geneve-addr", "10.0.0.5:0"},
		{"geneve-addr", ":65536"},
		{"geneve-addr", "[::1]:6081"}, // GENEVE is taken on IPv4 only
		{"geneve-addr", "nonsense"},
		{"geneve-addr", "gwlb.example:6081"},
		// An unset variable in `--config "$POLICY"`: without the
		// refusal, the built-in allow-all policy in place of the file.
		{"config", ""},
		// Twice it overflowed the DNS cache's bound of claims: one name kept.
		{"dns-cache-size", "9223372036854775807"},
		// Tuning an output that is off: it did nothing, without a word.
		{"cloudwatch-stream", "s"},
		{"pcap-rotate-age", "1m"},
	} {
		t.Run(tc.flag+"="+tc.value, func(t *testing.T) {
			// A value accepted starts the appliance: the context stops it.
			// Generous, since a refusal under the race detector on a
			// loaded machine can take seconds to start and end.
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			stateDir := t.TempDir()
			// The flag under test comes last, so that it overrides the
			// harmless values before it (the last of a flag wins).
			cmd := exec.CommandContext(ctx, os.Args[0],
				"--geneve-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--gwlb-cidrs", "127.0.0.0/8",
				"--access-log", "", "--state-dir", stateDir, "--"+tc.flag, tc.value)
			cmd.Env = append(os.Environ(), asMainEnv+"=1")
			cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGINT) }
			cmd.WaitDelay = 10 * time.Second
			out, err := cmd.CombinedOutput()
			if code := cmd.ProcessState.ExitCode(); code != 2 {
				t.Fatalf("--%s %q: exit status %d (%v), want 2\n%s", tc.flag, tc.value, code, err, out)
			}
			// The state dir, which t.TempDir names after the subtest and
			// so after the flag, must not be what names it.
			named := strings.ReplaceAll(string(out), stateDir, "")
			if !strings.Contains(named, "gwlbproxy: ") || !strings.Contains(named, tc.flag) {
				t.Fatalf("--%s %q: output names no flag:\n%s", tc.flag, tc.value, out)
			}
			if strings.Contains(string(out), "gwlbproxy serving") {
				t.Fatalf("--%s %q: served before refusing it:\n%s", tc.flag, tc.value, out)
			}
		})
	}
	// The values at the floors, and 0 where it means the default, pass.
	o, err := parseFlags([]string{"--readers", "0", "--memory-limit", "64MiB", "--trust-host", "ca.corp-1.example",
		"--idle-timeout", "1s", "--dial-timeout", "1ms", "--pcap-rotate-bytes", "65536", "--pcap-max-bytes", "65536",
		"--pcap-rotate-age", "1s", "--pcap-dir", t.TempDir(), "--cloudwatch-buffer", "4194304", "--cloudwatch-group", "g", "--gwlb-cidrs", "10.0.0.0/8",
		"--drain-timeout", "40s", "--drain-min", "40s"}, &bytes.Buffer{})
	if err != nil || o.Readers != 0 || o.TrustHost != "ca.corp-1.example" || o.DrainMin != 40*time.Second {
		t.Fatalf("values at the floors: %v", err)
	}
}

// TestGWLBCIDRsEverySender: --gwlb-cidrs 0.0.0.0/0 is as open as "any", and
// warned about as "any" is.
func TestGWLBCIDRsEverySender(t *testing.T) {
	var errb bytes.Buffer
	// --upstream-ca that does not exist stops start-up just after the
	// senders are settled, before any listener opens.
	err := runMain([]string{"--gwlb-cidrs", "0.0.0.0/0", "--config", auditPolicyFile(t), "--upstream-ca", filepath.Join(t.TempDir(), "none.pem"),
		"--geneve-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--access-log", "", "--state-dir", t.TempDir()}, &bytes.Buffer{}, &errb)
	if err == nil {
		t.Fatal("started with a missing --upstream-ca")
	}
	if !regexp.MustCompile(`level=WARN msg="--gwlb-cidrs 0.0.0.0/0: GENEVE is accepted from every sender`).MatchString(errb.String()) {
		t.Fatalf("no warning about --gwlb-cidrs 0.0.0.0/0:\n%s", errb.String())
	}
}

// TestSniffWaitWarnsThroughTheLogger: the deprecated --sniff-wait is
// warned about through the configured logger, in its key=value format
// and at its level. It was logged while the flags were parsed, before
// logging was set up: through Go's default logger, in another format a
// log pipeline misread, and even with --log-level error.
func TestSniffWaitWarnsThroughTheLogger(t *testing.T) {
	warning := regexp.MustCompile(`(?m)^time=\S+ level=WARN msg="--sniff-wait is deprecated and ignored`)
	for _, level := range []string{"info", "error"} {
		var errb bytes.Buffer
		// A missing --upstream-ca stops start-up before any listener opens.
		err := runMain([]string{"--sniff-wait", "5s", "--log-level", level, "--adapt-procs=false",
			"--config", auditPolicyFile(t), "--upstream-ca", filepath.Join(t.TempDir(), "none.pem"),
			"--gwlb-cidrs", "127.0.0.0/8", "--geneve-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
			"--access-log", "", "--state-dir", t.TempDir()}, &bytes.Buffer{}, &errb)
		if err == nil {
			t.Fatal("started with a missing --upstream-ca")
		}
		if got, want := len(warning.FindAllString(errb.String(), -1)), map[string]int{"info": 1, "error": 0}[level]; got != want {
			t.Errorf("--log-level %s: %d --sniff-wait warnings in the logger's format, want %d; stderr:\n%s", level, got, want, errb.String())
		}
		if strings.Contains(errb.String(), "sniff-wait") && level == "error" {
			t.Errorf("--log-level error: --sniff-wait warned about anyway:\n%s", errb.String())
		}
	}
}
