package appliance

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/gwlbproxy/gwlbproxy/internal/testenv"
	"github.com/gwlbproxy/gwlbproxy/netstack/capture"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// captureRig is interceptRig with the TLS key log and the pcap files on.
func captureRig(t *testing.T, up *upstream, mutate func(*Options)) (r *rig, keyLog, pcapDir string) {
	t.Helper()
	dir := t.TempDir()
	keyLog, pcapDir = filepath.Join(dir, "keys.log"), filepath.Join(dir, "pcap")
	cfg := filepath.Join(dir, "gwlbproxy.yaml")
	os.WriteFile(cfg, []byte(interceptPolicy), 0o644)
	r = newRig(t, func(o *Options) {
		o.Config = cfg
		o.UpstreamCA = []string{up.caFile}
		o.TLSKeyLog = keyLog
		o.Capture.PcapDir = pcapDir
		if mutate != nil {
			mutate(o)
		}
	}, nil)
	r.dns.Set("*.example.test", 60, up.addr.Addr())
	return r, keyLog, pcapDir
}

func requireTool(t *testing.T, tool, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		testenv.RequirePrivileged(t, fmt.Sprintf("this test needs %s (apt-get install %s)", tool, pkg))
	}
	return p
}

// tshark runs tshark with args, bounded in time, and returns its output.
func tshark(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "tshark", args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tshark %v: %v\n%s", args, err, stderr.String())
	}
	if len(out) == 0 && stderr.Len() > 0 {
		// What it said, for a run where it showed nothing (once in a
		// loaded suite it decrypted neither capture).
		t.Logf("tshark %v said on stderr: %s", args, stderr.String())
	}
	return string(out)
}

// pcapFilesIn lists the pcapng files of dir, oldest first.
func pcapFilesIn(t *testing.T, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "gwlbproxy-*.pcapng"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no pcapng files in %s (%v)", dir, err)
	}
	return files
}

// awaitCaptureIdle waits until the pcap writer has written every packet
// the appliance handled so far (the count stops moving, for three looks
// in a row: one quiet look was not enough in a loaded suite, the writer's
// goroutine not run for 300 ms with packets still queued, and tshark found
// the request missing): it flushes each time its queue runs empty.
func awaitCaptureIdle(t *testing.T, r *rig) capture.PcapStats {
	t.Helper()
	var last capture.PcapStats
	still := 0
	deadline := time.Now().Add(10 * time.Second)
	for {
		time.Sleep(300 * time.Millisecond)
		st := r.app.stats().Capture.Pcap
		if st.Packets > 0 && st.Packets == last.Packets {
			if still++; still == 3 {
				return *st
			}
		} else {
			still = 0
		}
		last = *st
		if time.Now().After(deadline) {
			t.Fatalf("the pcap writer did not settle: %+v", st)
		}
	}
}

// TestCaptureKeyLogDecryptsBump: a bumped HTTPS request leaves the secrets
// of both its TLS sessions in --tls-keylog (mode 0600), and with them
// tshark decrypts the request from the appliance's own pcap files (the
// client's session, inside GENEVE, on the endpoint's interface) and from a
// capture of the upstream connection on loopback (the upstream session,
// when tcpdump can run). The upstream listens on a port of the kernel's
// choosing, and on one tshark gives to another protocol.
func TestCaptureKeyLogDecryptsBump(t *testing.T) {
	requireTool(t, "tshark", "tshark")
	t.Run("any-port", func(t *testing.T) {
		testCaptureKeyLogDecryptsBump(t, startUpstream(t, newTestNet().server(3), false))
	})
	t.Run("another-protocols-port", func(t *testing.T) {
		testCaptureKeyLogDecryptsBump(t, startUpstreamOnAnotherProtocolsPort(t))
	})
}

// startUpstreamOnAnotherProtocolsPort starts the upstream on the first
// free of a few ports tshark gives to another protocol (HTTP's, MySQL's,
// PostgreSQL's): the kernel picks ports from 1024-65535, where tshark has
// some 240 such, their dissectors taking TLS's bytes for their own.
func startUpstreamOnAnotherProtocolsPort(t *testing.T) *upstream {
	t.Helper()
	addr := newTestNet().server(3)
	for _, port := range []uint16{8080, 3128, 3306, 5432} {
		if ln, err := net.Listen("tcp", netip.AddrPortFrom(addr, port).String()); err == nil {
			ln.Close()
			return startUpstreamAt(t, netip.AddrPortFrom(addr, port), false)
		}
	}
	t.Skipf("no port of another protocol free on %s", addr)
	return nil
}

