package appliance

// Helpers of the namespace end-to-end test: the topology, processes started
// inside namespaces, and the destination servers, which run in a copy of
// this test binary started with netnsServerEnv set (as cmd/gwlbsim/demo.sh
// starts it too: TestDemoBuildsTheServers holds the script to this package).

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/websocket"

	"github.com/gwlbproxy/gwlbproxy/internal/testenv"
)

// netnsServerEnv, when set to an IPv4 address, turns this test binary into
// the destination servers of the namespace test: HTTP on port 80 and DNS on
// port 53 (UDP and TCP) of that address. The servers print "ready" once listening and run
// until stdin closes (the test ended, even by a crash) or SIGTERM.
const netnsServerEnv = "GWLBPROXY_NETNS_SERVER"

// netnsTLSEnv, set besides netnsServerEnv to a directory, adds an HTTPS
// server (HTTP/1.1 and h2) for every PORT.crt and PORT.key pair in it: the
// certificate chain and the key, PEM, on that port of the same address.
const netnsTLSEnv = "GWLBPROXY_NETNS_TLS"

// The DNS server answers this name with its own address.
const netnsDNSName = "www.gwlbproxy.test."

// netnsDNSNames are all the names the DNS server answers with its own
// address: netnsDNSName, and the interception test's origins, which the
// destination check (destination_check: dns) looks up.
var netnsDNSNames = []string{netnsDNSName, "www.example.test.", "bank.example.test.", "evil.example.test."}

// netnsDNSAnswer answers q for whichever of netnsDNSNames it asks, and
// NXDOMAIN for any other name.
func netnsDNSAnswer(q []byte, self [4]byte) []byte {
	var resp []byte
	for _, name := range netnsDNSNames {
		if resp = dnsAnswer(q, name, self); len(resp) < 4 || resp[3]&0x0f != dnsNXDomain {
			return resp
		}
	}
	return resp
}

func init() {
	// An init, not a TestMain: the package's other tests need no setup, and
	// this runs before the testing package looks at flags.
	if addr := os.Getenv(netnsServerEnv); addr != "" {
		os.Exit(runNetnsServers(addr))
	}
}

func runNetnsServers(addr string) int {
	ip := net.ParseIP(addr).To4()
	if ip == nil {
		fmt.Fprintf(os.Stderr, "%s=%q: not an IPv4 address\n", netnsServerEnv, addr)
		return 2
	}
	ln, err := net.Listen("tcp4", net.JoinHostPort(addr, "80"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "HTTP listener:", err)
		return 1
	}
	pc, err := net.ListenPacket("udp4", net.JoinHostPort(addr, "53"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "DNS listener:", err)
		return 1
	}
	dnsLn, err := net.Listen("tcp4", net.JoinHostPort(addr, "53"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "DNS over TCP listener:", err)
		return 1
	}
	srv := &http.Server{Handler: netnsHTTPHandler("80"), ReadHeaderTimeout: 5 * time.Second}
	tlsServers, err := netnsTLSServers(addr, os.Getenv(netnsTLSEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, "HTTPS servers:", err)
		return 1
	}
	go srv.Serve(ln)
	go serveDNS(pc, [4]byte(ip))
	go serveDNSTCP(dnsLn, [4]byte(ip))
	fmt.Println("ready")

	stdinClosed := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(stdinClosed)
	}()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-stdinClosed:
	case <-sig:
	}
	srv.Close()
	for _, s := range tlsServers {
		s.Close()
	}
	pc.Close()
	dnsLn.Close()
	return 0
}

