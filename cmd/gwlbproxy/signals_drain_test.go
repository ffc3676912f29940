package main

import (
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"
)

// servingWithFlow starts the appliance on the loopback net drainNet(third)
// names with --drain-timeout drain, and holds one TCP flow through it
// (GENEVE from gwlbsim) open to a destination that never ends it, so that
// a drain lasts as long as it is allowed to. The flow ends with the test.
func servingWithFlow(t *testing.T, third byte, drain string) *mainProc {
	t.Helper()
	policyFile := auditPolicy(t)
	addr, geneve := drainNet(third)
	ln, err := net.Listen("tcp", netip.AddrPortFrom(addr(3), 0).String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c
		}
	}()
	p := startMain(t, nil, "--config", policyFile, "--geneve-addr", geneve.String(), "--admin-addr", netip.AddrPortFrom(addr(1), 0).String(),
		"--gwlb-cidrs", "127.0.0.0/8", "--unsafe-allow-loopback", "--return-path", "bound",
		"--access-log", "", "--state-dir", t.TempDir(), "--drain-timeout", drain)
	p.waitLog(`msg="gwlbproxy serving"`, 30*time.Second)
	c := dialThrough(t, addr(2), geneve, ln.Addr().(*net.TCPAddr).AddrPort())
	t.Cleanup(func() { c.Close() })
	select {
	case sc := <-accepted:
		t.Cleanup(func() { sc.Close() })
	case <-time.After(10 * time.Second):
		t.Fatal("the destination never saw the connection")
	}
	return p
}

// TestSIGINTFirstDrainIsShort: a drain begun by SIGINT (an operator's
// Ctrl-C, systemctl kill -s INT) lasts at most 5 s (configuration.md,
// SIGINT), even with --drain-timeout 60s and a flow held open; it must not
// wait out the full drain meant for SIGTERM.
func TestSIGINTFirstDrainIsShort(t *testing.T) {
	p := servingWithFlow(t, 245, "60s")
	p.signal(syscall.SIGINT)
	began := time.Now()
	p.waitLog(`msg=draining .*active_flows=1`, 5*time.Second)
	if !p.exited(15 * time.Second) {
		t.Fatal("a drain begun by SIGINT still running 15s later (want at most 5s)")
	}
	if d := time.Since(began); d > fastDrain+1500*time.Millisecond {
		t.Errorf("exited %s after SIGINT, want within %s and the records' moment", d, fastDrain)
	}
	if s := p.status(); s != "exit 0" {
		t.Fatalf("after SIGINT: %s, want exit 0", s)
	}
}

// TestLateSIGINTDoesNotExtendDrain: a SIGINT during a SIGTERM drain ends it
// within 5 s only "if it would end later" (CutDrain). With --drain-timeout
// 2s the cut's deadline is past the drain's end, and the appliance must
// still exit within --drain-timeout and a second: systemd's TimeoutStopSec
// and the target group's deregistration delay are sized on that, and a
// kill past it loses the records not yet shipped.
func TestLateSIGINTDoesNotExtendDrain(t *testing.T) {
	const drain = 2 * time.Second
	p := servingWithFlow(t, 244, drain.String())
	p.signal(syscall.SIGTERM)
	began := time.Now()
	p.waitLog(`msg=draining .*active_flows=1`, 5*time.Second)
	p.signal(syscall.SIGINT)
	if !p.exited(15 * time.Second) {
		t.Fatalf("still running 15s after SIGTERM with --drain-timeout %s", drain)
	}
	if d := time.Since(began); d > drain+1500*time.Millisecond {
		t.Errorf("exited %s after SIGTERM with --drain-timeout %s and a SIGINT during it, want within --drain-timeout and a second", d, drain)
	}
	if s := p.status(); s != "exit 0" {
		t.Fatalf("after SIGTERM and SIGINT: %s, want exit 0", s)
	}
}
