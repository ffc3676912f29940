package appliance

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/certs"
	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/netstack/gwlbsim"
)

// BenchmarkVsSquid compares the CPU gwlbproxy and Squid (Debian's
// squid-openssl, SSL-Bump) spend on the same TLS-bumping work, in one run,
// and reports the ratios gwlbproxy/Squid (below 1: gwlbproxy uses less).
//
// The rig, all on loopback (127.0.X.0/24, X picked per process):
//
//	gwlbproxy  127.0.X.1  the real binary, built once, a separate process:
//	                      policy {default: bump}, --upstream-ca the test CA
//	gwlbsim    127.0.X.2  the GWLB simulator in this process; the client is
//	                      a gVisor stack (inner address 198.18.0.5, which
//	                      exists only inside GENEVE) whose connections to the
//	                      origin's address reach gwlbproxy as GENEVE over UDP
//	squid      127.0.X.3  explicit forward proxy, client-first bumping
//	squid-peek 127.0.X.5  the same, server-first (peek, then bump)
//	origin     127.0.X.4  Go HTTPS server in this process, a leaf for
//	                      www.bench.test from a test CA; /small (300 bytes,
//	                      with a length, or chunked), /bulk?n=BYTES (zeros)
//
// Every proxy does the same per bumped connection: a TLS handshake with
// the client using a leaf for www.bench.test signed by an ECDSA P-256 CA of
// its own, from its in-memory leaf cache (one name: only the first
// connection mints), a TLS handshake with the origin whose chain and name
// it verifies, and HTTP/1.1 requests relayed and logged one line each. The
// client code is the same net/http + crypto/tls for all; only how a
// connection reaches the proxy differs (a gVisor dial through GENEVE, or a
// kernel dial plus CONNECT). TLS parameters are pinned alike on every hop
// (see vsStartOrigin) and the negotiated ones are logged.
//
// Four phases per iteration, after a warm-up that is not measured. Each
// phase is cut into vsRounds equal slices that take turns between the
// proxies (A B C A B C ...), so a slow stretch of this shared 2-core machine
// is spread over all of them:
//
//  1. vsConns new connections (250 per slice), each a full TLS handshake
//     through the proxy and one GET /small (client keep-alives off). The
//     origin closes each upstream connection after its response, so Squid
//     cannot hand a pooled upstream connection to the next client: every
//     proxy makes one upstream handshake per client connection (the
//     origin's count of accepted connections, logged, shows it);
//     then the same again with a client that resumes its TLS session with
//     the proxy, as browsers do ("resumed": both proxies issue tickets by
//     default, and the number of resumed handshakes is logged). The origin
//     issues no tickets, so every upstream handshake stays a full one for
//     either proxy;
//  2. vsRequests GET /small on kept-alive bumped connections, one
//     connection per slice (2,500 requests each; the one handshake is
//     about 0.3% of a slice's CPU);
//  3. the same with GET /small?chunked=1: the origin sends the 300 bytes
//     as a chunked body, as a handler that streams does (gwlbproxy and
//     squid only);
//  4. vsBulkBytes (512 MiB) of GET /bulk, one bumped connection per slice
//     (128 MiB each), reported scaled to CPU seconds per GiB.
//
// Then memory: vsIdleConns bumped connections opened one after another, a
// request each, and left open and idle at once (gwlbproxy and squid); the
// growth of each proxy's resident set over them, per connection. It is
// resident memory as the kernel counts it, so a Go heap's garbage not yet
// collected is in it too.
//
// What is measured is each proxy process's CPU time, user plus system, from
// /proc/PID/stat before and after each slice (for Squid, summed over its
// process tree: helpers included). The client, the origin and the GWLB
// simulator run in this process and are not counted. A CPU figure does not
// depend on how fast this machine's 2 cores let the client go, which a
// throughput ratio would; wall-clock times are logged for information.
//
// Which Squid: the headline ratios use client-first bumping ("ssl_bump bump
// all"), Squid's cheapest way to bump, with its in-memory certificate cache.
// gwlbproxy's order is server-first (the upstream handshake and its
// verification come before the client's), which in Squid is "peek, then
// bump" and disables that cache (see squidConfig); phase 1 is also run
// against such a Squid and reported as squid-peek.
//
// Where it is not like for like:
//   - gwlbproxy terminates the client's TCP in its own userspace stack and
//     decapsulates/encapsulates GENEVE: all of that is its CPU, including
//     the kernel's work for each UDP datagram it sends to the simulator
//     (loopback delivers in the sender's context). Squid's client-side TCP
//     is the kernel's, partly charged to the sending client, and in a real
//     appliance the kernel's GENEVE tunnel and iptables would carry Squid's
//     packets uncounted. The comparison therefore favours Squid.
//   - gwlbproxy's client is gVisor's TCP, which acknowledges every segment
//     at once; a kernel client delays the ACK of a one-segment response
//     and lets the next request carry it, and Squid's client does (Squid
//     sends a response as two segments, which a kernel acknowledges at
//     once, but into Squid's socket, charged to the client). So gwlbproxy
//     takes in one datagram per kept-alive request more than it would
//     from a kernel client; vsClientACKsEnv makes its client delay ACKs as
//     Linux does.
//   - Squid, an explicit proxy here, parses a CONNECT per connection that
//     gwlbproxy does not get; gwlbproxy classifies the first bytes instead.
//   - gwlbproxy's Go TLS client offers an X25519MLKEM768 key share to the
//     origin as well (Go's default), which costs it an ML-KEM key generation
//     per upstream handshake (about 5% of its phase-1 CPU in a perf
//     profile); the origin then picks X25519 for both.
//   - Squid runs one worker (its default); gwlbproxy uses both cores if it
//     wants. CPU time, not wall time, is compared, but a Go program that
//     wakes goroutines across threads per packet burns some CPU in the
//     scheduler that a single-threaded event loop does not.
func BenchmarkVsSquid(b *testing.B) {
	const (
		vsConns     = 1000      // phase 1: new bumped connections
		vsRequests  = 10000     // phase 2: requests on kept-alive connections
		vsBulkBytes = 512 << 20 // phase 3: bytes downloaded
		vsRounds    = 4         // slices each phase is cut into (see above)
		vsIdleConns = 1000      // bumped connections held open for the memory figure
	)
	if runtime.GOOS != "linux" {
		b.Skip("BenchmarkVsSquid reads process CPU times from /proc: Linux only")
	}
	tools, err := findSquid()
	if err != nil {
		b.Skip("BenchmarkVsSquid skipped: " + err.Error())
	}
	cred, err := squidUser()
	if err != nil {
		b.Skip("BenchmarkVsSquid skipped: " + err.Error())
	}
	hz := vsClockTicks()

	// A /24 of loopback of its own, away from the ones newTestNet hands
	// out from 127.0.11 up, varied per process so two runs on one machine
	// are unlikely to collide.
	x := byte(200 + os.Getpid()%50)
	ip := func(i byte) netip.Addr { return netip.AddrFrom4([4]byte{127, 0, x, i}) }

	dir, err := os.MkdirTemp("", "gwlbproxy-vs-squid-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o711); err != nil { // Squid's user must reach its subdirectories
		b.Fatal(err)
	}

	org := vsStartOrigin(b, ip(4), dir)
	baseURL := fmt.Sprintf("https://%s:%d", vsHost, org.addr.Port())

	// --- gwlbproxy: the real binary, reached through the GWLB simulator.
	bin := vsBuildGwlbproxy(b, dir)
	gwDir := filepath.Join(dir, "appliance")
	if err := os.Mkdir(gwDir, 0o700); err != nil {
		b.Fatal(err)
	}
	policyFile := filepath.Join(gwDir, "policy.yaml")
	vsWriteFile(b, policyFile, []byte("policy:\n  default: bump\n"))
	geneve := netip.AddrPortFrom(ip(1), netstack.GenevePort)
	admin := netip.AddrPortFrom(ip(1), 18080).String()
	stateDir := filepath.Join(gwDir, "state")
	gw := vsStartChild(b, "gwlbproxy", filepath.Join(gwDir, "stderr.log"), nil, bin,
		"--geneve-addr", geneve.String(),
		"--gwlb-cidrs", netip.PrefixFrom(ip(2), 32).String(), // the simulator: the only GENEVE sender
		"--admin-addr", admin,
		"--access-log", filepath.Join(gwDir, "access.log"),
		"--state-dir", stateDir,
		"--upstream-ca", org.caFile,
		"--config", policyFile,
		"--unsafe-allow-loopback",
		"--return-path", "bound",
		"--log-level", "warn",
		"--drain-timeout", "2s",
	)
	gw.waitFor(b, "admin listener", func() bool { return vsCanDial(admin) })
	gwCA := must(os.ReadFile(filepath.Join(stateDir, certs.CertFileName)))(b)
	sim, err := gwlbsim.New(gwlbsim.Config{Addr: ip(2), Appliance: geneve, Senders: 8})
	if err != nil {
		b.Fatalf("GWLB simulator: %v", err)
	}
	b.Cleanup(sim.Close)
	gwClient, err := sim.Endpoint(0x0123456789abcdef, 0x1111222233334444).NewClientStack(clientV4)
	if err != nil {
		b.Fatal(err)
	}
	if os.Getenv(vsClientACKsEnv) == "delayed" {
		gwClient.DelayACKs()
		b.Log("gwlbproxy's client acknowledges as Linux does (" + vsClientACKsEnv + "=delayed)")
	}

	// --- The proxies: the same client, reaching each differently.
	sides := []*vsSide{{
		name: "gwlbproxy",
		proc: gw,
		transport: func(keepAlive bool) *http.Transport {
			tr := vsTransport(gwCA, keepAlive)
			tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
				return gwClient.DialTCP(ctx, org.addr) // the origin, through GENEVE
			}
			return tr
		},
	}}
	for _, v := range []struct {
		name        string
		host        byte
		serverFirst bool
		phases      []string
	}{
		{"squid", 3, false, nil},
		{"squid-peek", 5, true, []string{"conns", "resumed"}},
	} {
		addr := netip.AddrPortFrom(ip(v.host), 3128)
		proc, caPEM := startSquid(b, tools, cred, filepath.Join(dir, v.name), addr, org, v.serverFirst)
		sides = append(sides, &vsSide{
			name:   v.name,
			proc:   proc,
			phases: v.phases,
			transport: func(keepAlive bool) *http.Transport {
				tr := vsTransport(caPEM, keepAlive)
				tr.Proxy = http.ProxyURL(&url.URL{Scheme: "http", Host: addr.String()})
				var d net.Dialer
				tr.DialContext = func(ctx context.Context, _, a string) (net.Conn, error) {
					if a != addr.String() { // only ever the proxy, on loopback
						return nil, fmt.Errorf("refusing to dial %s", a)
					}
					return d.DialContext(ctx, "tcp", a)
				}
				return tr
			},
		})
	}
	for _, s := range sides {
		s.url = baseURL
	}

	// Warm-up, not measured: mints the leaves, fills pools and caches.
	for _, s := range sides {
		if err := s.newConns(20); err != nil {
			b.Fatalf("%s warm-up: %v", s.name, err)
		}
		if err := s.keepAlive("/small", 200); err != nil {
			b.Fatalf("%s warm-up: %v", s.name, err)
		}
		if err := s.bulk(32 << 20); err != nil {
			b.Fatalf("%s warm-up: %v", s.name, err)
		}
		b.Logf("%s: client↔proxy %s; proxy↔origin %s", s.name, vsTLSSummary(s.clientTLS), vsTLSSummary(org.lastTLS.Load()))
	}
	// What the proxies burn doing nothing, for the record: it is inside
	// every phase's figure too.
	time.Sleep(vsSettle)
	idle := make([]uint64, len(sides))
	for i, s := range sides {
		idle[i] = s.ticks(b)
	}
	time.Sleep(2 * time.Second)
	for i, s := range sides {
		b.Logf("%s idle: %.3f CPU s/s", s.name, float64(s.ticks(b)-idle[i])/hz/2)
	}

	phases := []vsPhase{
		{"conns", vsConns / 1000.0, "1k-conns", func(s *vsSide) error { return s.newConns(vsConns / vsRounds) }},
		{"resumed", vsConns / 1000.0, "1k-resumed-conns", func(s *vsSide) error { return s.newConnsResumed(vsConns / vsRounds) }},
		{"reqs", vsRequests / 1000.0, "1k-reqs", func(s *vsSide) error { return s.keepAlive("/small", vsRequests/vsRounds) }},
		{"chunked", vsRequests / 1000.0, "1k-chunked-reqs", func(s *vsSide) error {
			return s.keepAlive("/small?chunked=1", vsRequests/vsRounds)
		}},
		{"bulk", vsBulkBytes / float64(1<<30), "GiB", func(s *vsSide) error { return s.bulk(vsBulkBytes / vsRounds) }},
	}
	if only := os.Getenv(vsPhasesEnv); only != "" {
		names := strings.Split(only, ",")
		phases = slices.DeleteFunc(phases, func(ph vsPhase) bool { return !slices.Contains(names, ph.name) })
		if len(phases) == 0 {
			b.Fatalf("%s=%q names no phase", vsPhasesEnv, only)
		}
	}
	type result struct {
		ticks    uint64
		wall     time.Duration
		upstream int64 // origin connections accepted
	}
	res := make([][]result, len(phases))
	for pi := range res {
		res[pi] = make([]result, len(sides))
	}
	b.ResetTimer()
	for range b.N {
		for pi, ph := range phases {
			// Slices take turns between the proxies, so a slow stretch of
			// this shared machine lands on all of them rather than on one.
			for range vsRounds {
				for si, s := range sides {
					if s.phases != nil && !slices.Contains(s.phases, ph.name) {
						continue
					}
					c0, o0, t0 := s.ticks(b), org.conns.Load(), time.Now()
					if err := ph.run(s); err != nil {
						b.Fatalf("%s, phase %s: %v", s.name, ph.name, err)
					}
					r := &res[pi][si]
					r.wall += time.Since(t0)
					time.Sleep(vsSettle) // let the proxy finish closing and logging
					r.ticks += s.ticks(b) - c0
					r.upstream += org.conns.Load() - o0
				}
			}
		}
	}
	b.StopTimer()

	// Memory: vsIdleConns bumped connections open and idle at once, after
	// a request each; the growth of each proxy's resident set over them.
	idleKiB := make([]float64, len(sides))
	for si, s := range sides {
		if s.phases != nil {
			continue
		}
		time.Sleep(vsSettle)
		m0 := s.rss(b)
		trs, err := s.openIdle(vsIdleConns)
		if err == nil {
			time.Sleep(vsSettle)
			idleKiB[si] = float64(s.rss(b)-m0) / 1024 / vsIdleConns
		}
		for _, tr := range trs {
			tr.CloseIdleConnections()
		}
		if err != nil {
			b.Fatalf("%s, %d idle connections: %v", s.name, vsIdleConns, err)
		}
	}

	st, err := vsGwlbproxyStats(admin)
	if err != nil {
		b.Fatalf("gwlbproxy /stats: %v", err)
	}
	if st.Leaves == nil {
		b.Fatal("gwlbproxy /stats has no leaves: is bumping on?")
	}

	for pi, ph := range phases {
		units := ph.per * float64(b.N)
		cpu := func(si int) float64 { return float64(res[pi][si].ticks) / hz / units }
		line := ph.name + ":"
		for si, s := range sides {
			r := res[pi][si]
			if r.wall == 0 {
				continue
			}
			b.ReportMetric(cpu(si), s.name+"-cpu-s/"+ph.unit)
			if si > 0 {
				b.ReportMetric(cpu(0)/cpu(si), "gwlbproxy/"+s.name+"-"+ph.unit)
			}
			line += fmt.Sprintf(" | %s %d ticks, %.3f CPU s/%s, %.2f s wall, %d upstream conns",
				s.name, r.ticks, cpu(si), ph.unit, r.wall.Seconds(), r.upstream)
		}
		b.Log(line)
	}
	line := "memory:"
	for si, s := range sides {
		if s.phases != nil {
			continue
		}
		b.ReportMetric(idleKiB[si], s.name+"-KiB/idle-conn")
		if si > 0 && idleKiB[si] > 0 {
			b.ReportMetric(idleKiB[0]/idleKiB[si], "gwlbproxy/"+s.name+"-idle-conn-memory")
		}
		line += fmt.Sprintf(" | %s %.1f KiB resident per idle bumped connection", s.name, idleKiB[si])
	}
	b.Log(line)
	line = "client sessions resumed (all phases):"
	for _, s := range sides {
		line += fmt.Sprintf(" | %s %d", s.name, s.resumed)
	}
	b.Log(line)
	l := st.Leaves
	hitRate := 0.0
	if l.Hits+l.Misses > 0 {
		hitRate = float64(l.Hits) / float64(l.Hits+l.Misses)
	}
	b.ReportMetric(hitRate, "leaf-hit-rate")
	b.Logf("gwlbproxy leaves: %d hits, %d misses, %d mints, %d cached; CLK_TCK %.0f; squid runs as %s",
		l.Hits, l.Misses, l.Mints, l.Cached, hz, vsCredName(cred))
	n := st.Netstack
	b.Logf("gwlbproxy GENEVE datagrams (all phases): %d in, %d out; ACKs delayed %d, carried by a reply %d, replaced by a later ACK %d",
		n.PacketsIn, n.PacketsOut, n.AcksDelayed, n.AcksCarried, n.AcksReplaced)
}

