package main

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/certs/secretstest"
)

// TestGWLBCIDRsMapped: an IPv4-mapped --gwlb-cidrs prefix is the IPv4
// prefix it names, as in the policy: the sender check unmaps each GENEVE
// sender, so a prefix kept mapped matched none, and every datagram of the
// GWLB was dropped as unknown_sender while the health check said serving.
// A mapped prefix shorter than /96 names no IPv4 subnet and is refused.
// End to end, a flow from a simulator inside the mapped range is carried.
func TestGWLBCIDRsMapped(t *testing.T) {
	o, err := parseFlags([]string{"--gwlb-cidrs", "::ffff:10.0.200.0/124, 10.0.200.16/28, ::ffff:0:0/96"}, &bytes.Buffer{})
	want := []netip.Prefix{netip.MustParsePrefix("10.0.200.0/28"), netip.MustParsePrefix("10.0.200.16/28"), netip.MustParsePrefix("0.0.0.0/0")}
	if err != nil || len(o.GWLBCIDRs) != len(want) {
		t.Fatalf("--gwlb-cidrs with mapped prefixes: %v, %v; want %v", err, o.GWLBCIDRs, want)
	}
	for i, p := range o.GWLBCIDRs {
		if p != want[i] {
			t.Errorf("--gwlb-cidrs prefix %d: %v, want %v", i, p, want[i])
		}
	}
	for _, v := range []string{"::ffff:0:0/95", "::ffff:0:0/80", "10.0.0.0/8,::ffff:0:0/32"} {
		if _, err := parseFlags([]string{"--gwlb-cidrs", v}, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "gwlb-cidrs") {
			t.Errorf("--gwlb-cidrs %s: error %v, want it refused naming the flag", v, err)
		}
	}

	// End to end: the simulator on a 127/8 address, the senders named as
	// ::ffff:127.0.0.0/104.
	addr, geneve := drainNet(250)
	dst := closingDest(t, addr(3))
	p := startMain(t, []string{"GORACE=atexit_sleep_ms=0"}, "--config", auditPolicy(t), "--geneve-addr", geneve.String(),
		"--admin-addr", netip.AddrPortFrom(addr(1), 0).String(), "--gwlb-cidrs", "::ffff:127.0.0.0/104",
		"--unsafe-allow-loopback", "--return-path", "bound", "--access-log", "", "--state-dir", t.TempDir(), "--drain-timeout", "0s")
	p.waitLog(`msg="gwlbproxy serving"`, 30*time.Second)
	dialThrough(t, addr(2), geneve, dst).Close()
}

// TestMaxHeaderBytesBounds: --max-header-bytes is refused above 1 MiB,
// naming the flag: goproxy's HTTP/2 server, which cannot be configured,
// refuses a larger header list itself with a protocol error, so a limit
// above it let such lists end the connection with no 431 and no record.
func TestMaxHeaderBytesBounds(t *testing.T) {
	for _, v := range []string{"1048577", "4194304", "1023"} {
		_, err := parseFlags([]string{"--max-header-bytes", v}, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), "--max-header-bytes") {
			t.Errorf("--max-header-bytes %s: error %v, want it refused naming the flag", v, err)
		}
	}
	for _, n := range []int{1 << 20, 1024} {
		o, err := parseFlags([]string{"--max-header-bytes", strconv.Itoa(n)}, &bytes.Buffer{})
		if err != nil || o.MaxHeaderBytes != n {
			t.Errorf("--max-header-bytes %d: %v, %d", n, err, o.MaxHeaderBytes)
		}
	}
}