// allTCPIsTLS tells tshark (-d) that every TCP port is TLS's: the
// connections read with it are the one bumped request's, whose ports (the
// upstream's, the client's, the appliance's upstream dial's) are picked at
// random from 1024-65535, where tshark gives some 240 ports to dissectors
// that take TLS's bytes for their own (HTTP's 8080, MySQL's 3306, ...):
// about 1 run in 100 found no request in one capture or both.
const allTCPIsTLS = "tcp.port==1-65535,tls"

func testCaptureKeyLogDecryptsBump(t *testing.T, up *upstream) {
	r, keyLog, pcapDir := captureRig(t, up, nil)

	// The upstream side crosses loopback: tcpdump sees it, if it can run.
	var upPcap string
	var stopDump func() string
	if _, err := exec.LookPath("tcpdump"); err == nil && os.Geteuid() == 0 {
		upPcap, stopDump = startTcpdump(t, "lo", fmt.Sprintf("host %s and tcp port %d", up.addr.Addr(), up.addr.Port()))
	} else {
		testenv.RequireRoot(t, "capturing the upstream session on loopback needs root and tcpdump")
	}

	client := r.httpClient(t, up.addr, false)
	resp, err := client.Get("https://www.example.test/hello?who=keylog")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(string(body), "hello keylog") {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	client.CloseIdleConnections()
	r.records(func(rs []records.Record) bool { return countKind(rs, "tls") >= 1 && countKind(rs, "http") >= 1 })
	st := awaitCaptureIdle(t, r)
	if st.Dropped != 0 || st.Errors != 0 {
		t.Errorf("pcap stats %+v", st)
	}

	fi, err := os.Stat(keyLog)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key log mode %v, want 0600", fi.Mode().Perm())
	}
	keys, _ := os.ReadFile(keyLog)
	randoms := map[string]bool{}
	for _, l := range strings.Split(strings.TrimSpace(string(keys)), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "CLIENT_TRAFFIC_SECRET_0" {
			randoms[f[1]] = true
		}
	}
	if len(randoms) != 2 {
		t.Errorf("the key log has the secrets of %d TLS 1.3 sessions, want 2 (the client's and the upstream's):\n%s", len(randoms), keys)
	}

	// The client's session, from the appliance's own capture.
	files := pcapFilesIn(t, pcapDir)
	for _, f := range files {
		out := tshark(t, "-r", f, "-o", "tls.keylog_file:"+keyLog, "-d", allTCPIsTLS, "-Y", "http.request", "-T", "fields",
			"-e", "frame.interface_name", "-e", "ip.src", "-e", "http.request.method", "-e", "http.request.uri", "-e", "http.host")
		want := fmt.Sprintf("vpce-00123456789abcdef\t%s\tGET\t/hello?who=keylog\twww.example.test\n", clientV4)
		if out == want {
			files = nil
			break
		}
		t.Logf("%s: tshark shows %q", f, out)
	}
	if files != nil {
		t.Errorf("tshark does not decrypt the client's request from the pcap files with the key log")
	}
	// No malformed packets in them either.
	for _, f := range pcapFilesIn(t, pcapDir) {
		if out := tshark(t, "-r", f, "-o", "tls.keylog_file:"+keyLog, "-d", allTCPIsTLS, "-Y", "_ws.malformed || _ws.expert.severity >= error"); out != "" {
			t.Errorf("%s: tshark finds malformed packets:\n%s", f, out)
		}
	}

	// The upstream's session, from loopback.
	if stopDump != nil {
		awaitPcapEnd(t, upPcap)
		said := stopDump()
		out := tshark(t, "-r", upPcap, "-o", "tls.keylog_file:"+keyLog, "-d", allTCPIsTLS,
			"-Y", "http.request", "-T", "fields", "-e", "http.request.method", "-e", "http.request.uri")
		if out != "GET\t/hello?who=keylog\n" {
			t.Errorf("tshark decrypts from the upstream connection %q, want the request; tcpdump said:\n%s", out, said)
		}
	}
}