// vsPhase is a kind of work the proxies are measured on.
type vsPhase struct {
	name string
	per  float64 // units of work per run: reported per 1,000 or per GiB
	unit string
	run  func(s *vsSide) error
}

// vsPhasesEnv, a comma-separated list of phase names (conns, resumed,
// reqs, chunked, bulk), runs only those: to profile one kind of work, e.g.
// with perf attached to the gwlbproxy process.
const vsPhasesEnv = "GWLBPROXY_VS_PHASES"

// vsClientACKsEnv set to "delayed" makes gwlbproxy's client (a gVisor
// stack, which acknowledges every segment at once) acknowledge as a Linux
// kernel does (gwlbsim.ClientStack.DelayACKs): quick ACKs for a
// connection's first segments, then ACKs delayed unless more than a full
// segment waits (or Linux would send them at once for another reason), so
// that a kept-alive request carries the ACK of the response before it. Squid's client is
// the kernel's TCP already. Unset, the figures are the conservative ones:
// gwlbproxy takes in an ACK per response that a Linux client would not
// send (a 425-byte response in one segment, as gwlbproxy sends it, drew 6
// pure ACKs in 2,000 requests from a Linux client on loopback).
const vsClientACKsEnv = "GWLBPROXY_VS_CLIENT_ACKS"

