package appliance

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/gwlbproxy/gwlbproxy/internal/testenv"
)

// What an idle UDP flow may cost the appliance: the bar is 100,000
// idle flows in 2 GiB, and 16 KiB a flow leaves room for the rest.
const (
	maxIdleUDPFlowBytes      = 16 << 10
	maxIdleUDPFlowGoroutines = 1.05 // one parked goroutine a flow, and a little noise
)

// idleFlowsEnv sets how many flows TestUDPIdleFlowCost opens (default
// 2,000). Each needs a host ephemeral port and a file descriptor; the
// namespace variant below runs it with many more.
const idleFlowsEnv = "GWLBPROXY_UDP_IDLE_FLOWS"

// raceMaxIdleFlows keeps the flows' goroutines, one each, and the rest
// within the race detector's limit of 8,128.
const raceMaxIdleFlows = 6000

// idleFlowsFDMargin is the file descriptors the rig needs besides one per
// flow.
const idleFlowsFDMargin = 1000

// TestUDPIdleFlowCost opens N UDP flows through the whole appliance, one
// datagram each, towards a loopback server that never answers, and
// measures what they cost once idle: the Go heap and goroutine stacks
// (HeapInuse+StackInuse after two GCs, so pooled buffers are not counted)
// and the goroutines, per flow. The client side sends crafted packets
// through the simulator, so no client endpoint is counted; the simulator's
// own flow table (a few hundred bytes a flow) is.
func TestUDPIdleFlowCost(t *testing.T) {
	n := 2000
	if v := os.Getenv(idleFlowsEnv); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n <= 0 {
			t.Fatalf("%s=%q: want a positive number", idleFlowsEnv, v)
		}
	}
	raiseNoFile(t, uint64(n)+idleFlowsFDMargin)
	const perClient = 500 // below the per-client UDP share
	r := newRig(t, func(o *Options) {
		o.IdleTimeout = 10 * time.Minute
		o.MaxFlows = 2*n + 1000
		o.MaxFlowsPerClient = 2 * perClient
	}, nil)
	pc := must(net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(r.net.server(3), 0))))(t)
	defer pc.Close()
	_ = pc.SetReadBuffer(8 << 20)
	srv := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	seen := make([]atomic.Bool, n)
	var got atomic.Int64
	go func() {
		buf := make([]byte, 64)
		for {
			k, err := pc.Read(buf)
			if err != nil {
				return
			}
			if k == 4 {
				if i := binary.BigEndian.Uint32(buf); int(i) < n && !seen[i].Swap(true) {
					got.Add(1)
				}
			}
		}
	}()
	// Flow i comes from client address 198.18.(i/perClient) and a port of
	// its own.
	send := func(i int) {
		c := netip.AddrFrom4([4]byte{198, 18 + byte(i/perClient/250), byte(i / perClient % 250), 1})
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: c.AsSlice(), DstIP: srv.Addr().AsSlice()}
		udp := &layers.UDP{SrcPort: layers.UDPPort(10000 + i%perClient), DstPort: layers.UDPPort(srv.Port())}
		_ = udp.SetNetworkLayerForChecksum(ip)
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
			ip, udp, gopacket.Payload(binary.BigEndian.AppendUint32(nil, uint32(i)))); err != nil {
			t.Fatal(err)
		}
		must(0, r.client.Send(buf.Bytes()))(t)
	}

	base := idleMem()
	start := time.Now()
	// In batches, resending what did not arrive (a datagram the appliance's
	// socket dropped under the burst): a resend of a flow that exists is one
	// more datagram, not another flow.
	const batch = 256
	for lo := 0; lo < n; lo += batch {
		hi := min(lo+batch, n)
		for i := lo; i < hi; i++ {
			send(i)
		}
		for try := 0; got.Load() < int64(hi); try++ {
			time.Sleep(5 * time.Millisecond)
			if try%100 == 99 {
				for i := range hi {
					if !seen[i].Load() {
						send(i)
					}
				}
			}
			if try > 2000 {
				t.Fatalf("%d of %d datagrams reached the server", got.Load(), hi)
			}
		}
	}
	waitFor(t, fmt.Sprintf("%d UDP flows active", n), func() string {
		if a := r.app.proxy.Stats().UDPActive; a != int64(n) {
			return fmt.Sprintf("%d", a)
		}
		return ""
	})
	setup := time.Since(start)
	time.Sleep(200 * time.Millisecond) // every flow's goroutines parked
	after := idleMem()
	// Signed: the heap may shrink under the measurement (garbage of the
	// tests before, freed meanwhile), and an unsigned difference read
	// 9e15 bytes a flow in a full -race run.
	grew := func(after, before uint64) float64 { return float64(int64(after)-int64(before)) / float64(n) }
	perFlow := grew(after.bytes, base.bytes)
	gPerFlow := float64(after.goroutines-base.goroutines) / float64(n)
	t.Logf("%d idle UDP flows (set up in %s): %.0f bytes/flow (heap %.0f, stacks %.0f), %.2f goroutines/flow; kernel slab +%.0f bytes/flow",
		n, setup.Round(time.Millisecond), perFlow, grew(after.heap, base.heap), grew(after.stack, base.stack),
		gPerFlow, grew(after.slab, base.slab))
	t.Logf("extrapolated to 100,000 idle flows: %.2f GiB of Go memory", perFlow*100000/(1<<30))
	if perFlow > maxIdleUDPFlowBytes {
		t.Errorf("an idle UDP flow costs %.0f bytes, want at most %d", perFlow, maxIdleUDPFlowBytes)
	}
	if gPerFlow > maxIdleUDPFlowGoroutines {
		t.Errorf("an idle UDP flow holds %.2f goroutines, want at most one", gPerFlow)
	}
}

