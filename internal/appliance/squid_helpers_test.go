package appliance

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/certs"
)

// Helpers of BenchmarkVsSquid (squid_bench_test.go): the origin server, the
// proxies as child processes, and CPU accounting from /proc.

// ---- CPU accounting ------------------------------------------------------

// vsClockTicks is the unit of the CPU times in /proc/PID/stat (USER_HZ),
// asked of getconf once; 100 on every Linux this runs on.
func vsClockTicks() float64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err != nil {
		return 100
	}
	if v, err := strconv.Atoi(strings.TrimSpace(string(out))); err == nil && v > 0 {
		return float64(v)
	}
	return 100
}

// vsProcStat is what BenchmarkVsSquid needs of /proc/PID/stat.
type vsProcStat struct {
	ppid int
	// cpu is utime+stime (the process's own threads, live and exited) plus
	// cutime+cstime (its children that have exited and been waited for),
	// in clock ticks. Summed over the live processes of a tree, every tick
	// the tree ever used is counted exactly once.
	cpu uint64
	rss uint64 // resident set, in pages
}

func vsReadProcStat(pid int) (vsProcStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return vsProcStat{}, err
	}
	// The command name (field 2) is in parentheses and may hold spaces or
	// parentheses itself: the fields that follow start after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return vsProcStat{}, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state): ppid is field 4, utime..cstime are 14..17,
	// rss is 24.
	if len(f) < 22 {
		return vsProcStat{}, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	var st vsProcStat
	if st.ppid, err = strconv.Atoi(f[1]); err != nil {
		return vsProcStat{}, err
	}
	for _, s := range f[11:15] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return vsProcStat{}, err
		}
		st.cpu += v
	}
	if st.rss, err = strconv.ParseUint(f[21], 10, 64); err != nil {
		return vsProcStat{}, err
	}
	return st, nil
}

// vsTreeStat returns the CPU ticks used so far by root and all its
// descendants (squid's helpers), live or exited-and-reaped, and the
// resident pages of those alive.
func vsTreeStat(root int) (vsProcStat, error) {
	self, err := vsReadProcStat(root)
	if err != nil {
		return vsProcStat{}, err
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return vsProcStat{}, err
	}
	children := map[int][]int{}
	stats := map[int]vsProcStat{root: self}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == root {
			continue
		}
		st, err := vsReadProcStat(pid)
		if err != nil {
			continue // exited meanwhile: its ticks are in its parent's cutime
		}
		stats[pid] = st
		children[st.ppid] = append(children[st.ppid], pid)
	}
	var total vsProcStat
	queue := []int{root}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		total.cpu += stats[pid].cpu
		total.rss += stats[pid].rss
		queue = append(queue, children[pid]...)
	}
	return total, nil
}

// ---- child processes -------------------------------------------------------

// vsChild is a process the benchmark started; stop ends it and everything it
// started (its own process group), also when the benchmark fails.
type vsChild struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	logs []string // files tail shows
}

// vsApplianceEnv holds space-separated NAME=VALUE pairs added to the
// gwlbproxy process's environment only (GOMAXPROCS=1, GODEBUG=...): to see
// what the Go runtime's settings do to the appliance's figures.
const vsApplianceEnv = "GWLBPROXY_VS_APPLIANCE_ENV"

// vsBinEnv names a prebuilt gwlbproxy binary to run instead of building
// one from the tree: a binary that outlives the run keeps its symbols for
// perf, and two binaries can take turns without two worktrees.
const vsBinEnv = "GWLBPROXY_VS_BIN"

// vsApplianceArgs holds space-separated flags added to the gwlbproxy
// command line (--ack-delay 0, say): to compare settings of one binary.
const vsApplianceArgs = "GWLBPROXY_VS_APPLIANCE_ARGS"

// vsStartChild runs argv with output to logFile, in a process group of its
// own, killed by the kernel should the benchmark process die first
// (Pdeathsig). cred, when set, runs it as another user.
func vsStartChild(b *testing.B, name, logFile string, cred *syscall.Credential, argv ...string) *vsChild {
	b.Helper()
	out, err := os.Create(logFile)
	if err != nil {
		b.Fatal(err)
	}
	if name == "gwlbproxy" {
		argv = append(argv, strings.Fields(os.Getenv(vsApplianceArgs))...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: cred}
	if extra := os.Getenv(vsApplianceEnv); extra != "" && name == "gwlbproxy" {
		cmd.Env = append(os.Environ(), strings.Fields(extra)...)
	}
	if err := cmd.Start(); err != nil {
		out.Close()
		b.Fatalf("starting %s: %v", name, err)
	}
	c := &vsChild{name: name, cmd: cmd, done: make(chan struct{}), logs: []string{logFile}}
	go func() {
		_ = cmd.Wait()
		out.Close()
		close(c.done)
	}()
	b.Cleanup(c.stop)
	return c
}

func (c *vsChild) pid() int { return c.cmd.Process.Pid }

func (c *vsChild) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, waits up to 10 s, then SIGKILLs the process group.
// The group is killed in any case so no helper outlives the benchmark.
func (c *vsChild) stop() {
	pgid := c.cmd.Process.Pid // Setpgid: the group is named by the leader's pid
	if !c.exited() {
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.done:
		case <-time.After(10 * time.Second):
		}
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
	}
}