// netnsTLSServers starts the HTTPS servers netnsTLSEnv asks for ("": none).
func netnsTLSServers(addr, dir string) ([]*http.Server, error) {
	if dir == "" {
		return nil, nil
	}
	crts, err := filepath.Glob(filepath.Join(dir, "*.crt"))
	if err != nil || len(crts) == 0 {
		return nil, fmt.Errorf("no PORT.crt in %s (%v)", dir, err)
	}
	var servers []*http.Server
	for _, crt := range crts {
		port := strings.TrimSuffix(filepath.Base(crt), ".crt")
		cert, err := tls.LoadX509KeyPair(crt, strings.TrimSuffix(crt, ".crt")+".key")
		if err != nil {
			return nil, fmt.Errorf("port %s: %w", port, err)
		}
		ln, err := net.Listen("tcp4", net.JoinHostPort(addr, port))
		if err != nil {
			return nil, err
		}
		srv := &http.Server{
			Handler:           netnsHTTPHandler(port),
			ReadHeaderTimeout: 5 * time.Second,
			TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}},
		}
		go srv.ServeTLS(ln, "", "")
		servers = append(servers, srv)
	}
	return servers, nil
}

// netnsHTTPHandler serves, for the server on port, /hello, which names the
// peer it sees (the appliance, which re-originates every flow), the port it
// listens on, the Host it received and the protocol; /hello-count, how many
// /hello requests arrived; /slow, which streams n lines ms apart and then
// "done", for the drain test; and /ws, a WebSocket echo.
func netnsHTTPHandler(port string) http.Handler {
	mux := http.NewServeMux()
	var hellos atomic.Int64
	mux.HandleFunc("GET /hello", func(w http.ResponseWriter, r *http.Request) {
		hellos.Add(1)
		fmt.Fprintf(w, "hello from srv; you are %s; port %s; host %s; proto %s\n", r.RemoteAddr, port, r.Host, r.Proto)
	})
	mux.Handle("/ws", websocket.Handler(func(c *websocket.Conn) {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = io.Copy(c, c)
	}))
	mux.HandleFunc("GET /hello-count", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, hellos.Load())
	})
	mux.HandleFunc("GET /slow", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		n, ms = min(max(n, 1), 100), min(max(ms, 1), 2000)
		fl := w.(http.Flusher)
		for i := range n {
			fmt.Fprintf(w, "chunk %d\n", i)
			fl.Flush()
			select {
			case <-time.After(time.Duration(ms) * time.Millisecond):
			case <-r.Context().Done():
				return
			}
		}
		fmt.Fprintln(w, "done")
	})
	return mux
}

func serveDNS(pc net.PacketConn, self [4]byte) {
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		if resp := netnsDNSAnswer(buf[:n], self); resp != nil {
			_, _ = pc.WriteTo(resp, from)
		}
	}
}

// serveDNSTCP answers DNS over TCP: each message is preceded by its length
// in two bytes (RFC 1035 4.2.2).
func serveDNSTCP(ln net.Listener, self [4]byte) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			var hdr [2]byte
			for {
				if _, err := io.ReadFull(c, hdr[:]); err != nil {
					return
				}
				q := make([]byte, binary.BigEndian.Uint16(hdr[:]))
				if _, err := io.ReadFull(c, q); err != nil {
					return
				}
				resp := netnsDNSAnswer(q, self)
				if resp == nil {
					return
				}
				if _, err := c.Write(binary.BigEndian.AppendUint16(nil, uint16(len(resp)))); err != nil {
					return
				}
				if _, err := c.Write(resp); err != nil {
					return
				}
			}
		}()
	}
}

// DNS constants (RFC 1035).
const (
	dnsTypeA    = 1
	dnsClassIN  = 1
	dnsFormErr  = 1
	dnsNXDomain = 3
)