// vsSettle is how long after a phase the proxies get to finish their work
// (closing connections, writing records) before their CPU is read again.
const vsSettle = 300 * time.Millisecond

// vsPhaseTimeout bounds each phase: the benchmark fails rather than hangs.
const vsPhaseTimeout = 2 * time.Minute

// vsTransport is the client's HTTP transport, the same for every proxy but
// for how it reaches them (set by the caller). Keep-alives off makes every
// request a new connection with a full TLS handshake (the client keeps no
// session cache, so there is no resumption either).
func vsTransport(caPEM []byte, keepAlive bool) *http.Transport {
	return &http.Transport{
		TLSClientConfig:       vsClientTLS(caPEM),
		DisableKeepAlives:     !keepAlive,
		DisableCompression:    true,
		MaxConnsPerHost:       1,
		MaxIdleConnsPerHost:   1,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
	}
}

// vsSide is one proxy as the client sees it.
type vsSide struct {
	name      string
	url       string
	proc      *vsChild
	phases    []string // the phases it runs; nil: all
	transport func(keepAlive bool) *http.Transport
	clientTLS *tls.ConnectionState // of the last response: client↔proxy
	resumed   int                  // responses on a resumed client↔proxy session
}

// ticks is the CPU time of the proxy's process tree so far.
func (s *vsSide) ticks(b *testing.B) uint64 { return s.stat(b).cpu }

