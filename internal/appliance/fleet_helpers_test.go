package appliance

// Helpers of the fleet test: three appliances behind gwlbsim as a target
// group, sharing one CA from the Secrets Manager test endpoint and one
// CloudWatch Logs test endpoint, reached from inside the appliances'
// namespace.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gwlbproxy/gwlbproxy/certs/secretstest"
	"github.com/gwlbproxy/gwlbproxy/cwlogs/cwlogstest"
	"github.com/gwlbproxy/gwlbproxy/netstack/gwlbsim"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// The fleet's settings. Health checks every 200 ms, each given 200 ms,
// unhealthy after 3 failures, healthy again after 2 passes: a dead
// appliance (refusing connections) is out within about half a second,
// while a live one would have to stall for 600 ms on a busy machine.
const (
	fleetSize       = 3
	fleetGroup      = "/gwlbproxy/fleet"
	fleetSecret     = "gwlbproxy/fleet-ca"
	fleetSimAdmin   = "http://127.0.0.1:9081" // gwlbsim's admin listener, in the client namespace
	fleetDrain      = 8 * time.Second
	fleetFlush      = time.Second
	fleetInterval   = 200 * time.Millisecond
	fleetUnhealthyN = 3
	fleetHealthyN   = 2
	fleetDeregDelay = 30 * time.Second
	// The clients' source ports are counted up from here: below the
	// ephemeral range (32768-60999), so that no socket the kernel numbers
	// itself in the client's namespace can hold one first ("bind failed:
	// address already in use" from curl --local-port in a full run).
	fleetClientPort0 = 20001
)

// fleetApp is one appliance of the fleet.
type fleetApp struct {
	name      string // a, b, c
	addr      string // its address in the app namespace: GENEVE and admin
	stream    string // its CloudWatch log stream
	accessLog string
	proc      *nsProc
}

func (a *fleetApp) target() netip.AddrPort { return netip.MustParseAddrPort(a.addr + ":6081") }
func (a *fleetApp) admin() string          { return "http://" + a.addr + ":8080" }

// fleet is the running fleet.
type fleet struct {
	tp     *topology
	apps   []*fleetApp
	sim    *nsProc
	simOut *lockedBuffer
	cw     *cwlogstest.Server
	caPEM  []byte
	bin    string

	mu       sync.Mutex
	nextPort uint16
	// carrier maps each client port the test used to the appliance the
	// simulator sent its flow to when it began (-1: none, it failed), and
	// wantRecord says whether that appliance owes a record for it.
	carrier    map[uint16]int
	wantRecord map[uint16]bool
	// rebalanced is the client port of the flow Rebalance moved.
	rebalanced uint16
}

