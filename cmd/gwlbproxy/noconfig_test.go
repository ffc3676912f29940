package main

import (
	"syscall"
	"testing"
	"time"
)

// TestNoConfigWarnsAndHUPSaysSo: without --config the appliance runs the
// built-in policy, which allows every flow and decrypts nothing. That is
// documented, but an operator whose --config went missing must see it at
// WARN, not only in the INFO line of the policy loaded; and a SIGHUP, which
// has no file to reload, must say so rather than pass without a word.
func TestNoConfigWarnsAndHUPSaysSo(t *testing.T) {
	p := startMain(t, nil, "--geneve-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
		"--gwlb-cidrs", "127.0.0.0/8", "--return-path", "bound",
		"--access-log", "", "--state-dir", t.TempDir(), "--drain-timeout", "1s")
	p.waitNotify("READY=1", 60*time.Second)
	p.waitLog(`level=WARN msg=".*no --config.*every flow is allowed.*nothing is decrypted`, 10*time.Second)
	p.signal(syscall.SIGHUP)
	p.waitLog(`level=WARN msg=".*SIGHUP.*no --config.*nothing to reload`, 30*time.Second)
	p.signal(syscall.SIGTERM)
	if !p.exited(10 * time.Second) {
		t.Fatal("still running 10s after SIGTERM")
	}
	if s := p.status(); s != "exit 0" {
		t.Fatalf("after SIGTERM: %s, want exit 0", s)
	}
}