// tail returns the end of the child's logs, for error messages.
func (c *vsChild) tail() string {
	var sb strings.Builder
	for _, f := range c.logs {
		b, _ := os.ReadFile(f)
		if len(b) > 2000 {
			b = b[len(b)-2000:]
		}
		fmt.Fprintf(&sb, "--- %s:\n%s\n", f, b)
	}
	return sb.String()
}

// waitFor polls ok every 50 ms until it holds, the child exits, or 20 s pass.
func (c *vsChild) waitFor(b *testing.B, what string, ok func() bool) {
	b.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !ok() {
		if c.exited() {
			b.Fatalf("%s exited before %s:\n%s", c.name, what, c.tail())
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s: no %s within 20s:\n%s", c.name, what, c.tail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func vsCanDial(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// ---- the origin ----------------------------------------------------------

// vsHost is the one name every request goes to: after the first
// connection, every proxy serves its leaf from its cache.
const vsHost = "www.bench.test"

// vsSmallBody is the answer to /small: a few hundred bytes.
var vsSmallBody = bytes.Repeat([]byte("gwlbproxy vs squid. "), 15) // 300 bytes

// vsOrigin is the HTTPS server every proxy fetches from, in this process.
type vsOrigin struct {
	addr   netip.AddrPort
	caFile string
	srv    *http.Server
	conns  atomic.Int64 // TLS connections accepted
	// The TLS parameters of the last request, to show that every proxy's
	// upstream connections negotiate the same.
	lastTLS atomic.Pointer[tls.ConnectionState]
}

// vsStartOrigin serves /small[?close][?chunked] and /bulk?n=BYTES (zeros, with a
// Content-Length) on addr with a leaf for vsHost from a test CA written to
// dir.
//
// Fairness knobs, the same for every proxy: HTTP/1.1 only (Squid 5 does
// not speak HTTP/2), key exchange X25519 only (Go would otherwise pick the
// X25519MLKEM768 hybrid with gwlbproxy's Go TLS client, which the OpenSSL
// 3.0 behind Debian's Squid does not offer), and no session tickets, so
// every upstream connection of either proxy is a full handshake whatever
// client session cache it keeps.
func vsStartOrigin(b *testing.B, addr netip.Addr, dir string) *vsOrigin {
	b.Helper()
	ca := must(certs.Generate("bench origin CA"))(b)
	leaf := must(must(certs.NewMinter(ca, certs.MinterOptions{}))(b).Leaf(vsHost))(b)
	o := &vsOrigin{caFile: filepath.Join(dir, "origin-ca.pem")}
	if err := os.WriteFile(o.caFile, ca.TrustPEM(), 0o644); err != nil {
		b.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /small", func(w http.ResponseWriter, r *http.Request) {
		o.lastTLS.Store(r.TLS)
		if r.URL.Query().Has("close") {
			// The upstream connection ends with this response, so no
			// proxy can reuse it for the next client connection.
			w.Header().Set("Connection", "close")
		}
		w.Header().Set("Content-Type", "text/plain")
		if r.URL.Query().Has("chunked") {
			// As a handler that streams does: no length, a chunked body.
			w.Write(vsSmallBody)
			w.(http.Flusher).Flush()
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(vsSmallBody)))
		w.Write(vsSmallBody)
	})
	zeros := make([]byte, 64<<10)
	mux.HandleFunc("GET /bulk", func(w http.ResponseWriter, r *http.Request) {
		o.lastTLS.Store(r.TLS)
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || n < 0 || n > 4<<30 {
			http.Error(w, "bad n", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		for n > 0 {
			k, err := w.Write(zeros[:min(n, int64(len(zeros)))])
			if err != nil {
				return
			}
			n -= int64(k)
		}
	})
	ln, err := tls.Listen("tcp", netip.AddrPortFrom(addr, 0).String(), &tls.Config{
		Certificates:           []tls.Certificate{*leaf},
		NextProtos:             []string{"http/1.1"},
		CurvePreferences:       []tls.CurveID{tls.X25519},
		SessionTicketsDisabled: true,
	})
	if err != nil {
		b.Fatalf("origin: %v", err)
	}
	o.addr = ln.Addr().(*net.TCPAddr).AddrPort()
	o.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				o.conns.Add(1)
			}
		},
	}
	go o.srv.Serve(ln)
	b.Cleanup(func() { o.srv.Close() })
	return o
}