// TestEndpointURLFlags: --cloudwatch-endpoint and --ca-secret-endpoint
// must be http or https URLs with a host, or start-up stops naming the
// flag: the SDK takes any string and fails only when it sends, so a typo
// started a healthy appliance whose every CloudWatch batch failed. The
// environment holds fake credentials and no instance metadata, so that
// nothing here (or a regression that reached the SDK) leaves the host.
func TestEndpointURLFlags(t *testing.T) {
	secretstest.SetEnv(t, "us-east-1")
	for _, flagName := range []string{"--cloudwatch-endpoint", "--ca-secret-endpoint"} {
		extra := []string{"--cloudwatch-group", "g"}
		if flagName == "--ca-secret-endpoint" {
			extra = []string{"--ca-secret", "gwlbproxy/ca"}
		}
		for _, v := range []string{"::bad", "logs.us-east-1.amazonaws.com", "vpce-1.logs.us-east-1.vpce.amazonaws.com:443",
			"ftp://logs.example", "https://", "https:///path", "http://h:0", "http://h:65536"} {
			_, err := parseFlags(append([]string{flagName, v}, extra...), &bytes.Buffer{})
			if err == nil || !strings.Contains(err.Error(), flagName) {
				t.Errorf("%s %q: error %v, want it refused naming the flag", flagName, v, err)
			}
		}
		for _, v := range []string{"https://vpce-0abc-1.logs.us-east-1.vpce.amazonaws.com", "http://127.0.0.1:4566", "https://[::1]:8443/"} {
			if _, err := parseFlags(append([]string{flagName, v}, extra...), &bytes.Buffer{}); err != nil {
				t.Errorf("%s %q: %v", flagName, v, err)
			}
		}
	}
	// `ca trust` takes the same flag, and refuses it before asking AWS.
	err := runMain([]string{"ca", "trust", "--ca-secret", "gwlbproxy/ca", "--ca-secret-endpoint", "::bad"}, &bytes.Buffer{}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "--ca-secret-endpoint") {
		t.Errorf("ca trust --ca-secret-endpoint ::bad: error %v, want it refused naming the flag", err)
	}
}

// TestAdminAddrFlag: an --admin-addr with no port (an empty variable in the
// flags file), or port 0 off loopback, is refused naming the flag: the
// listener took a random port on every address, the GWLB's health check
// never got an answer, and the senders' admin port went unrefused.
func TestAdminAddrFlag(t *testing.T) {
	for _, v := range []string{"", ":", "10.0.0.5", "10.0.0.5:", ":0", "0.0.0.0:0", "[::]:0", "10.0.0.5:0", "localhost:0", ":99999", ":nosuchservice"} {
		_, err := parseFlags([]string{"--admin-addr", v}, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), "--admin-addr") {
			t.Errorf("--admin-addr %q: error %v, want it refused naming the flag", v, err)
		}
	}
	for _, v := range []string{":80", "10.0.0.5:8080", "[::]:8080", "127.0.0.1:0", "[::1]:0"} {
		if o, err := parseFlags([]string{"--admin-addr", v}, &bytes.Buffer{}); err != nil || o.AdminAddr != v {
			t.Errorf("--admin-addr %q: %v", v, err)
		}
	}
	if o, err := parseFlags(nil, &bytes.Buffer{}); err != nil || o.AdminAddr != ":80" {
		t.Errorf("the default --admin-addr: %q, %v", o.AdminAddr, err)
	}
}

// TestMirrorTAPNameRefused: names the kernel takes for no interface ("/",
// ":" or white space in them, "." and "..") are refused at the flag check,
// naming the flag. They passed it and failed only at start, with a hint
// about CAP_NET_ADMIN that sent a root operator the wrong way.
func TestMirrorTAPNameRefused(t *testing.T) {
	for _, v := range []string{"a/b", "a b", "tap\t0", "a:1", "tap0\n", ".", ".."} {
		if _, err := parseFlags([]string{"--mirror-tap", v}, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "--mirror-tap") {
			t.Errorf("--mirror-tap %q: %v, want it refused naming the flag", v, err)
		}
	}
	for _, v := range []string{"ids0", "tap-mirror.1", "gwlb_mirror_15c"} {
		if _, err := parseFlags([]string{"--mirror-tap", v}, &bytes.Buffer{}); err != nil {
			t.Errorf("--mirror-tap %q: %v", v, err)
		}
	}
}

