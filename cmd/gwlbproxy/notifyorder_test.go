package main

import (
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestStopDuringPostStartReload: a SIGHUP caught during start-up makes a
// reload once the appliance is started, and a large policy makes that
// reload last a while. A SIGTERM that lands then is acted on at once, and
// systemd hears READY=1 before STOPPING=1. Before, the reload ran on
// runMain's goroutine before the stop signals were read: the stop waited
// behind it, and the stop goroutine's STOPPING=1 raced main's READY=1
// (systemd got STOPPING=1 first in some runs).
func TestStopDuringPostStartReload(t *testing.T) {
	policyFile := largePolicyFile(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	admin := ln.Addr().String()
	ln.Close()
	url, stalled, release := stallingIMDS(t)
	p := startMain(t, []string{"AWS_EC2_METADATA_SERVICE_ENDPOINT=" + url},
		"--config", policyFile, "--geneve-addr", "127.0.0.1:0", "--admin-addr", admin,
		"--access-log", "", "--state-dir", t.TempDir(), "--drain-timeout", "1s")
	select {
	case <-stalled:
	case <-time.After(30 * time.Second):
		t.Fatal("the appliance never asked instance metadata")
	}
	p.signal(syscall.SIGHUP)
	p.waitLog(`msg="signal received during start-up: the policy is reloaded once started"`, 5*time.Second)
	release()
	// READY=1 comes once start-up is over, and the start-up SIGHUP's
	// reload (about 200 ms, 2 s under -race: the policy took as long to
	// load) begins after it: the SIGTERM goes at once, inside the reload.
	// Before, the reload ran before READY=1, and the stop was read only
	// once it had ended.
	var order []string
	select {
	case m := <-p.notify:
		order = append(order, m)
	case <-time.After(30 * time.Second):
		t.Fatal("no READY=1 within 30s")
	}
	p.signal(syscall.SIGTERM)
	if !p.exited(20 * time.Second) {
		t.Fatal("still running 20s after SIGTERM")
	}
	if s := p.status(); s != "exit 0" {
		t.Fatalf("after SIGTERM: %s, want exit 0", s)
	}
	for len(p.notify) > 0 {
		order = append(order, <-p.notify)
	}
	if len(order) != 2 || order[0] != "READY=1" || order[1] != "STOPPING=1" {
		t.Errorf("systemd was told %q, want [READY=1 STOPPING=1]", order)
	}
	// One stream, in the order logged: the stop is read while the reload
	// runs, so the reload ends (if it does before the exit) after it.
	lg := p.log()
	stop, reloaded := strings.Index(lg, `msg="signal received" signal=terminated`), strings.Index(lg, `msg="policy reloaded"`)
	if stop < 0 {
		t.Fatal("the SIGTERM was never logged as read")
	}
	if reloaded >= 0 && reloaded < stop {
		t.Errorf("the SIGTERM was read only after the post-start reload ended: the stop waited behind it")
	}
}
