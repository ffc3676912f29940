package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/netstack/gwlbsim"
)

// asMainEnv makes the test binary run main itself, with its arguments: the
// tests below start the appliance as its own process, so that signals are
// delivered and handled as in production.
const asMainEnv = "GWLBPROXY_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(asMainEnv) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// mainProc is gwlbproxy running as a process of its own.
type mainProc struct {
	t      *testing.T
	cmd    *exec.Cmd
	done   chan struct{} // closed when it has exited
	mu     sync.Mutex
	logs   []string // its stderr, a line each
	notify chan string
}

// startMain starts gwlbproxy with args and the environment env added to
// the test's, and NOTIFY_SOCKET set to a socket of the test's.
func startMain(t *testing.T, env []string, args ...string) *mainProc {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "notify")
	nc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	p := &mainProc{t: t, done: make(chan struct{}), notify: make(chan string, 16)}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := nc.Read(buf)
			if err != nil {
				return
			}
			p.notify <- string(buf[:n])
		}
	}()
	p.cmd = exec.Command(os.Args[0], args...)
	p.cmd.Env = append(append(os.Environ(), asMainEnv+"=1", "NOTIFY_SOCKET="+sock), env...)
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			p.logs = append(p.logs, sc.Text())
			p.mu.Unlock()
		}
		_ = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("gwlbproxy's log:\n%s", p.log())
		}
	})
	return p
}

func (p *mainProc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.logs, "\n")
}

