package main

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"net/netip"
	"strings"
	"testing"
)

func TestParseFlags(t *testing.T) {
	base := []string{"--addr", "198.18.1.2", "--appliance", "198.18.1.1", "--tun", "tun0"}
	t.Run("defaults", func(t *testing.T) {
		o, err := parseFlags(base, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		want := options{
			Addr:       netip.MustParseAddr("198.18.1.2"),
			Appliance:  netip.MustParseAddrPort("198.18.1.1:6081"),
			TUN:        "tun0",
			Endpoint:   0x0123456789abcdef0,
			Attachment: 0x0a1b2c3d4e5f6071,
			ListenPort: 6081,
			Senders:    16,
			LogLevel:   "info",
			Offload:    true,
		}
		if o != want {
			t.Fatalf("got %+v\nwant %+v", o, want)
		}
	})
	t.Run("explicit", func(t *testing.T) {
		o, err := parseFlags(append(base[:2:2], "--appliance", "127.0.0.1:7000", "--tun", "gs%d",
			"--endpoint-id", "VPCE-00000000000000abc", "--attachment-id", "0xff", "--listen-port", "16081", "--senders", "3"), io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		if o.Appliance != netip.MustParseAddrPort("127.0.0.1:7000") || o.Endpoint != 0xabc || o.Attachment != 0xff ||
			o.ListenPort != 16081 || o.Senders != 3 || o.TUN != "gs%d" {
			t.Fatalf("got %+v", o)
		}
	})
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no addr", []string{"--appliance", "198.18.1.1", "--tun", "t"}, "--addr is required"},
		{"v6 addr", []string{"--addr", "2001:db8::1", "--appliance", "198.18.1.1", "--tun", "t"}, "want an IPv4 address"},
		{"no appliance", []string{"--addr", "198.18.1.2", "--tun", "t"}, "--appliance is required"},
		{"unspecified appliance", []string{"--addr", "198.18.1.2", "--appliance", "0.0.0.0", "--tun", "t"}, "unicast IPv4"},
		{"no tun", []string{"--addr", "198.18.1.2", "--appliance", "198.18.1.1"}, "--tun is required"},
		{"bad endpoint", append(append([]string{}, base...), "--endpoint-id", "vpce-xyz"), "--endpoint-id"},
		{"endpoint too long", append(append([]string{}, base...), "--endpoint-id", "1ffffffffffffffff"), "64 bits"},
		{"bad port", append(append([]string{}, base...), "--listen-port", "70000"), "--listen-port"},
		{"bad senders", append(append([]string{}, base...), "--senders", "0"), "--senders"},
		{"stray argument", append(append([]string{}, base...), "extra"), "unexpected argument"},
		{"bad log level", append(append([]string{}, base...), "--log-level", "bogus"), "--log-level"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseFlags(tc.args, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

// TestHelpDocumentsEveryFlag: -help exits cleanly and names each flag.
func TestHelpDocumentsEveryFlag(t *testing.T) {
	var out bytes.Buffer
	err := runMain([]string{"-help"}, io.Discard, &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("runMain(-help) = %v, want flag.ErrHelp", err)
	}
	for _, f := range []string{"-addr", "-appliance", "-tun", "-endpoint-id", "-attachment-id", "-listen-port", "-senders"} {
		if !strings.Contains(out.String(), f+" ") {
			t.Errorf("-help output does not document %s:\n%s", f, out.String())
		}
	}
}

// TestFlagErrorPrintsNothing: a value the flag package refuses (a syntax
// error, an unknown flag, a missing value) is returned for main's one line
// `gwlbsim: <error>` and nothing else is printed. Before, the flag package
// printed the error and the whole usage (some 50 lines) first, and main
// printed the error again.
func TestFlagErrorPrintsNothing(t *testing.T) {
	base := []string{"--addr", "198.18.1.2", "--appliance", "198.18.1.1", "--tun", "tun0"}
	for _, extra := range [][]string{{"--senders", "x"}, {"--nosuchflag"}, {"--tcp-idle-timeout"}} {
		var out bytes.Buffer
		err := runMain(append(append([]string{}, base...), extra...), io.Discard, &out)
		if err == nil || errors.Is(err, flag.ErrHelp) || !strings.Contains(err.Error(), strings.TrimLeft(extra[0], "-")) {
			t.Errorf("%q: error %v, want one naming %s", extra, err, extra[0])
		}
		if out.Len() != 0 {
			t.Errorf("%q: printed %d bytes besides the error:\n%s", extra, out.Len(), out.String())
		}
	}
}