// dnsAnswer builds the response to query q: an A record with addr for name
// (case-insensitive), NOERROR without answers for other types of name, and
// NXDOMAIN for any other name. It returns nil for what is not a query.
func dnsAnswer(q []byte, name string, addr [4]byte) []byte {
	if len(q) < 12 || q[2]&0x80 != 0 {
		return nil
	}
	resp := make([]byte, 12, 512)
	copy(resp[0:2], q[0:2])                 // ID
	resp[2] = 0x80 | 0x04 | q[2]&0x79       // QR, AA, the query's opcode and RD
	binary.BigEndian.PutUint16(resp[4:], 1) // QDCOUNT
	formErr := func() []byte {
		resp[3] = dnsFormErr
		binary.BigEndian.PutUint16(resp[4:], 0)
		return resp[:12]
	}
	if binary.BigEndian.Uint16(q[4:6]) != 1 {
		return formErr()
	}
	// The question: labels up to the root, then type and class. Queries do
	// not compress names.
	var qname strings.Builder
	off := 12
	for {
		if off >= len(q) {
			return formErr()
		}
		l := int(q[off])
		if l == 0 {
			off++
			break
		}
		if l > 63 || off+1+l > len(q) {
			return formErr()
		}
		qname.Write(q[off+1 : off+1+l])
		qname.WriteByte('.')
		off += 1 + l
	}
	if off+4 > len(q) {
		return formErr()
	}
	qtype, qclass := binary.BigEndian.Uint16(q[off:]), binary.BigEndian.Uint16(q[off+2:])
	resp = append(resp, q[12:off+4]...)
	switch {
	case !strings.EqualFold(qname.String(), name):
		resp[3] = dnsNXDomain
	case qtype == dnsTypeA && qclass == dnsClassIN:
		binary.BigEndian.PutUint16(resp[6:], 1) // ANCOUNT
		resp = append(resp, 0xc0, 12)           // the name: a pointer to the question's
		resp = binary.BigEndian.AppendUint16(resp, dnsTypeA)
		resp = binary.BigEndian.AppendUint16(resp, dnsClassIN)
		resp = binary.BigEndian.AppendUint32(resp, 60) // TTL
		resp = binary.BigEndian.AppendUint16(resp, 4)
		resp = append(resp, addr[:]...)
	}
	return resp
}

// requireNetns skips the test unless it can build namespaces and run the
// client tools; with GWLBPROXY_PRIVILEGED_TESTS=1 it fails it instead.
func requireNetns(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t, "namespace tests need root: they create network namespaces, veth pairs and a TUN device")
	if out, err := exec.Command("ip", "netns", "list").CombinedOutput(); err != nil {
		testenv.RequirePrivileged(t, fmt.Sprintf("namespace tests need `ip netns` (iproute2) and root: `ip netns list` fails: %v %s", err, bytes.TrimSpace(out)))
	}
	for _, tool := range []string{"curl", "dig", "ping", "sysctl", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.RequirePrivileged(t, fmt.Sprintf("namespace tests need %s in PATH (apt-get install curl dnsutils iputils-ping procps)", tool))
		}
	}
}

// buildBinaries builds gwlbproxy and gwlbsim into a temporary directory.
func buildBinaries(t *testing.T) (appliance, sim string) {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", dir+string(filepath.Separator),
		"github.com/gwlbproxy/gwlbproxy/cmd/gwlbproxy", "github.com/gwlbproxy/gwlbproxy/cmd/gwlbsim")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the binaries: %v\n%s", err, out)
	}
	return filepath.Join(dir, "gwlbproxy"), filepath.Join(dir, "gwlbsim")
}

// topology is the three namespaces of the test.
type topology struct {
	client, app, srv string
}