// TestAccessLogRotationFlags: --access-log-max-size takes a size (0:
// another rotator's) of at least 1 MiB, --access-log-max-age a duration (0 for never)
// of at least a minute, 24h by default, --access-log-keep 1 to 1000;
// anything else stops the start naming the flag.
func TestAccessLogRotationFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--access-log-max-size", "512KiB"},
		{"--access-log-max-size", "-1"},
		{"--access-log-max-size", "lots"},
		{"--access-log-keep", "0"},
		{"--access-log-keep", "1001"},
		{"--access-log-max-age", "-1h"},
		{"--access-log-max-age", "30s"},
		{"--access-log-max-age", "a day"},
	} {
		_, err := parseFlags(args, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), strings.TrimLeft(args[0], "-")) {
			t.Errorf("%v: error %v, want it refused naming the flag", args, err)
		}
	}
	o, err := parseFlags(nil, &bytes.Buffer{})
	if err != nil || o.AccessLogRotation.MaxSize != 1<<30 || o.AccessLogRotation.MaxAge != 24*time.Hour || o.AccessLogRotation.Keep != 7 {
		t.Errorf("defaults: %+v, %v; want 1 GiB, 24h and 7", o.AccessLogRotation, err)
	}
	o, err = parseFlags([]string{"--access-log-max-age", "0"}, &bytes.Buffer{})
	if err != nil || o.AccessLogRotation.MaxAge != 0 {
		t.Errorf("--access-log-max-age 0: %+v, %v", o.AccessLogRotation, err)
	}
	o, err = parseFlags([]string{"--access-log-max-age", "6h"}, &bytes.Buffer{})
	if err != nil || o.AccessLogRotation.MaxAge != 6*time.Hour {
		t.Errorf("--access-log-max-age 6h: %+v, %v", o.AccessLogRotation, err)
	}
	o, err = parseFlags([]string{"--access-log-max-size", "0", "--access-log-keep", "30"}, &bytes.Buffer{})
	if err != nil || o.AccessLogRotation.MaxSize != 0 || o.AccessLogRotation.Keep != 30 {
		t.Errorf("0 and 30: %+v, %v", o.AccessLogRotation, err)
	}
	o, err = parseFlags([]string{"--access-log-max-size", "256MiB"}, &bytes.Buffer{})
	if err != nil || o.AccessLogRotation.MaxSize != 256<<20 {
		t.Errorf("256MiB: %+v, %v", o.AccessLogRotation, err)
	}
}

// TestOutputTuningNeedsItsOutput: a flag that tunes CloudWatch shipping or
// the pcap files, given while that output is off (its flag absent, or given
// empty: `--cloudwatch-group "$GROUP"` with the variable unset), is refused
// naming the flags, as --ca-secret-region without --ca-secret is. They were
// accepted and did nothing, without a word: an appliance started with
// --cloudwatch-stream and no group shipped nothing while its operator
// believed it did. With the output on they pass, and the output's flag
// given empty alone still means off.
func TestOutputTuningNeedsItsOutput(t *testing.T) {
	pcapDir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want []string // in the error
	}{
		{[]string{"--cloudwatch-stream", "s"}, []string{"--cloudwatch-stream needs --cloudwatch-group, not given"}},
		{[]string{"--cloudwatch-region", "eu-west-1"}, []string{"--cloudwatch-region needs --cloudwatch-group"}},
		{[]string{"--cloudwatch-endpoint", "http://127.0.0.1:1"}, []string{"--cloudwatch-endpoint needs --cloudwatch-group"}},
		{[]string{"--cloudwatch-flush", "1s"}, []string{"--cloudwatch-flush needs --cloudwatch-group"}},
		{[]string{"--cloudwatch-buffer", "8388608"}, []string{"--cloudwatch-buffer needs --cloudwatch-group"}},
		{[]string{"--cloudwatch-retention-days", "30"}, []string{"--cloudwatch-retention-days needs --cloudwatch-group"}},
		{[]string{"--cloudwatch-retention-days", "30", "--cloudwatch-stream", "s"},
			[]string{"--cloudwatch-stream, --cloudwatch-retention-days need --cloudwatch-group"}},
		{[]string{"--cloudwatch-group", "", "--cloudwatch-retention-days", "30"},
			[]string{"--cloudwatch-retention-days needs --cloudwatch-group, given empty"}},
		// The last of a flag wins: a group given, then emptied.
		{[]string{"--cloudwatch-group", "g", "--cloudwatch-stream", "s", "--cloudwatch-group", ""},
			[]string{"--cloudwatch-stream needs --cloudwatch-group, given empty"}},
		{[]string{"--pcap-rotate-bytes", "65536"}, []string{"--pcap-rotate-bytes needs --pcap-dir, not given"}},
		{[]string{"--pcap-rotate-age", "1m"}, []string{"--pcap-rotate-age needs --pcap-dir"}},
		{[]string{"--pcap-max-bytes", "99999999999"}, []string{"--pcap-max-bytes needs --pcap-dir"}},
		{[]string{"--pcap-dir", "", "--pcap-rotate-age", "1m", "--pcap-max-bytes", "99999999999"},
			[]string{"--pcap-rotate-age, --pcap-max-bytes need --pcap-dir, given empty"}},
		// A mirror is no pcap output: the pcap flags still do nothing.
		{[]string{"--mirror-tap", "ids0", "--pcap-rotate-age", "1m"}, []string{"--pcap-rotate-age needs --pcap-dir"}},
	} {
		_, err := parseFlags(tc.args, &bytes.Buffer{})
		if err == nil {
			t.Errorf("%q: accepted", tc.args)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%q: error %q, want it to say %q", tc.args, err, w)
			}
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: error of more than one line: %q", tc.args, err)
		}
	}
	for _, args := range [][]string{
		nil,
		{"--cloudwatch-group", ""}, // off, said explicitly
		{"--pcap-dir", ""},
		{"--cloudwatch-group", "g", "--cloudwatch-stream", "s", "--cloudwatch-region", "eu-west-1", "--cloudwatch-endpoint", "http://127.0.0.1:1",
			"--cloudwatch-flush", "1s", "--cloudwatch-buffer", "8388608", "--cloudwatch-retention-days", "30"},
		{"--pcap-dir", pcapDir, "--pcap-rotate-bytes", "65536", "--pcap-rotate-age", "1m", "--pcap-max-bytes", "99999999999"},
		// The defaults, given as such, with their output on.
		{"--cloudwatch-flush", "5s", "--cloudwatch-group", "g"},
	} {
		if _, err := parseFlags(args, &bytes.Buffer{}); err != nil {
			t.Errorf("%q: %v", args, err)
		}
	}
}