// newFleet builds the namespaces, the endpoints, three appliances and the
// simulator in front of them, and waits until the simulator finds every
// appliance healthy.
func newFleet(t *testing.T) *fleet {
	t.Helper()
	start := time.Now()
	applianceBin, simBin := buildBinaries(t)
	t.Logf("binaries built in %s", time.Since(start).Round(time.Millisecond))
	setup := time.Now()

	f := &fleet{bin: applianceBin, nextPort: fleetClientPort0, carrier: map[uint16]int{}, wantRecord: map[uint16]bool{}}
	f.tp = newTopology(t)
	startServers(t, f.tp.srv, netnsSrvAddr)

	// One CA for all, from Secrets Manager; one log group, a stream each.
	// Both endpoints listen inside the appliances' namespace, on its
	// loopback, and are served from this process.
	secretstest.SetEnv(t, secretstest.Region)
	sm := secretstest.NewServer(t)
	f.caPEM, _ = secretCA(t, sm, fleetSecret)
	f.cw = cwlogstest.NewServer(t)
	smURL := serveInNS(t, f.tp.app, sm)
	cwURL := serveInNS(t, f.tp.app, f.cw)

	work := t.TempDir()
	for i := range fleetSize {
		name := string(rune('a' + i))
		a := &fleetApp{
			name: name, addr: fmt.Sprintf("198.18.1.%d", 11+i), stream: "i-fleet-" + name,
			accessLog: filepath.Join(work, "access-"+name+".log"),
		}
		mustRun(t, "ip", "-n", f.tp.app, "addr", "add", a.addr+"/24", "dev", "to-client")
		a.proc = startInNS(t, "gwlbproxy-"+name, f.tp.app, nil, nil, nil, applianceBin,
			"--geneve-addr", a.addr+":6081", "--admin-addr", a.addr+":8080", "--gwlb-cidrs", netnsSimAddr+"/32",
			"--access-log", a.accessLog, "--state-dir", filepath.Join(work, "state-"+name),
			"--drain-timeout", fleetDrain.String(), "--idle-timeout", "2s", "--dial-timeout", "3s",
			"--ca-secret", fleetSecret, "--ca-secret-endpoint", smURL,
			"--cloudwatch-group", fleetGroup, "--cloudwatch-stream", a.stream, "--cloudwatch-endpoint", cwURL,
			"--cloudwatch-flush", fleetFlush.String())
		f.apps = append(f.apps, a)
	}
	for _, a := range f.apps {
		f.waitAppHealth(t, a, 200)
	}

	args := []string{"--addr", netnsSimAddr, "--tun", netnsTUN, "--senders", "8", "--admin-addr", strings.TrimPrefix(fleetSimAdmin, "http://"),
		"--health-port", "8080", "--health-interval", fleetInterval.String(), "--health-timeout", fleetInterval.String(),
		"--healthy-threshold", strconv.Itoa(fleetHealthyN), "--unhealthy-threshold", strconv.Itoa(fleetUnhealthyN),
		"--deregistration-delay", fleetDeregDelay.String()}
	for _, a := range f.apps {
		args = append(args, "--target", a.addr)
	}
	f.simOut = &lockedBuffer{}
	f.sim = startInNS(t, "gwlbsim", f.tp.client, f.simOut, nil, nil, simBin, args...)
	f.tp.routeClientThroughTUN(t, netnsTUN, f.sim)
	f.waitTargets(t, "every appliance healthy", func(ts map[string]gwlbsim.TargetStats) bool {
		for _, a := range f.apps {
			if ts[a.addr].State != gwlbsim.StateHealthy {
				return false
			}
		}
		return true
	})
	t.Logf("namespaces, %d appliances and the simulator ready in %s", fleetSize, time.Since(setup).Round(time.Millisecond))
	return f
}

// serveInNS serves h on a listener on the loopback of namespace ns and
// returns its URL. The socket is made by a thread that enters ns for that
// alone; sockets keep the namespace they were made in.
func serveInNS(t *testing.T, ns string, h http.Handler) string {
	t.Helper()
	ln, err := listenInNS(ns, "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listening in %s: %v", ns, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}

func listenInNS(ns, addr string) (net.Listener, error) {
	type result struct {
		ln  net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		defer self.Close()
		target, err := os.Open(filepath.Join("/run/netns", ns))
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("setns %s: %w", ns, err)}
			return
		}
		ln, lerr := net.Listen("tcp4", addr)
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			// The thread stays locked, in the wrong namespace: the runtime
			// ends it with this goroutine.
			if ln != nil {
				ln.Close()
			}
			ch <- result{err: fmt.Errorf("returning to the test's namespace: %w", err)}
			return
		}
		runtime.UnlockOSThread()
		ch <- result{ln, lerr}
	}()
	r := <-ch
	return r.ln, r.err
}