// newTopology creates client, app and srv namespaces wired by two veth
// pairs; everything lives and dies with the namespaces, and none of it
// touches the host's own namespace.
func newTopology(t *testing.T) *topology {
	t.Helper()
	suffix := fmt.Sprintf("%08x", rand.Uint32())
	tp := &topology{client: "gwlbt-client-" + suffix, app: "gwlbt-app-" + suffix, srv: "gwlbt-srv-" + suffix}
	for _, ns := range []string{tp.client, tp.app, tp.srv} {
		mustRun(t, "ip", "netns", "add", ns)
		t.Cleanup(func() {
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				t.Errorf("deleting namespace %s: %v %s", ns, err, out)
			}
		})
	}
	for _, args := range [][]string{
		// The veth pairs are created inside the namespaces: their fixed
		// names cannot clash with the host's or a parallel run's.
		{"-n", tp.client, "link", "add", "to-app", "mtu", "9001", "type", "veth", "peer", "name", "to-client", "mtu", "9001", "netns", tp.app},
		{"-n", tp.app, "link", "add", "to-srv", "type", "veth", "peer", "name", "to-app", "netns", tp.srv},
		{"-n", tp.client, "addr", "add", netnsSimAddr + "/24", "dev", "to-app"},
		{"-n", tp.app, "addr", "add", netnsApplianceAddr + "/24", "dev", "to-client"},
		{"-n", tp.app, "addr", "add", netnsAppSrvAddr + "/24", "dev", "to-srv"},
		{"-n", tp.srv, "addr", "add", netnsSrvAddr + "/24", "dev", "to-app"},
		{"-n", tp.client, "link", "set", "lo", "up"},
		{"-n", tp.app, "link", "set", "lo", "up"},
		{"-n", tp.srv, "link", "set", "lo", "up"},
		{"-n", tp.client, "link", "set", "to-app", "up"},
		{"-n", tp.app, "link", "set", "to-client", "up"},
		{"-n", tp.app, "link", "set", "to-srv", "up"},
		{"-n", tp.srv, "link", "set", "to-app", "up"},
	} {
		mustRun(t, "ip", args...)
	}
	for _, ns := range []string{tp.client, tp.app, tp.srv} {
		// No namespace forwards: the appliance terminates every flow in
		// userspace and re-originates it from its own address.
		tp.sysctl(t, ns, "net.ipv4.ip_forward=0")
	}
	// The kernel would route IPv6 router solicitations and MLD reports into
	// the TUN device; IPv6 is not under test here, so keep it quiet.
	tp.sysctl(t, tp.client, "net.ipv6.conf.all.disable_ipv6=1")
	tp.sysctl(t, tp.client, "net.ipv6.conf.default.disable_ipv6=1")
	// Per namespace: lets the unprivileged ICMP sockets of the appliance's
	// echo relay exist.
	tp.sysctl(t, tp.app, "net.ipv4.ping_group_range=0 2147483647")
	return tp
}

func (tp *topology) sysctl(t *testing.T, ns, setting string) {
	t.Helper()
	mustRun(t, "ip", "netns", "exec", ns, "sysctl", "-q", "-w", setting)
}

// routeClientThroughTUN waits for gwlbsim's TUN device in the client
// namespace, then gives it the client's address and the default route. The
// simulator's own address stays reachable over the veth (a more specific
// route), so only the client's traffic enters the tunnel.
func (tp *topology) routeClientThroughTUN(t *testing.T, dev string, sim *nsProc) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if exec.Command("ip", "-n", tp.client, "link", "show", dev).Run() == nil {
			break
		}
		if sim.exited() || time.Now().After(deadline) {
			t.Fatalf("gwlbsim's TUN device %s did not appear in %s:\n%s", dev, tp.client, sim.logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
	mustRun(t, "ip", "-n", tp.client, "addr", "add", netnsClientAddr+"/32", "dev", dev)
	mustRun(t, "ip", "-n", tp.client, "link", "set", dev, "up")
	mustRun(t, "ip", "-n", tp.client, "route", "add", "default", "dev", dev, "src", netnsClientAddr)
	// What the test relies on: the servers only through the tunnel, the
	// appliance directly.
	if out := mustRun(t, "ip", "-n", tp.client, "route", "get", netnsSrvAddr); !strings.Contains(out, "dev "+dev+" ") {
		t.Fatalf("client namespace routes %s outside the tunnel: %s", netnsSrvAddr, out)
	}
	if out := mustRun(t, "ip", "-n", tp.client, "route", "get", netnsApplianceAddr); !strings.Contains(out, "dev to-app ") {
		t.Fatalf("client namespace routes the appliance %s not over the veth: %s", netnsApplianceAddr, out)
	}
}

func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// cmdResult is the outcome of a command run to completion.
type cmdResult struct {
	stdout, stderr string
	code           int // exit code; -1 if it did not exit on its own
	elapsed        time.Duration
}

func (r cmdResult) String() string {
	return fmt.Sprintf("exit %d after %s\nstdout: %s\nstderr: %s", r.code, r.elapsed.Round(time.Millisecond), r.stdout, r.stderr)
}

// inNS runs a command in namespace ns, killing it after 20 s. It never
// fails the test itself (it runs on helper goroutines too): a command that
// could not run or was killed has code -1 and says why in stderr.
func inNS(ns string, args ...string) cmdResult {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := cmdResult{stdout: stdout.String(), stderr: stderr.String(), elapsed: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		r.code = ee.ExitCode()
	case ctx.Err() != nil:
		r.code, r.stderr = -1, r.stderr+"\n(killed after 20s)"
	default:
		r.code, r.stderr = -1, r.stderr+"\n("+err.Error()+")"
	}
	return r
}

// nsProc is a long-running process inside a namespace. `ip netns exec`
// execs the program itself, so signals reach it directly.
type nsProc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error // Wait's result, once done is closed
	log  *lockedBuffer
	at   time.Time // when it exited
}