type memSample struct {
	bytes, heap, stack uint64
	slab               uint64
	goroutines         int
}

// idleMem samples the Go memory in use after two collections (the second
// empties the sync.Pool victim caches), and the kernel's slab.
func idleMem() memSample {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memSample{
		bytes: ms.HeapInuse + ms.StackInuse, heap: ms.HeapInuse, stack: ms.StackInuse,
		slab: meminfo("Slab"), goroutines: runtime.NumGoroutine(),
	}
}

// meminfo returns a /proc/meminfo value in bytes (0 if unknown).
func meminfo(key string) uint64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && k == key {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// raiseNoFile raises the open-file limit to at least n, as far as the hard
// limit allows (root may raise that too); a test that needs more fails.
func raiseNoFile(t *testing.T, n uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur >= n {
		return
	}
	want := lim
	want.Cur = n
	if want.Max < n {
		want.Max = n
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		if lim.Max < n {
			testenv.RequirePrivileged(t, fmt.Sprintf("%d flows need %d open files; the hard limit is %d and raising it needs root: %v", n, n, lim.Max, err))
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim) })
}

// TestUDPIdleFlowCostNetns runs TestUDPIdleFlowCost with as many flows as
// one network namespace has ephemeral ports for. Every flow's host socket
// is connected but not bound, and the kernel gives each such socket a
// local port of its own whatever its destination, so a namespace holds at
// most ~64,000 flows however many destinations there are: the test widens
// net.ipv4.ip_local_port_range (per namespace) to 1024-65535 and runs 60,000
// flows in a copy of this test binary inside a namespace it creates and
// removes. 100,000 flows would need more namespaces (or source addresses
// the appliance does not use); the per-flow cost extrapolates.
func TestUDPIdleFlowCostNetns(t *testing.T) {
	if testing.Short() {
		t.Skip("60,000 flows take a while")
	}
	if os.Getenv(idleFlowsEnv) != "" {
		t.Skip("already inside")
	}
	testenv.RequireRoot(t, "the 60,000-flow measurement needs root: it creates a network namespace to widen the ephemeral port range in")
	if out, err := exec.Command("ip", "netns", "list").CombinedOutput(); err != nil {
		testenv.RequirePrivileged(t, fmt.Sprintf("needs `ip netns` (iproute2): %v %s", err, out))
	}
	ns := fmt.Sprintf("gwlbt-udpidle-%d", os.Getpid())
	mustRun(t, "ip", "netns", "add", ns)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("deleting namespace %s: %v %s", ns, err, out)
		}
	})
	mustRun(t, "ip", "-n", ns, "link", "set", "lo", "up")
	mustRun(t, "ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=1024 65535")
	self := must(os.Executable())(t)
	flows := 60000
	if v := os.Getenv("GWLBPROXY_UDP_IDLE_NETNS_FLOWS"); v != "" {
		flows = must(strconv.Atoi(v))(t)
	}
	if raceEnabled && flows > raceMaxIdleFlows {
		t.Logf("the race detector allows 8,128 goroutines: measuring %d flows, not %d", raceMaxIdleFlows, flows)
		flows = raceMaxIdleFlows
	}
	// Every flow holds a file descriptor. Root may raise the hard limit
	// (with CAP_SYS_RESOURCE); where it cannot, as many flows as fit are
	// measured, and the cost per flow extrapolates.
	var lim syscall.Rlimit
	must(0, syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim))(t)
	if want := uint64(flows) + idleFlowsFDMargin; lim.Max < want {
		raised := syscall.Rlimit{Cur: want, Max: want}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err != nil {
			fit := int(lim.Max) - idleFlowsFDMargin
			t.Logf("the open-file hard limit is %d and cannot be raised (%v): measuring %d flows, not %d", lim.Max, err, fit, flows)
			flows = fit
		} else {
			t.Cleanup(func() { _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim) })
		}
	}
	cmd := exec.Command("ip", "netns", "exec", ns, self, "-test.run", "^TestUDPIdleFlowCost$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), idleFlowsEnv+"="+strconv.Itoa(flows))
	out, err := cmd.CombinedOutput()
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "flow") {
			t.Log(strings.TrimSpace(l))
		}
	}
	if err != nil {
		t.Fatalf("the measurement in namespace %s failed: %v\n%s", ns, err, out)
	}
}