// waitLog returns the first log line matching re, waiting up to d for it.
func (p *mainProc) waitLog(re string, d time.Duration) string {
	p.t.Helper()
	rx := regexp.MustCompile(re)
	for end := time.Now().Add(d); ; {
		p.mu.Lock()
		for _, l := range p.logs {
			if rx.MatchString(l) {
				p.mu.Unlock()
				return l
			}
		}
		p.mu.Unlock()
		if time.Now().After(end) {
			p.t.Fatalf("no log line matching %q within %s", re, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (p *mainProc) signal(sig os.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("signalling %v: %v", sig, err)
	}
}

// exited reports whether the process has exited within d.
func (p *mainProc) exited(d time.Duration) bool {
	select {
	case <-p.done:
		return true
	case <-time.After(d):
		return false
	}
}

// status describes how the process ended: "exit 0", "signal hangup".
func (p *mainProc) status() string {
	ws := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		return "signal " + ws.Signal().String()
	}
	return fmt.Sprintf("exit %d", ws.ExitStatus())
}

// cutBySIGINT sends SIGINT to a draining process and checks that it exits
// 0 within 5 s and the second the records get, saying the drain was cut.
func (p *mainProc) cutBySIGINT(t *testing.T) {
	t.Helper()
	p.signal(syscall.SIGINT)
	began := time.Now()
	if !p.exited(10 * time.Second) {
		t.Fatal("still draining 10s after SIGINT")
	}
	if d := time.Since(began); d > 6500*time.Millisecond {
		t.Errorf("exited %s after SIGINT, want within 6s", d)
	}
	if s := p.status(); s != "exit 0" {
		t.Fatalf("after SIGINT: %s, want exit 0", s)
	}
	p.waitLog(`msg="drain cut short"`, 0)
}

// waitNotify waits up to d for the datagram state on NOTIFY_SOCKET.
func (p *mainProc) waitNotify(state string, d time.Duration) {
	p.t.Helper()
	timer := time.After(d)
	for {
		select {
		case got := <-p.notify:
			if got == state {
				return
			}
		case <-timer:
			p.t.Fatalf("no %s on NOTIFY_SOCKET within %s", state, d)
		}
	}
}

// stallingIMDS is instance metadata (IMDSv2) on loopback that holds the
// first session-token request until release is called, then answers: the
// VPC is 127.0.0.0/8. stalled is closed when that request has arrived.
func stallingIMDS(t *testing.T) (url string, stalled chan struct{}, release func()) {
	stalled, released := make(chan struct{}), make(chan struct{})
	var once sync.Once
	const token, mac = "AQAEAFake-token==", "0e:1f:2a:3b:4c:5d"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && r.URL.Path == "/latest/api/token" {
			once.Do(func() { close(stalled) })
			<-released
			w.Header().Set("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", r.Header.Get("X-Aws-Ec2-Metadata-Token-Ttl-Seconds"))
			fmt.Fprint(w, token)
			return
		}
		if r.Header.Get("X-Aws-Ec2-Metadata-Token") != token {
			http.Error(w, "", http.StatusUnauthorized)
			return
		}
		switch r.URL.Path {
		case "/latest/meta-data/mac":
			fmt.Fprint(w, mac)
		case "/latest/meta-data/network/interfaces/macs/" + mac + "/vpc-ipv4-cidr-blocks":
			fmt.Fprint(w, "127.0.0.0/8")
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	var releaseOnce sync.Once
	release = func() { releaseOnce.Do(func() { close(released) }) }
	t.Cleanup(release)
	return srv.URL, stalled, release
}

// TestSignalsDuringStart: signals that arrive while the appliance starts
// (here: instance metadata is slow to answer) are the appliance's to
// handle, not the default actions. A SIGHUP is remembered and applied once
// started (the process lives on and serves, and says READY=1 to systemd);
// a SIGTERM stops it at once with status 0. Before, a SIGHUP then killed
// it (signalled: systemd's Restart=on-failure leaves it down).
func TestSignalsDuringStart(t *testing.T) {
	policyFile := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(policyFile, []byte("policy:\n  mode: audit\n  default: allow\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	start := func(t *testing.T) (*mainProc, func()) {
		url, stalled, release := stallingIMDS(t)
		p := startMain(t, []string{"AWS_EC2_METADATA_SERVICE_ENDPOINT=" + url},
			"--config", policyFile, "--geneve-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
			"--access-log", "", "--state-dir", t.TempDir(), "--drain-timeout", "2s")
		select {
		case <-stalled:
		case <-time.After(30 * time.Second):
			t.Fatalf("the appliance never asked instance metadata\n%s", p.log())
		}
		return p, release
	}

	t.Run("SIGHUP", func(t *testing.T) {
		p, release := start(t)
		p.signal(syscall.SIGHUP)
		if p.exited(300 * time.Millisecond) {
			t.Fatalf("a SIGHUP during start-up ended the appliance: %s", p.status())
		}
		release()
		serving := p.waitLog(`msg="gwlbproxy serving"`, 10*time.Second)
		p.waitLog(`msg="policy reloaded"`, 5*time.Second)
		p.waitNotify("READY=1", 5*time.Second)
		admin := regexp.MustCompile(`admin=(\S+)`).FindStringSubmatch(serving)
		if admin == nil {
			t.Fatalf("no admin address in %q", serving)
		}
		resp, err := http.Get("http://" + admin[1] + "/")
		if err != nil {
			t.Fatalf("health check: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("health check: %s", resp.Status)
		}
		p.signal(syscall.SIGTERM)
		p.waitNotify("STOPPING=1", 5*time.Second)
		if !p.exited(10 * time.Second) {
			t.Fatal("no exit within 10s of SIGTERM")
		}
		if s := p.status(); s != "exit 0" {
			t.Fatalf("after SIGTERM: %s, want exit 0", s)
		}
	})

	t.Run("SIGTERM", func(t *testing.T) {
		p, _ := start(t) // instance metadata stays stalled
		p.signal(syscall.SIGTERM)
		if !p.exited(5 * time.Second) {
			t.Fatal("a SIGTERM during start-up: still running after 5s")
		}
		if s := p.status(); s != "exit 0" {
			t.Fatalf("a SIGTERM during start-up: %s, want exit 0", s)
		}
		if strings.Contains(p.log(), "gwlbproxy serving") {
			t.Fatal("the appliance served after a SIGTERM during start-up")
		}
	})
}

// TestSIGINTCutsDrain: a SIGINT during the long drain a SIGTERM began ends
// it within 5 s (plus the moment records take), as a drain begun by SIGINT
// would; a second SIGTERM does not. A client holds a TCP flow through the
// appliance (GENEVE from gwlbsim, on loopback), so the 60 s drain would
// otherwise last a minute. Before, the signal handler stopped reading
// after the first stop signal, and the SIGINT was ignored.
func TestSIGINTCutsDrain(t *testing.T) {
	policyFile := auditPolicy(t)
	addr, geneve := drainNet(251)

	ln, err := net.Listen("tcp", netip.AddrPortFrom(addr(3), 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c // held open: the flow outlives the drain's patience
		}
	}()

	p := startMain(t, nil, "--config", policyFile, "--geneve-addr", geneve.String(), "--admin-addr", netip.AddrPortFrom(addr(1), 0).String(),
		"--gwlb-cidrs", "127.0.0.0/8", "--unsafe-allow-loopback", "--return-path", "bound",
		"--access-log", "", "--state-dir", t.TempDir(), "--drain-timeout", "60s")
	p.waitLog(`msg="gwlbproxy serving"`, 30*time.Second)

	c := dialThrough(t, addr(2), geneve, ln.Addr().(*net.TCPAddr).AddrPort())
	defer c.Close()
	select {
	case sc := <-accepted:
		defer sc.Close()
	case <-time.After(10 * time.Second):
		t.Fatal("the destination never saw the connection")
	}

	p.signal(syscall.SIGTERM)
	p.waitLog(`msg=draining .*active_flows=1`, 5*time.Second)
	p.signal(syscall.SIGTERM) // again: ignored
	// Past the fastDrain a cut would allow, and its records' moment: a
	// second SIGTERM that cut the drain like a SIGINT would have ended it.
	if wait := fastDrain + 2*time.Second; p.exited(wait) {
		t.Fatalf("the drain ended with a flow open, %s after a second SIGTERM into a 60s drain: %s", wait, p.status())
	}
	p.cutBySIGINT(t)
	p.waitLog(`msg=stopped`, 0)
}

// auditPolicy writes a policy that allows everything, in audit mode, and
// returns its file.
func auditPolicy(t *testing.T) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(f, []byte("policy:\n  mode: audit\n  default: allow\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// drainNet is a loopback /24 of this process's, its third byte given so
// that tests running at once keep apart: the appliance on .1 (GENEVE's
// port, where gwlbsim sends and expects replies from), gwlbsim on .2, the
// destination on .3, whatever else a test needs from .4.
func drainNet(third byte) (addr func(byte) netip.Addr, geneve netip.AddrPort) {
	base := [4]byte{127, byte(1 + os.Getpid()%250), third, 0}
	addr = func(i byte) netip.Addr { b := base; b[3] = i; return netip.AddrFrom4(b) }
	return addr, netip.AddrPortFrom(addr(1), 6081)
}

// closingDest is a destination for a flow through the appliance: a TCP
// listener on a (port chosen by the system) that closes every connection
// it accepts, closed itself when the test ends.
func closingDest(t *testing.T, a netip.Addr) netip.AddrPort {
	t.Helper()
	ln := testnet.Serve(t, netip.AddrPortFrom(a, 0).String(), func(net.Conn) {})
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// dialThrough connects a client stack behind a gwlbsim on sim to dst,
// through the appliance listening for GENEVE on geneve; the simulator is
// closed when the test ends.
func dialThrough(t *testing.T, sim netip.Addr, geneve, dst netip.AddrPort) net.Conn {
	t.Helper()
	s, err := gwlbsim.New(gwlbsim.Config{Addr: sim, Appliance: geneve})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	client, err := s.Endpoint(0x0123456789abcdef, 0x1111222233334444).NewClientStack(netip.MustParseAddr("198.18.0.5"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.DialTCP(ctx, dst)
	if err != nil {
		t.Fatalf("connecting through the appliance: %v", err)
	}
	return c
}

// TestHelpExitsZero: asking for help is no error: the usage, with every
// flag, and exit status 0, as Go's flag package does for its own
// commands, so that `gwlbproxy --help && ...` in a script or an image
// build goes on. Flag errors keep status 2 (TestBadFlagValues).
func TestHelpExitsZero(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"-h"}, {"ca", "init", "-h"}} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cmd := exec.CommandContext(ctx, os.Args[0], args...)
		cmd.Env = append(os.Environ(), asMainEnv+"=1")
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			t.Errorf("%v: %v, want exit status 0\n%s", args, err, out)
			continue
		}
		if !strings.Contains(string(out), "Usage") && !strings.Contains(string(out), "usage") {
			t.Errorf("%v: no usage in the output:\n%s", args, out)
		}
	}
}
