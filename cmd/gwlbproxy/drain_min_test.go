package main

import (
	"io"
	"net"
	"net/http"
	"net/netip"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// startDrainMin starts gwlbproxy on drainNet(third) with a 30 s drain and
// extra flags, and returns it with its admin address once it serves.
func startDrainMin(t *testing.T, third byte, extra ...string) (p *mainProc, addr func(byte) netip.Addr, geneve netip.AddrPort, admin string) {
	t.Helper()
	addr, geneve = drainNet(third)
	// GORACE: under -race, a process sleeps a second at exit by default.
	p = startMain(t, []string{"GORACE=atexit_sleep_ms=0"}, append([]string{
		"--config", auditPolicy(t), "--geneve-addr", geneve.String(), "--admin-addr", netip.AddrPortFrom(addr(1), 0).String(),
		"--gwlb-cidrs", "127.0.0.0/8", "--unsafe-allow-loopback", "--return-path", "bound",
		"--access-log", "", "--state-dir", t.TempDir(), "--drain-timeout", "30s"}, extra...)...)
	serving := p.waitLog(`msg="gwlbproxy serving"`, 30*time.Second)
	m := regexp.MustCompile(`admin=(\S+)`).FindStringSubmatch(serving)
	if m == nil {
		t.Fatalf("no admin address in %q", serving)
	}
	return p, addr, geneve, m[1]
}

// TestDrainMin: on SIGTERM with no flow open, --drain-min holds the drain:
// the health check answers 503 and a new flow started meanwhile is relayed
// (the GWLB keeps sending new flows until its health checks have seen the
// 503), and the process exits once the minimum has passed, not before and
// not at the 30 s --drain-timeout. Before, the drain ended as soon as no
// flow was open: the process was gone within milliseconds, and the flows
// the GWLB sent meanwhile hit a closed port. With --drain-min 0 (the
// default) it still exits at once; a SIGINT during the minimum cuts it
// short as it cuts any drain, and a second SIGTERM does not.
func TestDrainMin(t *testing.T) {
	const drainMin = 2 * time.Second

	t.Run("held", func(t *testing.T) {
		p, addr, geneve, admin := startDrainMin(t, 248, "--drain-min", drainMin.String())
		echo := testnet.Serve(t, netip.AddrPortFrom(addr(3), 0).String(), func(c net.Conn) { _, _ = io.Copy(c, c) })

		p.signal(syscall.SIGTERM)
		began := time.Now()
		p.waitLog(`msg=draining .*active_flows=0 .*min=2s`, 5*time.Second)
		if code, body := health(admin); code != http.StatusServiceUnavailable || strings.TrimSpace(body) != "gwlbproxy: draining" {
			t.Fatalf("health check during the minimum: %d %q, want 503 draining", code, body)
		}
		// A flow that begins during the minimum is served end to end.
		c := dialThrough(t, addr(2), geneve, echo.Addr().(*net.TCPAddr).AddrPort())
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("after SIGTERM")); err != nil {
			t.Fatalf("writing on a flow begun during the minimum: %v", err)
		}
		buf := make([]byte, len("after SIGTERM"))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "after SIGTERM" {
			t.Fatalf("a flow begun during the minimum: read %q, %v", buf, err)
		}
		c.Close()
		if d := time.Since(began); d >= drainMin {
			t.Logf("the flow took until %s into the %s minimum (a loaded machine)", d, drainMin)
		} else if code, body := health(admin); code != http.StatusServiceUnavailable {
			t.Fatalf("health check later in the minimum: %d %q, want 503", code, body)
		}
		if !p.exited(drainMin + 10*time.Second) {
			t.Fatalf("still running %s after SIGTERM, with a %s minimum and no flow open", time.Since(began), drainMin)
		}
		if d := time.Since(began); d < drainMin {
			t.Fatalf("exited %s after SIGTERM, before the %s minimum had passed", d, drainMin)
		}
		if s := p.status(); s != "exit 0" {
			t.Fatalf("after the drain: %s, want exit 0", s)
		}
		p.waitLog(`msg="drain minimum passed"`, 0)
		p.waitLog(`msg=stopped`, 0)
	})

	t.Run("zero", func(t *testing.T) {
		p, _, _, _ := startDrainMin(t, 247)
		p.signal(syscall.SIGTERM)
		began := time.Now()
		if !p.exited(drainMin) {
			t.Fatalf("still running %s after SIGTERM with no --drain-min and no flow open", drainMin)
		}
		if s := p.status(); s != "exit 0" {
			t.Fatalf("after SIGTERM: %s, want exit 0", s)
		}
		t.Logf("exited %s after SIGTERM", time.Since(began).Round(time.Millisecond))
		if strings.Contains(p.log(), "drain minimum passed") {
			t.Fatal("a drain with no minimum logged one passing")
		}
	})

	t.Run("SIGINT", func(t *testing.T) {
		p, _, _, _ := startDrainMin(t, 246, "--drain-min", "25s")
		p.signal(syscall.SIGTERM)
		p.waitLog(`msg=draining .*min=25s`, 5*time.Second)
		p.signal(syscall.SIGTERM) // again: ignored, as in any drain
		if p.exited(2 * time.Second) {
			t.Fatalf("a second SIGTERM ended the minimum: %s", p.status())
		}
		p.cutBySIGINT(t)
	})
}
