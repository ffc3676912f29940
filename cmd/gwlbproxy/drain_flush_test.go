package main

import (
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestSIGINTCutsFlush: a SIGINT that arrives once a SIGTERM's drain has no
// flows left, while the last records are being shipped to a CloudWatch
// endpoint that accepts and never answers (on loopback), still ends the
// process within 5 s and the second for the records. Before, the cut was
// only read while flows were open: the flush kept the 40 s drain's end and
// the process exited about 39 s after the SIGINT.
func TestSIGINTCutsFlush(t *testing.T) {
	policyFile := auditPolicy(t)
	addr, geneve := drainNet(252) // the CloudWatch endpoint on .4

	dst := closingDest(t, addr(3))
	cw, err := net.Listen("tcp", netip.AddrPortFrom(addr(4), 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer cw.Close()
	var mu sync.Mutex
	var held []net.Conn // accepted, never answered
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	}()
	go func() {
		for {
			c, err := cw.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()

	// GORACE: under -race, a process sleeps a second at exit by default.
	env := []string{"AWS_ACCESS_KEY_ID=test", "AWS_SECRET_ACCESS_KEY=test", "AWS_EC2_METADATA_DISABLED=true", "GORACE=atexit_sleep_ms=0"}
	p := startMain(t, env,
		"--config", policyFile, "--geneve-addr", geneve.String(), "--admin-addr", netip.AddrPortFrom(addr(1), 0).String(),
		"--gwlb-cidrs", "127.0.0.0/8", "--unsafe-allow-loopback", "--return-path", "bound",
		"--access-log", "", "--state-dir", t.TempDir(), "--drain-timeout", "40s",
		"--cloudwatch-group", "g", "--cloudwatch-stream", "s", "--cloudwatch-region", "us-east-1",
		"--cloudwatch-endpoint", "http://"+cw.Addr().String())
	p.waitLog(`msg="gwlbproxy serving"`, 30*time.Second)

	dialThrough(t, addr(2), geneve, dst).Close()
	time.Sleep(2 * time.Second) // the flow ends; its record waits for CloudWatch

	p.signal(syscall.SIGTERM)
	p.waitLog(`msg=draining`, 5*time.Second)
	time.Sleep(1500 * time.Millisecond) // no flows: the drain is flushing
	p.signal(syscall.SIGINT)
	began := time.Now()
	if !p.exited(15 * time.Second) {
		t.Fatal("still draining 15s after SIGINT")
	}
	// Within 5 s, and the second for the records (and a moment for a
	// loaded machine).
	if d := time.Since(began); d > 7*time.Second {
		t.Errorf("exited %s after SIGINT, want within 6s", d)
	}
	if s := p.status(); s != "exit 0" {
		t.Fatalf("after SIGINT: %s, want exit 0", s)
	}
	p.waitLog(`msg=stopped`, 0)
}