// rss is the resident memory of the proxy's process tree, in bytes.
func (s *vsSide) rss(b *testing.B) int64 { return int64(s.stat(b).rss) * int64(os.Getpagesize()) }

func (s *vsSide) stat(b *testing.B) vsProcStat {
	b.Helper()
	st, err := vsTreeStat(s.proc.pid())
	if err != nil {
		b.Fatalf("%s CPU time and memory: %v (exited? %v)\n%s", s.name, err, s.proc.exited(), s.proc.tail())
	}
	return st
}

// openIdle leaves n bumped connections open and idle, each after one
// request; closing the transports it returns ends them.
func (s *vsSide) openIdle(n int) ([]*http.Transport, error) {
	ctx, cancel := context.WithTimeout(context.Background(), vsPhaseTimeout)
	defer cancel()
	trs := make([]*http.Transport, 0, n)
	for range n {
		tr := s.transport(true) // a pool of its own: one connection each
		trs = append(trs, tr)
		if err := s.get(ctx, &http.Client{Transport: tr}, "/small", int64(len(vsSmallBody))); err != nil {
			return trs, err
		}
	}
	return trs, nil
}

// get fetches path and checks the status and the body's length.
func (s *vsSide) get(ctx context.Context, c *http.Client, path string, want int64) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("GET %s: body after %d bytes: %w", path, n, err)
	}
	if resp.StatusCode != http.StatusOK || n != want {
		return fmt.Errorf("GET %s: %s, %d bytes, want 200 and %d", path, resp.Status, n, want)
	}
	if resp.TLS == nil {
		return errors.New("the response did not come over TLS")
	}
	s.clientTLS = resp.TLS
	if resp.TLS.DidResume {
		s.resumed++
	}
	return nil
}