// TestFlagErrorIsOneLine: a value the flag package itself refuses (a
// syntax error, an fs.Func's error, an unknown flag), for the appliance
// and for the subcommands, ends the process with exit status 2 and the one
// line `gwlbproxy: <error>` configuration.md promises. The flag package
// printed the error and then the whole usage (117 lines) before main
// printed the error again. --help still prints the usage, to stderr, and
// exits 0. Each runs gwlbproxy as its own process: main does the printing.
func TestFlagErrorIsOneLine(t *testing.T) {
	run := func(args ...string) (code int, stdout, stderr string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, os.Args[0], args...)
		cmd.Env = append(os.Environ(), asMainEnv+"=1")
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		_ = cmd.Run()
		return cmd.ProcessState.ExitCode(), out.String(), errb.String()
	}
	for _, tc := range []struct {
		args []string
		want string // in the line
	}{
		{[]string{"--dns-ports", "0"}, "-dns-ports"},
		{[]string{"--readers", "x"}, "-readers"},
		{[]string{"--memory-limit", "2048"}, "-memory-limit"},
		{[]string{"--access-log-max-size", "1.5GiB"}, "-access-log-max-size"},
		{[]string{"--pcap-filter", "ports=0"}, "-pcap-filter"},
		{[]string{"--nosuchflag"}, "-nosuchflag"},
		{[]string{"ca", "init", "--bogus"}, "-bogus"},
		{[]string{"ca", "trust", "--ca-cert"}, "-ca-cert"}, // no value
		{[]string{"query", "denied", "--limit", "many"}, "-limit"},
		{[]string{"queries", "install", "--bogus"}, "-bogus"},
	} {
		code, stdout, stderr := run(tc.args...)
		if code != 2 || stdout != "" || strings.Count(stderr, "\n") != 1 ||
			!strings.HasPrefix(stderr, "gwlbproxy: ") || !strings.Contains(stderr, tc.want) {
			t.Errorf("%q: exit status %d, stdout %q, stderr (%d lines):\n%s\nwant status 2 and one line `gwlbproxy: ...` naming %s",
				tc.args, code, stdout, strings.Count(stderr, "\n"), stderr, tc.want)
		}
	}
	for _, h := range []string{"--help", "-h"} {
		code, stdout, stderr := run(h)
		if code != 0 || stdout != "" || !strings.HasPrefix(stderr, "Usage of gwlbproxy:\n") ||
			!strings.Contains(stderr, "\n  -admin-addr string\n") || strings.Contains(stderr, "gwlbproxy: ") {
			t.Errorf("%s: exit status %d, stdout %q, stderr:\n%s\nwant status 0 and the usage on stderr", h, code, stdout, stderr)
		}
	}
	if code, _, stderr := run("ca", "init", "-h"); code != 0 || !strings.HasPrefix(stderr, "Usage of gwlbproxy ca init:\n") || !strings.Contains(stderr, "-out") {
		t.Errorf("ca init -h: exit status %d, stderr:\n%s", code, stderr)
	}
}