// lockedBuffer collects a process's output; exec copies into it from its
// own goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startInNS starts a process in namespace ns with stdout going to stdout
// (nil: its log) and stderr to its log. The test's cleanup stops it:
// SIGTERM, then SIGKILL after 5 s.
func startInNS(t *testing.T, name, ns string, stdout io.Writer, env []string, stdin io.Reader, bin string, args ...string) *nsProc {
	t.Helper()
	p := &nsProc{name: name, done: make(chan struct{}), log: &lockedBuffer{}}
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", ns, bin}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr, p.cmd.Stdin = stdout, p.log, stdin
	if stdout == nil {
		p.cmd.Stdout = p.log
	}
	if env != nil {
		p.cmd.Env = append(os.Environ(), env...)
	}
	// Should the test binary die without running its cleanups, the kernel
	// kills the process instead of leaving it in the namespace.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		p.at = time.Now()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop(5 * time.Second)
		if t.Failed() {
			t.Logf("%s output:\n%s", name, p.logs())
		}
	})
	return p
}

func (p *nsProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *nsProc) logs() string { return p.log.String() }

// signal sends sig unless the process has exited.
func (p *nsProc) signal(sig os.Signal) error {
	if p.exited() {
		return fmt.Errorf("%s already exited: %v", p.name, p.err)
	}
	return p.cmd.Process.Signal(sig)
}

// wait waits up to d for the process to exit and returns its exit code, or
// -1 if it is still running.
func (p *nsProc) wait(d time.Duration) int {
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(d):
		return -1
	}
}

// stop ends the process: SIGTERM, then SIGKILL if it lingers past grace.
func (p *nsProc) stop(grace time.Duration) {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if p.wait(grace) >= 0 {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// startServers runs the HTTP and DNS servers in namespace ns on addr and
// waits until they listen. env adds to their environment (netnsTLSEnv).
func startServers(t *testing.T, ns, addr string, env ...string) *nsProc {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatalf("finding the test binary: %v", err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	// stdin stays open as long as the test runs; its end tells the servers
	// to stop even if the test dies without cleanup.
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inW.Close() })
	p := startInNS(t, "servers", ns, pw, append([]string{netnsServerEnv + "=" + addr}, env...), inR, self)
	pw.Close()
	inR.Close()
	ready := make(chan string, 1)
	go func() {
		defer pr.Close()
		sc := bufio.NewScanner(pr)
		if sc.Scan() {
			ready <- sc.Text()
		}
		close(ready)
		for sc.Scan() {
		}
	}()
	select {
	case line := <-ready:
		if line != "ready" {
			t.Fatalf("servers did not start (first line %q):\n%s", line, p.logs())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("servers not ready after 10s:\n%s", p.logs())
	}
	return p
}