// newConns makes n requests, each on a new bumped connection whose
// upstream connection the origin closes after the response.
func (s *vsSide) newConns(n int) error {
	return s.run(false, func(ctx context.Context, c *http.Client) error {
		for range n {
			if err := s.get(ctx, c, "/small?close=1", int64(len(vsSmallBody))); err != nil {
				return err
			}
		}
		return nil
	})
}

// newConnsResumed is newConns with a client that keeps its TLS sessions,
// as browsers do: after the first, every connection may resume one.
func (s *vsSide) newConnsResumed(n int) error {
	tr := s.transport(false)
	tr.TLSClientConfig.ClientSessionCache = tls.NewLRUClientSessionCache(16)
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), vsPhaseTimeout)
	defer cancel()
	c := &http.Client{Transport: tr}
	for range n {
		if err := s.get(ctx, c, "/small?close=1", int64(len(vsSmallBody))); err != nil {
			return err
		}
	}
	return nil
}

// keepAlive makes n requests for path (a vsSmallBody) on one bumped
// connection.
func (s *vsSide) keepAlive(path string, n int) error {
	return s.run(true, func(ctx context.Context, c *http.Client) error {
		for range n {
			if err := s.get(ctx, c, path, int64(len(vsSmallBody))); err != nil {
				return err
			}
		}
		return nil
	})
}

// bulk downloads size bytes through one bumped connection.
func (s *vsSide) bulk(size int64) error {
	return s.run(true, func(ctx context.Context, c *http.Client) error {
		return s.get(ctx, c, fmt.Sprintf("/bulk?n=%d", size), size)
	})
}

func (s *vsSide) run(keepAlive bool, fn func(context.Context, *http.Client) error) error {
	tr := s.transport(keepAlive)
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), vsPhaseTimeout)
	defer cancel()
	return fn(ctx, &http.Client{Transport: tr})
}
