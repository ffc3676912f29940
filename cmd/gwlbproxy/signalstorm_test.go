package main

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// largePolicyFile writes a policy of 10,000 rules, one that takes a while
// to load (a reload lasts long enough for signals to land during it), and
// returns its path.
func largePolicyFile(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("policy:\n  mode: enforce\n  default: allow\n  rules:\n")
	for i := range 10000 {
		fmt.Fprintf(&b, "    - name: r%d\n      domains: [\"h%d.example.com\"]\n      action: deny\n", i, i)
	}
	policyFile := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(policyFile, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return policyFile
}

// TestSIGTERMAfterSIGHUPStorm: SIGHUPs come faster than the policy reloads
// (a policy of 10,000 rules; a path watcher that sends one on every write
// event), then a SIGTERM (systemctl restart). The SIGTERM must start the
// drain: the extra SIGHUPs coalesce into one reload after the current one.
// Before, the reloads ran on the goroutine reading the one signal channel,
// whose 8 slots the SIGHUPs filled, and signal.Notify, which never blocks,
// dropped the SIGTERM: the appliance served on until systemd's SIGKILL.
func TestSIGTERMAfterSIGHUPStorm(t *testing.T) {
	policyFile := largePolicyFile(t)
	p := startMain(t, nil, "--config", policyFile, "--geneve-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
		"--gwlb-cidrs", "127.0.0.0/8", "--return-path", "bound",
		"--access-log", "", "--state-dir", t.TempDir(), "--drain-timeout", "2s")
	p.waitNotify("READY=1", 60*time.Second)

	began := time.Now()
	p.signal(syscall.SIGHUP)
	p.waitLog(`msg="policy reloaded"`, 30*time.Second)
	reload := time.Since(began)
	t.Logf("one reload: %s", reload)

	const hups = 300
	for range hups {
		p.signal(syscall.SIGHUP)
		time.Sleep(time.Millisecond)
	}
	p.signal(syscall.SIGTERM)
	sent := time.Now()
	// The drain starts at once, whatever reload is under way; it lasts at
	// most 2 s, and the reload under way ends with the process.
	p.waitNotify("STOPPING=1", 5*time.Second)
	if !p.exited(10 * time.Second) {
		t.Fatalf("still running 10s after the SIGTERM that followed %d SIGHUPs", hups)
	}
	if s := p.status(); s != "exit 0" {
		t.Fatalf("after SIGTERM: %s, want exit 0", s)
	}
	n := strings.Count(p.log(), `msg="policy reloaded"`)
	t.Logf("exited %s after the SIGTERM; %d reloads for %d SIGHUPs", time.Since(sent), n, 1+hups)
}

// TestSIGHUPsCoalesce: SIGHUPs that come while a reload runs make one
// more reload after it, not one each: a burst costs two reloads, and the
// last reads the file after the last SIGHUP. Real signals, sent to this
// process, through catchSignals and signalContext; the reload blocks until
// the test lets it end.
func TestSIGHUPsCoalesce(t *testing.T) {
	// Keeps SIGHUP and SIGTERM caught after the test's own channels stop,
	// should one be delivered late: their default action would end the
	// test binary.
	guard := make(chan os.Signal, 1)
	signal.Notify(guard, syscall.SIGHUP, syscall.SIGTERM)
	defer func() {
		time.Sleep(100 * time.Millisecond)
		signal.Stop(guard)
	}()
	sigs, stopSignals := catchSignals()
	defer stopSignals()
	started, release := make(chan struct{}, 16), make(chan struct{})
	ctx, _ := signalContext(sigs, false, func() error {
		started <- struct{}{}
		<-release
		return nil
	}, func() {}, func(time.Duration) {})
	kill := func(sig syscall.Signal) {
		t.Helper()
		if err := syscall.Kill(os.Getpid(), sig); err != nil {
			t.Fatal(err)
		}
	}
	waitReload := func(what string) {
		t.Helper()
		select {
		case <-started:
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: no reload began within 5s", what)
		}
	}

	kill(syscall.SIGHUP)
	waitReload("the first SIGHUP")
	for range 50 {
		kill(syscall.SIGHUP)
		time.Sleep(time.Millisecond)
	}
	// A stop is read while the reload runs.
	kill(syscall.SIGTERM)
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a SIGTERM during a reload did not stop: the stop waited behind the reload")
	}
	time.Sleep(100 * time.Millisecond) // every SIGHUP delivered
	release <- struct{}{}
	waitReload("50 SIGHUPs during a reload")
	release <- struct{}{}
	select {
	case <-started:
		t.Fatal("a third reload: the SIGHUPs during the first did not coalesce into one")
	case <-time.After(500 * time.Millisecond):
	}
	close(release)
}

// TestSIGHUPsWhileExiting: SIGHUPs keep coming (a path watcher, a reload
// loop) while the appliance stops. Each must stay caught until the process
// is gone: one that met SIGHUP's default action in the last moments, once
// runMain had stopped catching signals on its way out, killed the process
// ("signal hangup"), which the unit's RestartForceExitStatus=SIGHUP turns
// into a restart of an appliance the operator stopped. The SIGHUPs are
// sent through the process's pidfd (os.Process), never to a reused PID.
func TestSIGHUPsWhileExiting(t *testing.T) {
	const runs = 8
	for i := range runs {
		p := startMain(t, nil, "--geneve-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
			"--gwlb-cidrs", "127.0.0.0/8", "--return-path", "bound",
			"--access-log", "", "--state-dir", t.TempDir(), "--drain-timeout", "1s")
		p.waitNotify("READY=1", 60*time.Second)
		p.signal(syscall.SIGTERM)
		sent := 0
		for p.cmd.Process.Signal(syscall.SIGHUP) == nil {
			sent++
		}
		if !p.exited(10 * time.Second) {
			t.Fatal("still running 10s after SIGTERM")
		}
		if s := p.status(); s != "exit 0" {
			t.Fatalf("run %d: SIGHUPs while stopping (%d sent): %s, want exit 0", i, sent, s)
		}
	}
}