// vsTLSSummary names the key exchange, cipher suite and certificate of cs.
func vsTLSSummary(cs *tls.ConnectionState) string {
	if cs == nil {
		return "?"
	}
	s := fmt.Sprintf("%s %s %s", tls.VersionName(cs.Version), cs.CurveID, tls.CipherSuiteName(cs.CipherSuite))
	if len(cs.PeerCertificates) > 0 {
		c := cs.PeerCertificates[0]
		s += fmt.Sprintf(", leaf %s key signed %s by %q", c.PublicKeyAlgorithm, c.SignatureAlgorithm, c.Issuer.CommonName)
	}
	return s
}

// vsClientTLS is the client's TLS configuration for every proxy: only the
// trusted CA differs. Same knobs as the origin's, for the same reasons.
func vsClientTLS(caPEM []byte) *tls.Config {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &tls.Config{
		RootCAs:          pool,
		NextProtos:       []string{"http/1.1"},
		CurvePreferences: []tls.CurveID{tls.X25519},
	}
}

// ---- gwlbproxy -----------------------------------------------------------

// vsBuildGwlbproxy builds this package's binary (the real gwlbproxy) into
// dir, or returns the one GWLBPROXY_VS_BIN names.
func vsBuildGwlbproxy(b *testing.B, dir string) string {
	b.Helper()
	if bin := os.Getenv(vsBinEnv); bin != "" {
		// go test runs in the package's directory: a relative path would
		// be found there, and a bare name looked up in PATH.
		if !filepath.IsAbs(bin) {
			b.Fatalf("%s=%q: give an absolute path", vsBinEnv, bin)
		}
		if _, err := os.Stat(bin); err != nil {
			b.Fatalf("%s: %v", vsBinEnv, err)
		}
		return bin
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		b.Skip("BenchmarkVsSquid builds the real gwlbproxy binary and needs the go command on PATH")
	}
	bin := filepath.Join(dir, "gwlbproxy")
	cmd := exec.Command(goTool, "build", "-o", bin, "github.com/gwlbproxy/gwlbproxy/cmd/gwlbproxy")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// vsGwlbproxyStats fetches /stats from the admin listener.
func vsGwlbproxyStats(admin string) (stats, error) {
	var s stats
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := c.Get("http://" + admin + "/stats")
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("/stats: %s", resp.Status)
	}
	err = json.NewDecoder(resp.Body).Decode(&s)
	return s, err
}

// ---- Squid ---------------------------------------------------------------

// squidTools finds Squid built with OpenSSL (Debian's squid-openssl) and
// its certificate generator, or explains why the benchmark must skip.
type squidTools struct{ squid, certgen string }

func findSquid() (squidTools, error) {
	var t squidTools
	var err error
	if t.squid, err = exec.LookPath("squid"); err != nil {
		if _, serr := os.Stat("/usr/sbin/squid"); serr != nil {
			return t, errors.New("squid is not installed (Debian: apt-get install squid-openssl)")
		}
		t.squid = "/usr/sbin/squid"
	}
	v, err := exec.Command(t.squid, "-v").CombinedOutput()
	if err != nil || !bytes.Contains(v, []byte("--with-openssl")) {
		return t, errors.New("this squid has no SSL-Bump (it is not built with OpenSSL): install Debian's squid-openssl")
	}
	for _, p := range []string{"/usr/lib/squid/security_file_certgen", "/usr/lib64/squid/security_file_certgen", "/usr/libexec/squid/security_file_certgen"} {
		if _, err := os.Stat(p); err == nil {
			t.certgen = p
			return t, nil
		}
	}
	return t, errors.New("squid's security_file_certgen helper is missing (Debian: squid-openssl)")
}

// squidUser returns the credentials Squid runs with. As root it is started
// as Debian's "proxy" user directly rather than as root dropping privileges
// to cache_effective_user: the kernel would clear the parent-death signal
// at that change, and a Squid outliving a killed benchmark must not happen.
// Otherwise it runs as the current user, which Squid is fine with.
func squidUser() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	for _, name := range []string{"proxy", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, nil
	}
	return nil, errors.New(`running as root, but there is neither a "proxy" nor a "nobody" user to run squid as`)
}