// waitAppHealth waits up to 10 s for a's own health check to answer code.
func (f *fleet) waitAppHealth(t *testing.T, a *fleetApp, code int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if got := f.appHealth(a); got == code {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("appliance %s's health check never answered %d:\n%s", a.name, code, a.proc.logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// appHealth is a's health check's status (0: no answer).
func (f *fleet) appHealth(a *fleetApp) int {
	r := inNS(f.tp.app, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", a.admin()+"/")
	code, _ := strconv.Atoi(strings.TrimSpace(r.stdout))
	return code
}

// appStats reads a's /stats.
func (f *fleet) appStats(t *testing.T, a *fleetApp) stats {
	t.Helper()
	r := inNS(f.tp.app, "curl", "-sS", "--max-time", "5", a.admin()+"/stats")
	var st stats
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("appliance %s's /stats: %v; %s", a.name, err, r)
	}
	return st
}

// simGet GETs path on the simulator's admin listener into v.
func (f *fleet) simGet(t *testing.T, path string, v any) {
	t.Helper()
	r := inNS(f.tp.client, "curl", "-sS", "--fail-with-body", "--max-time", "5", fleetSimAdmin+path)
	if r.code != 0 {
		t.Fatalf("gwlbsim GET %s: %s", path, r)
	}
	if err := json.Unmarshal([]byte(r.stdout), v); err != nil {
		t.Fatalf("gwlbsim GET %s: %v in %q", path, err, r.stdout)
	}
}

// simPost POSTs to path on the simulator's admin listener.
func (f *fleet) simPost(t *testing.T, path string) string {
	t.Helper()
	r := inNS(f.tp.client, "curl", "-sS", "--fail-with-body", "--max-time", "5", "-X", "POST", fleetSimAdmin+path)
	if r.code != 0 {
		t.Fatalf("gwlbsim POST %s: %s", path, r)
	}
	return r.stdout
}

// simStats is what the fleet test reads of gwlbsim's /stats (and of what
// it prints on exit).
type fleetSimStats struct {
	gwlbsim.Stats
	Targets []gwlbsim.TargetStats `json:"targets"`
	TUN     struct {
		SendErrors  uint64 `json:"send_errors"`
		ToDevice    uint64 `json:"to_device"`
		WriteErrors uint64 `json:"write_errors"`
	} `json:"tun"`
}

func (f *fleet) simStats(t *testing.T) fleetSimStats {
	t.Helper()
	var st fleetSimStats
	f.simGet(t, "/stats", &st)
	return st
}

// targets returns the simulator's targets by address.
func (f *fleet) targets(t *testing.T) map[string]gwlbsim.TargetStats {
	t.Helper()
	m := map[string]gwlbsim.TargetStats{}
	for _, ts := range f.simStats(t).Targets {
		m[ts.Addr.Addr().String()] = ts
	}
	return m
}

// waitTargets polls the simulator's targets until cond holds, at most 10 s.
func (f *fleet) waitTargets(t *testing.T, what string, cond func(map[string]gwlbsim.TargetStats) bool) map[string]gwlbsim.TargetStats {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ts := f.targets(t)
		if cond(ts) {
			return ts
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: targets %+v", what, ts)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// appIndex returns the index of the appliance at target address a, or -1.
func (f *fleet) appIndex(a netip.AddrPort) int {
	for i, app := range f.apps {
		if app.target() == a {
			return i
		}
	}
	return -1
}

// port hands out a client source port never used before in the test.
func (f *fleet) port() uint16 {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.nextPort
	f.nextPort++
	return p
}

// portTo returns a fresh client port whose new TCP flow to dst the
// simulator would send to appliance i now.
func (f *fleet) portTo(t *testing.T, i int, dst string) uint16 {
	t.Helper()
	return f.portsTo(t, i, 1, dst)[0]
}

// portsTo returns n fresh client ports whose new TCP flows to dst the
// simulator would send to appliance i now (the ports in between are
// skipped, never used).
func (f *fleet) portsTo(t *testing.T, i, n int, dst string) []uint16 {
	t.Helper()
	const batch = 64
	var out []uint16
	for range 20 {
		f.mu.Lock()
		base := f.nextPort
		f.nextPort += batch
		f.mu.Unlock()
		var routes []struct {
			Src      netip.AddrPort `json:"src"`
			Target   netip.AddrPort `json:"target"`
			Existing bool           `json:"existing"`
		}
		f.simGet(t, fmt.Sprintf("/route?proto=tcp&src=%s:%d&dst=%s&count=%d", netnsClientAddr, base, dst, batch), &routes)
		for _, r := range routes {
			if !r.Existing && f.appIndex(r.Target) == i && len(out) < n {
				out = append(out, r.Src.Port())
			}
		}
		if len(out) == n {
			return out
		}
	}
	t.Fatalf("found %d of %d client ports whose flows go to appliance %s", len(out), n, f.apps[i].name)
	return nil
}

// flowTargets returns, for each client port of a TCP flow to the servers,
// the index of the appliance its flow is on now (-1: dropped).
func (f *fleet) flowTargets(t *testing.T) map[uint16]int {
	t.Helper()
	var flows []gwlbsim.FlowInfo
	f.simGet(t, "/flows", &flows)
	m := map[uint16]int{}
	for _, fl := range flows {
		if fl.Proto == "tcp" && fl.Src.Addr().String() == netnsClientAddr {
			m[fl.Src.Port()] = f.appIndex(fl.Target)
		}
	}
	return m
}

// note records which appliance carried the flows from ports, as the
// simulator has them now, and whether each owes a record.
func (f *fleet) note(t *testing.T, ports []uint16, owesRecord func(port uint16) bool) map[uint16]int {
	t.Helper()
	now := f.flowTargets(t)
	got := map[uint16]int{}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range ports {
		i, ok := now[p]
		if !ok {
			i = -1
		}
		got[p] = i
		f.carrier[p] = i
		f.wantRecord[p] = i >= 0 && owesRecord(p)
	}
	return got
}

// fleetCurl is a curl run from the client namespace from source port
// port: its exit code, body and HTTP status.
type fleetCurl struct {
	cmdResult
	port   uint16
	status int
	body   string
}

const fleetCurlMarker = "\n--fleet-curl-status-- "

func (f *fleet) curl(port uint16, args ...string) fleetCurl {
	r := inNS(f.tp.client, append([]string{"curl", "-sS", "--max-time", "10", "--local-port", strconv.Itoa(int(port)),
		"-w", fleetCurlMarker + "%{http_code}"}, args...)...)
	c := fleetCurl{cmdResult: r, port: port, body: r.stdout}
	if i := strings.LastIndex(r.stdout, fleetCurlMarker); i >= 0 {
		c.body = r.stdout[:i]
		c.status, _ = strconv.Atoi(strings.TrimSpace(r.stdout[i+len(fleetCurlMarker):]))
	}
	return c
}

func (c fleetCurl) String() string {
	return fmt.Sprintf("port %d: status %d, %s", c.port, c.status, c.cmdResult)
}

// curlAll runs one curl per port, at most 4 at a time, and returns the
// results in the ports' order.
func (f *fleet) curlAll(ports []uint16, args func(port uint16) []string) []fleetCurl {
	out := make([]fleetCurl, len(ports))
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	for i, p := range ports {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			out[i] = f.curl(p, args(p)...)
		}()
	}
	wg.Wait()
	return out
}

func hello(uint16) []string { return []string{"http://" + netnsSrvAddr + "/hello"} }

// slowDownload is a curl streaming /slow in the background.
type slowDownload struct {
	port  uint16
	cmd   *exec.Cmd
	lines chan string
	done  chan error
	at    time.Time // when it exited
	errb  *lockedBuffer
}

// startSlow starts curl -N from port for /slow with n lines ms apart,
// with extra curl arguments, and waits for its first line.
func (f *fleet) startSlow(t *testing.T, port uint16, n, ms int, extra ...string) *slowDownload {
	t.Helper()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"netns", "exec", f.tp.client, "curl", "-sS", "-N", "--max-time", "30", "--local-port", strconv.Itoa(int(port))}, extra...)
	args = append(args, fmt.Sprintf("http://%s/slow?n=%d&ms=%d", netnsSrvAddr, n, ms))
	s := &slowDownload{port: port, cmd: exec.Command("ip", args...), lines: make(chan string, n+2), done: make(chan error, 1), errb: &lockedBuffer{}}
	s.cmd.Stdout, s.cmd.Stderr = pw, s.errb
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("starting the slow download: %v", err)
	}
	pw.Close()
	t.Cleanup(func() {
		_ = s.cmd.Process.Kill()
		pr.Close()
	})
	go func() {
		err := s.cmd.Wait()
		s.at = time.Now()
		s.done <- err
	}()
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
		close(s.lines)
	}()
	select {
	case l := <-s.lines:
		if l != "chunk 0" {
			t.Fatalf("slow download's first line %q", l)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("the slow download did not start within 5s: %s", s.errb.String())
	}
	return s
}

// wait waits up to d for the download to end: its exit error (nil: exit
// 0), the lines after the first, and whether it ended at all.
func (s *slowDownload) wait(d time.Duration) (error, []string, bool) {
	select {
	case err := <-s.done:
		var rest []string
		for l := range s.lines {
			rest = append(rest, l)
		}
		return err, rest, true
	case <-time.After(d):
		return nil, nil, false
	}
}

// streamRecords returns the records in an appliance's log stream.
func (f *fleet) streamRecords(t *testing.T, a *fleetApp) []records.Record {
	t.Helper()
	var out []records.Record
	for _, e := range f.cw.Events(fleetGroup, a.stream) {
		var r records.Record
		if err := json.Unmarshal([]byte(e.Message), &r); err != nil {
			t.Errorf("stream %s: event %q: %v", a.stream, e.Message, err)
			continue
		}
		out = append(out, r)
	}
	return out
}

// recordPorts counts the records of each client port in a's stream.
func (f *fleet) recordPorts(t *testing.T, a *fleetApp) map[uint16]int {
	t.Helper()
	m := map[uint16]int{}
	for _, r := range f.streamRecords(t, a) {
		if r.ClientIP == netnsClientAddr {
			m[r.ClientPort]++
		}
	}
	return m
}

// waitRecords waits up to 15 s until every port in ports has a record in
// a's stream, and returns what is missing then.
func (f *fleet) waitRecords(t *testing.T, a *fleetApp, ports []uint16) (missing []uint16) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		got := f.recordPorts(t, a)
		missing = missing[:0]
		for _, p := range ports {
			if got[p] == 0 {
				missing = append(missing, p)
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			return missing
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// portsOf returns the ports carried by appliance i that owe a record,
// sorted.
func (f *fleet) portsOf(i int) []uint16 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ps []uint16
	for p, c := range f.carrier {
		if c == i && f.wantRecord[p] {
			ps = append(ps, p)
		}
	}
	sort.Slice(ps, func(a, b int) bool { return ps[a] < ps[b] })
	return ps
}

// stopSim stops gwlbsim and returns the counters it printed.
func (f *fleet) stopSim(t *testing.T) fleetSimStats {
	t.Helper()
	if err := f.sim.signal(syscall.SIGTERM); err != nil {
		t.Fatalf("stopping gwlbsim: %v", err)
	}
	if code := f.sim.wait(10 * time.Second); code != 0 {
		t.Fatalf("gwlbsim exit code %d after SIGTERM, want 0:\n%s", code, f.sim.logs())
	}
	var st fleetSimStats
	dec := json.NewDecoder(bytes.NewReader([]byte(f.simOut.String())))
	if err := dec.Decode(&st); err != nil && !errors.Is(err, io.EOF) {
		t.Fatalf("gwlbsim's stats %q: %v", f.simOut.String(), err)
	}
	return st
}