// awaitPcapEnd waits until tcpdump's file holds a TCP FIN or reset (the
// appliance closes its upstream connection once the client has gone), so
// that it holds every packet before: tcpdump stopped by SIGINT writes
// nothing it has not yet read from the kernel, and a tcpdump not run for a
// while on a loaded machine has read nothing (0 of 10 packets captured
// when stopped so).
func awaitPcapEnd(t *testing.T, file string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !pcapHasTCPEnd(file) {
		if time.Now().After(deadline) {
			t.Fatalf("tcpdump's file %s holds no TCP FIN or reset after 30s", file)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func pcapHasTCPEnd(file string) bool {
	f, err := os.Open(file)
	if err != nil {
		return false
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil { // not even the file's header yet
		return false
	}
	for {
		data, _, err := r.ReadPacketData()
		if err != nil { // the end, or a packet half written
			return false
		}
		p := gopacket.NewPacket(data, r.LinkType(), gopacket.Lazy)
		if tcp, ok := p.Layer(layers.LayerTypeTCP).(*layers.TCP); ok && (tcp.FIN || tcp.RST) {
			return true
		}
	}
}

// startTcpdump captures on dev with filter into a file until stop (or
// the test's end), bounded to a minute; stop returns what tcpdump said
// (its counts of packets captured and dropped).
func startTcpdump(t *testing.T, dev, filter string) (file string, stop func() string) {
	t.Helper()
	file = filepath.Join(t.TempDir(), dev+".pcap")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	var stderr syncBuffer
	cmd := exec.CommandContext(ctx, "tcpdump", "-i", dev, "-n", "--immediate-mode", "-U", "-s", "0", "-w", file, filter)
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	var once sync.Once
	stop = func() string {
		once.Do(func() {
			// SIGINT: tcpdump writes out what it has read (not what
			// the kernel still holds for it: see awaitPcapEnd).
			_ = cmd.Process.Signal(os.Interrupt)
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				cancel()
				<-done
			}
			cancel()
		})
		return stderr.String()
	}
	t.Cleanup(func() { stop() })
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(stderr.String(), "listening on") {
		if time.Now().After(deadline) {
			stop()
			t.Fatalf("tcpdump did not start: %s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return file, stop
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestCapturePlaintextBump: with --capture-plaintext, a bumped HTTPS
// request's decrypted side is in the appliance's pcap files, on the
// endpoint's plaintext interface, from the client's address (its port's top
// bit flipped) to the destination's: tshark reads the request without the
// key log, finds nothing malformed, and the key log still decrypts the
// wire packets beside it. The flag needs a capture output.
func TestCapturePlaintextBump(t *testing.T) {
	requireTool(t, "tshark", "tshark")
	up := startUpstream(t, newTestNet().server(3), false)
	r, keyLog, pcapDir := captureRig(t, up, func(o *Options) { o.Capture.Plaintext = true })
	client := r.httpClient(t, up.addr, false)
	resp, err := client.Get("https://www.example.test/hello?who=plaintext")
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	resp.Body.Close()
	client.CloseIdleConnections()
	var rec records.Record
	for _, x := range r.records(func(rs []records.Record) bool { return countKind(rs, "tls") >= 1 && countKind(rs, "http") >= 1 }) {
		if x.Kind == "tls" {
			rec = x
		}
	}
	awaitCaptureIdle(t, r)
	if st := r.app.stats().Capture.Plaintext; st == nil || st.Streams != 1 || st.Dropped != 0 {
		t.Errorf("plaintext stats %+v", st)
	}
	opts := []string{"-o", "tcp.try_heuristic_first:TRUE", "-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE", "-o", "tls.keylog_file:" + keyLog}
	var plain, wire string
	for _, f := range pcapFilesIn(t, pcapDir) {
		plain += tshark(t, append([]string{"-r", f, "-Y", "http.request && !tls", "-T", "fields", "-e", "frame.interface_name",
			"-e", "ip.src", "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "http.host", "-e", "http.request.uri"}, opts...)...)
		wire += tshark(t, append([]string{"-r", f, "-Y", "http.request && tls", "-T", "fields", "-e", "frame.interface_name", "-e", "http.request.uri"}, opts...)...)
		faults := `frame.interface_name contains "-plaintext" && (_ws.malformed || _ws.expert.severity >= error || tcp.analysis.flags || tcp.checksum.status != 1 || ip.checksum.status != 1)`
		if out := tshark(t, append([]string{"-r", f, "-Y", faults}, opts...)...); out != "" {
			t.Errorf("%s: tshark finds fault with the plaintext:\n%s", f, out)
		}
	}
	want := fmt.Sprintf("vpce-00123456789abcdef-plaintext\t%s\t%d\t%d\twww.example.test\t/hello?who=plaintext\n",
		clientV4, rec.ClientPort^capture.PlaintextPortFlip, up.addr.Port())
	if plain != want {
		t.Errorf("tshark reads the plaintext as %q, want %q", plain, want)
	}
	if wire != "vpce-00123456789abcdef\t/hello?who=plaintext\n" {
		t.Errorf("tshark decrypts the wire packets with the key log as %q", wire)
	}

	o := DefaultOptions()
	o.Capture.Plaintext = true
	if err := o.Validate(); err == nil || !strings.Contains(err.Error(), "--capture-plaintext") {
		t.Errorf("--capture-plaintext without an output: %v", err)
	}
}