// squidConfig is an explicit forward proxy on listen that bumps every
// CONNECT. No response is cached ("cache deny all"); one access-log line
// per request, like gwlbproxy's records. Name resolution comes from a hosts
// file; the only DNS server named is loopback, so nothing can leave
// 127.0.0.0/8.
//
// serverFirst picks how Squid bumps:
//   - false, "ssl_bump bump all": client-first. Squid answers the client's
//     handshake at once with a leaf for the CONNECT host from its in-memory
//     certificate cache, and connects to (and verifies) the origin when the
//     first request arrives.
//   - true, "ssl_bump peek step1" then "bump": server-first, the order
//     gwlbproxy uses (peek at the ClientHello, connect to and verify the
//     origin, then answer the client with a leaf mimicking the origin's
//     certificate). Squid 5 disables its in-memory certificate cache in
//     this mode (client_side.cc, getSslContextStart: "Disable caching for
//     bumpPeekAndSplice mode"), so every connection asks the
//     security_file_certgen helper, which finds the leaf in its disk
//     database (its cache.log at debug_options 33,5 says "Generating SSL
//     certificate ... using ssl_crtd" once per connection, where the
//     client-first Squid says "Cached SSL certificate ... is valid").
func squidConfig(dir string, listen netip.AddrPort, certgen string, serverFirst bool) string {
	p := func(name string) string { return filepath.Join(dir, name) }
	bump := "ssl_bump bump all"
	if serverFirst {
		bump = "acl step1 at_step SslBump1\nssl_bump peek step1\nssl_bump bump all"
	}
	return fmt.Sprintf(`# BenchmarkVsSquid: generated, removed with its directory.
workers 1
http_port %s ssl-bump generate-host-certificates=on dynamic_cert_mem_cache_size=4MB tls-cert=%s tls-key=%s
sslcrtd_program %s -s %s -M 4MB
sslcrtd_children 4 startup=1 idle=1
%s
tls_outgoing_options cafile=%s
acl bench_clients src 127.0.0.0/8
http_access allow bench_clients
http_access deny all
cache deny all
cache_mem 8 MB
hosts_file %s
dns_nameservers 127.0.0.1
pinger_enable off
access_log stdio:%s
cache_log %s
cache_store_log none
logfile_rotate 0
pid_filename %s
coredump_dir %s
visible_hostname gwlbproxy-bench
shutdown_lifetime 1 seconds
`, listen, p("ca.pem"), p("ca-key.pem"), certgen, p("ssl_db"), bump, p("origin-ca.pem"),
		p("hosts"), p("access.log"), p("cache.log"), p("squid.pid"), dir)
}

// startSquid writes a configuration, a CA (ECDSA P-256, made by
// certs.Generate like gwlbproxy's) and a certificate database into dir and
// starts Squid in the foreground (-N) on listen. It returns the process and
// the CA the client must trust.
func startSquid(b *testing.B, tools squidTools, cred *syscall.Credential, dir string, listen netip.AddrPort, org *vsOrigin, serverFirst bool) (*vsChild, []byte) {
	b.Helper()
	ca := must(certs.Generate("squid bench CA"))(b)
	if err := ca.WriteFiles(dir); err != nil { // ca.pem, ca-key.pem (PKCS #8)
		b.Fatal(err)
	}
	vsWriteFile(b, filepath.Join(dir, "origin-ca.pem"), must(os.ReadFile(org.caFile))(b))
	vsWriteFile(b, filepath.Join(dir, "hosts"), fmt.Appendf(nil, "%s %s\n", org.addr.Addr(), vsHost))
	conf := filepath.Join(dir, "squid.conf")
	vsWriteFile(b, conf, []byte(squidConfig(dir, listen, tools.certgen, serverFirst)))
	if err := vsChownTree(dir, cred); err != nil {
		b.Fatal(err)
	}
	vsRunAs(b, cred, tools.certgen, "-c", "-s", filepath.Join(dir, "ssl_db"), "-M", "4MB")
	sq := vsStartChild(b, "squid", filepath.Join(dir, "squid.out"), cred, tools.squid, "-N", "-f", conf)
	sq.logs = append(sq.logs, filepath.Join(dir, "cache.log")) // shown when Squid fails
	sq.waitFor(b, "listening port", func() bool { return vsCanDial(listen.String()) })
	return sq, ca.TrustPEM()
}

// vsChownTree gives dir and everything in it to cred's user.
func vsChownTree(dir string, cred *syscall.Credential) error {
	if cred == nil {
		return nil
	}
	return filepath.Walk(dir, func(path string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, int(cred.Uid), int(cred.Gid))
	})
}

func vsWriteFile(b *testing.B, path string, data []byte) {
	b.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		b.Fatal(err)
	}
}

// vsCredName says whom Squid runs as, for the log.
func vsCredName(c *syscall.Credential) string {
	if c == nil {
		return fmt.Sprintf("the current user (uid %d)", os.Getuid())
	}
	return fmt.Sprintf("uid %d gid %d", c.Uid, c.Gid)
}

// vsRunAs runs a short command as cred's user and fails the benchmark if it fails.
func vsRunAs(b *testing.B, cred *syscall.Credential, argv ...string) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
}
