package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack/gwlbsim"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// TestClosedStdoutDoesNotKill runs the real binary with the default
// --access-log - and its stdout a pipe whose reader goes away (a log
// collector restarted): the next record's write meets a closed pipe. The
// appliance must live on, counting the record as failed, not die of
// SIGPIPE with every flow it relays. Everything is on loopback: GENEVE from
// a simulator on 127.0.0.1, flows denied by policy, so nothing leaves.
func TestClosedStdoutDoesNotKill(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("builds the gwlbproxy binary: needs the go command on PATH")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "gwlbproxy")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, goTool, "build", "-o", bin, "github.com/gwlbproxy/gwlbproxy/cmd/gwlbproxy").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	policy := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policy, []byte("policy:\n  default: deny\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	geneve := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t, "udp"))
	admin := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t, "tcp")).String()

	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	var stderr bytes.Buffer
	cmd := exec.Command(bin, "--geneve-addr", geneve.String(), "--admin-addr", admin,
		"--gwlb-cidrs", "127.0.0.1/32", "--state-dir", filepath.Join(dir, "state"),
		"--config", policy, "--drain-timeout", "1s", "--record-stall", "1s")
	cmd.Stdout, cmd.Stderr = pw, &stderr
	if err := cmd.Start(); err != nil {
		pw.Close()
		t.Fatal(err)
	}
	pw.Close() // the child holds the only write end
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	defer func() {
		if !stopped {
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("gwlbproxy's stderr:\n%s", stderr.String())
		}
	}()

	if err := waitStats(admin, exited, 20*time.Second, func(records.Stats) bool { return true }); err != nil {
		t.Fatalf("the appliance did not start: %v", err)
	}
	sim, err := gwlbsim.New(gwlbsim.Config{Addr: netip.MustParseAddr("127.0.0.1"), ListenPort: freePort(t, "udp"), Appliance: geneve, Senders: 1})
	if err != nil {
		t.Fatalf("GWLB simulator: %v", err)
	}
	defer sim.Close()
	client, err := sim.Endpoint(0x0123456789abcdef, 0x1111222233334444).NewClientStack(netip.MustParseAddr("10.0.0.5"))
	if err != nil {
		t.Fatal(err)
	}
	// A flow to a documentation address, denied by policy: one record.
	flow := func(port uint16) {
		t.Helper()
		c, err := client.DialUDP(netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), port))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
	}

	// Records reach stdout while it is read.
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	flow(1000)
	select {
	case l := <-lines:
		if !strings.Contains(l, `"action":"deny"`) {
			t.Fatalf("stdout: %q, want a deny record", l)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no record on stdout")
	}

	// The reader goes away; more flows come, each a record for stdout.
	pr.Close()
	for i := range 5 {
		flow(uint16(1001 + i))
		time.Sleep(20 * time.Millisecond)
	}
	err = waitStats(admin, exited, 10*time.Second, func(st records.Stats) bool {
		return st.Failed > 0 && st.SinkErrors > 0 && strings.Contains(st.LastError, "broken pipe")
	})
	if err != nil {
		t.Fatalf("after stdout closed: %v", err)
	}
	// Failing past --record-stall (1s), the health check says so.
	for i := 0; ; i++ {
		flow(uint16(2000 + i))
		code, body := health(admin)
		if code == http.StatusServiceUnavailable && strings.Contains(body, "sink failing") {
			break
		}
		if i == 100 {
			t.Fatalf("health check: %d %q, want 503 naming the failing sink", code, body)
		}
		time.Sleep(50 * time.Millisecond)
	}

	stopped = true
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signaled() {
			t.Fatalf("the appliance died of %v while stopping", ee.Sys().(syscall.WaitStatus).Signal())
		}
	case <-time.After(15 * time.Second):
		cmd.Process.Kill()
		<-exited
		t.Fatal("the appliance did not stop within 15s of SIGTERM")
	}
}

// waitStats polls the admin listener's /stats until ok holds for its
// records, the process exits, or d passes.
func waitStats(admin string, exited chan error, d time.Duration, ok func(records.Stats) bool) error {
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	deadline := time.Now().Add(d)
	var last error
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			exited <- err
			return fmt.Errorf("the process exited: %v (%v)", err, last)
		default:
		}
		var st struct {
			Records records.Stats `json:"records"`
		}
		resp, err := c.Get("http://" + admin + "/stats")
		if err == nil {
			err = json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
			if err == nil && ok(st.Records) {
				return nil
			}
			if err == nil {
				err = fmt.Errorf("records %+v", st.Records)
			}
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("not within %v: %v", d, last)
}

// health returns the health check's status and body, or 0.
func health(admin string) (int, string) {
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := c.Get("http://" + admin + "/")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return resp.StatusCode, b.String()
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T, network string) uint16 {
	t.Helper()
	var a net.Addr
	switch network {
	case "udp":
		c, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		a = c.LocalAddr()
		c.Close()
	default:
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		a = l.Addr()
		l.Close()
	}
	return uint16(netip.MustParseAddrPort(a.String()).Port())
}
