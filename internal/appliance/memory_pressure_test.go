package appliance

import (
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"reflect"
	"runtime"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/gwlbproxy/gwlbproxy/internal/memwatch"
	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy"
)

// TestMemoryPressureRefusesTheHoarder: one client opens idle TCP flows, as
// an attacker holding connections open would, until memory runs short. The
// count caps would let it go on (its share of the table is set far above
// what memory allows); memory stops it instead: its new flows are dropped
// and counted as memory_pressure, the appliance keeps the flows it has, and
// another client, holding few, still gets a new flow. Once memory is ample
// again, new flows are admitted as before. At critical, the hoarder's
// connections are also reset, towards the 16 critical memory admits.
//
// The appliance runs in this process, so the test sets this process's soft
// memory limit (as --memory-limit sets the appliance's) a few megabytes
// above the Go memory in use at the start: a few hundred idle flows are
// then 60% of it.
func TestMemoryPressureRefusesTheHoarder(t *testing.T) {
	const perClient = 5000 // flows 0..4999 are the hoarder's, 5000 and 5001 the other client's
	r := newRig(t, func(o *Options) {
		o.IdleTimeout = 10 * time.Minute
		o.MaxFlows = 100_000
		o.MaxFlowsPerClient = 50_000
	}, nil)
	srv, stopServer := startTCPIdleServer(t, r.net.server(3), 1, perClient+idleFlowsFDMargin)
	defer stopServer()
	c := newIdleTCPClients(t, r.ep, srv, perClient+2, perClient)
	pressureDrops := func() uint64 { return r.stats().Netstack.Drops[netstack.DropMemoryPressure.String()] }

	// The hoarder's first flow makes the endpoint's stack and the relay's
	// pools before the measure.
	c.open(0)
	waitFor(t, "a first TCP flow", func() string {
		if c.answered.Load() < 1 {
			return fmt.Sprintf("%d established, %d resets", c.established.Load(), c.resets.Load())
		}
		return ""
	})
	runtime.GC()
	inUse := (&memwatch.Watcher{}).Read().InUse
	const room = 8 << 20 // a few hundred idle flows, at 14 KB (28 under the race detector) each
	limit := int64(float64(inUse+room) / 0.6)
	old := debug.SetMemoryLimit(limit)
	t.Cleanup(func() { debug.SetMemoryLimit(old) })
	t.Logf("Go memory in use %d MiB; soft limit set to %d MiB", inUse>>20, limit>>20)

	// The hoarder opens flows in batches until it is refused; a batch
	// waits for its flows, and a collection then updates the live heap
	// the watcher reads.
	opened := 1
	for pressureDrops() == 0 {
		if opened >= perClient {
			t.Fatalf("%d flows of one client admitted without a memory_pressure drop; Go memory in use %d MiB, limit %d MiB, /stats %+v",
				opened, (&memwatch.Watcher{}).Read().InUse>>20, limit>>20, r.stats().Netstack)
		}
		hi := min(opened+50, perClient)
		for i := opened; i < hi; i++ {
			c.open(i)
		}
		for try := 0; c.answered.Load() < int64(hi) && pressureDrops() == 0; try++ {
			if try > 500 || c.resets.Load() > 0 {
				t.Fatalf("of %d flows, %d established, %d answered, %d reset", hi, c.established.Load(), c.answered.Load(), c.resets.Load())
			}
			time.Sleep(10 * time.Millisecond)
		}
		opened = hi
		runtime.GC()
		time.Sleep(2 * memwatch.DefaultInterval) // a reading after the collection
	}
	held := c.answered.Load()
	st := r.stats().Netstack
	t.Logf("the hoarder was refused after %d flows answered; memory %s, drops %v", held, st.MemoryPressure, st.Drops)
	// The live heap moves as garbage goes (under the race detector, and
	// with other tests' garbage, by more than the band between short's
	// thresholds): hold it in the middle of the band for what follows.
	r.holdMemory(t, 0.65, netstack.MemoryShort)
	stallTimeout := func(want time.Duration) {
		t.Helper()
		if got := r.app.proxy.WriteStallTimeout(); got != want {
			t.Errorf("write-stall timeout %v under memory %s, want %v", got, r.stats().Netstack.MemoryPressure, want)
		}
	}
	stallTimeout(proxy.ShortMemoryWriteStallTimeout) // stalled flows hold their buffers a minute at most
	if held < netstack.ShortMemoryClientFlows {
		t.Errorf("the hoarder was refused holding %d flows, below the %d a client keeps getting while memory is short", held, netstack.ShortMemoryClientFlows)
	}
	if a := r.app.proxy.Stats().TCPActive; a < held {
		t.Errorf("%d TCP flows active, want the %d answered kept", a, held)
	}

	// Its next new flow is refused too; the other client's is admitted.
	before := pressureDrops()
	c.open(opened)
	waitFor(t, "the hoarder's next flow dropped for memory", func() string {
		if d := pressureDrops(); d == before {
			return fmt.Sprintf("%d memory_pressure drops", d)
		}
		return ""
	})
	other := perClient // 198.18.1.1
	c.open(other)
	waitFor(t, "the other client's flow answered", func() string {
		if !c.idle(other) {
			c.open(other) // the SYN, or the request, again
			return fmt.Sprintf("%d answered in all", c.answered.Load())
		}
		return ""
	})

	// Memory ample again: the hoarder's next flow is admitted.
	debug.SetMemoryLimit(math.MaxInt64)
	waitFor(t, "memory ample again", func() string {
		if p := r.stats().Netstack.MemoryPressure; p != netstack.MemoryAmple.String() {
			return p
		}
		return ""
	})
	stallTimeout(proxy.DefaultWriteStallTimeout)
	if c := r.stats().MemoryPressureCause; c != "" {
		t.Errorf("/stats memory_pressure_cause %q while memory is ample, want none", c)
	}
	next := opened + 1
	waitFor(t, "the hoarder's flow answered once memory is ample", func() string {
		if !c.idle(next) {
			c.open(next)
			return fmt.Sprintf("%d answered in all", c.answered.Load())
		}
		return ""
	})

	// Critical: the Go memory in use is 90% of the limit. The hoarder
	// gets no new flow, the other client (holding one) still does, and
	// the health check fails so that the GWLB sends new flows to another
	// appliance.
	r.holdMemory(t, 0.9, netstack.MemoryCritical)
	stallTimeout(proxy.CriticalMemoryWriteStallTimeout)
	if code, body := r.health(); code != http.StatusServiceUnavailable || !strings.Contains(body, "memory critical (Go memory in use near --memory-limit)") {
		t.Errorf("health check while memory is critical: %d %q", code, body)
	}
	if c := r.stats().MemoryPressureCause; c != "go_memory" {
		t.Errorf("/stats memory_pressure_cause %q while the Go memory is critical, want go_memory", c)
	}
	before = pressureDrops()
	c.open(next + 1)
	waitFor(t, "the hoarder's next flow dropped for memory", func() string {
		if d := pressureDrops(); d == before {
			return fmt.Sprintf("%d memory_pressure drops", d)
		}
		return ""
	})
	second := other + 1
	waitFor(t, "the other client's second flow answered while memory is critical", func() string {
		if !c.idle(second) {
			c.open(second)
			return fmt.Sprintf("%d answered in all; /stats %s", c.answered.Load(), r.stats().Netstack.MemoryPressure)
		}
		return ""
	})
	// And the hoarder's connections are reset, newest first, towards
	// the critical share (netstack/reclaim.go).
	waitFor(t, "the hoarder's connections reset while memory is critical", func() string {
		if n := r.stats().Netstack.MemoryReclaimed; n == 0 {
			return fmt.Sprintf("%d reset; memory %s", n, r.stats().Netstack.MemoryPressure)
		}
		return ""
	})
	t.Logf("memory critical: %d of the hoarder's connections reset, %d TCP flows active", r.stats().Netstack.MemoryReclaimed, r.app.proxy.Stats().TCPActive)
	debug.SetMemoryLimit(math.MaxInt64)
	waitFor(t, "the health check passing again", func() string {
		if code, body := r.health(); code != http.StatusOK {
			return fmt.Sprintf("%d %q", code, body)
		}
		return ""
	})
}

// holdMemory sets this process's soft memory limit so that the Go memory
// in use is frac of it, until the appliance reports want: the live heap
// moves as garbage goes, and the limit follows it.
func (r *rig) holdMemory(t *testing.T, frac float64, want netstack.MemoryPressure) {
	t.Helper()
	for try := 0; r.stats().Netstack.MemoryPressure != want.String(); try++ {
		if try == 50 {
			t.Fatalf("memory not %s after %d tries; /stats %+v", want, try, r.stats().Netstack)
		}
		runtime.GC()
		debug.SetMemoryLimit(int64(float64((&memwatch.Watcher{}).Read().InUse) / frac))
		time.Sleep(2 * memwatch.DefaultInterval)
	}
}

// health returns the health check's status and body.
func (r *rig) health() (int, string) {
	r.t.Helper()
	resp, err := http.Get("http://" + r.app.adminLn.Addr().String() + "/")
	if err != nil {
		r.t.Fatalf("GET /: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestKernelTCPMemoryKeepsHealth: memory critical because of the kernel's
// TCP memory (a host-wide pool one client can fill with a few dozen stalled
// flows, and other tenants' sockets count towards) refuses new flows to
// clients holding many and shortens the stall bound, as any critical level
// does, but leaves the health check passing: failing it would let one
// client take targets out of rotation cheaply. Critical for any other
// measure still fails it, and the health check follows the cause when it
// changes at the same level.
func TestKernelTCPMemoryKeepsHealth(t *testing.T) {
	r := newRig(t, nil, nil)
	// The appliance's own watch reports its first reading (ample) at
	// once, and then only changes: after it, the reports below stand.
	time.Sleep(2 * memwatch.DefaultInterval)
	stall := r.app.proxy.WriteStallTimeout()
	const mib = 1 << 20
	s := memwatch.Sample{Available: 3500 * mib, Total: 4000 * mib, TCPInUse: 340 * mib, TCPPressure: 240 * mib, TCPMax: 360 * mib}
	r.app.memoryReport(memwatch.Critical, memwatch.KernelTCPMemory, s, false)
	st := r.stats()
	if st.Netstack.MemoryPressure != "critical" || st.MemoryPressureCause != "kernel_tcp_memory" {
		t.Errorf("/stats memory_pressure %q, cause %q; want critical, kernel_tcp_memory", st.Netstack.MemoryPressure, st.MemoryPressureCause)
	}
	if got := r.app.proxy.WriteStallTimeout(); got >= stall || got > 10*time.Second {
		t.Errorf("write-stall timeout %v while critical (was %v), want at most 10 s", got, stall)
	}
	if code, body := r.health(); code != http.StatusOK {
		t.Errorf("health check while the kernel's TCP memory is critical: %d %q, want 200", code, body)
	}
	s.Available = 100 * mib
	r.app.memoryReport(memwatch.Critical, memwatch.AvailableMemory, s, false)
	if code, body := r.health(); code != http.StatusServiceUnavailable || !strings.Contains(body, "memory critical (the machine's available memory low)") {
		t.Errorf("health check while available memory is critical: %d %q", code, body)
	}
	s.Available = 3500 * mib
	r.app.memoryReport(memwatch.Critical, memwatch.KernelTCPMemory, s, false)
	if code, body := r.health(); code != http.StatusOK {
		t.Errorf("health check once the cause is the kernel's TCP memory again: %d %q, want 200", code, body)
	}
	r.app.memoryReport(memwatch.Ample, memwatch.NoCause, memwatch.Sample{}, false)
}

// TestKernelTCPMemoryLeavesReclaimOff: critical kernel TCP memory does
// not turn on the reclaim that resets the connections of the client
// holding the most (memoryReport): any client can fill that host-wide pool
// with a few dozen stalled flows, and would then get the heaviest client's
// connections reset every round. Critical for any other measure does.
func TestKernelTCPMemoryLeavesReclaimOff(t *testing.T) {
	r := newRig(t, nil, nil)
	// As in TestKernelTCPMemoryKeepsHealth: after the watch's own first
	// report, the reports below stand.
	time.Sleep(2 * memwatch.DefaultInterval)
	v := reflect.ValueOf(r.app.netstack).Elem().FieldByName("reclaimOff")
	if !v.IsValid() {
		t.Fatal("netstack.Server has no field reclaimOff any more: update this test")
	}
	off := (*atomic.Bool)(unsafe.Pointer(v.UnsafeAddr()))
	const mib = 1 << 20
	s := memwatch.Sample{Available: 3500 * mib, Total: 4000 * mib, TCPInUse: 340 * mib, TCPPressure: 240 * mib, TCPMax: 360 * mib}
	r.app.memoryReport(memwatch.Critical, memwatch.KernelTCPMemory, s, false)
	offTCP := off.Load()
	s.Available = 100 * mib
	r.app.memoryReport(memwatch.Critical, memwatch.AvailableMemory, s, false)
	offAvail := off.Load()
	r.app.memoryReport(memwatch.Ample, memwatch.NoCause, memwatch.Sample{}, false)
	if !offTCP {
		t.Error("reclaim on while the kernel's TCP memory is critical, want off")
	}
	if offAvail {
		t.Error("reclaim off while available memory is critical, want on")
	}
}

// TestStatsShowKernelTCPMemory: /stats carries the memory watch's last
// reading of the kernel's TCP memory and tcp_mem's limits (this machine's
// /proc), which were only in logs and the health reason before.
func TestStatsShowKernelTCPMemory(t *testing.T) {
	if _, err := os.Stat("/proc/sys/net/ipv4/tcp_mem"); err != nil {
		t.Skip(err)
	}
	r := newRig(t, nil, nil)
	waitFor(t, "the memory watch's first reading on /stats", func() string {
		if m := r.stats().Memory; m.TCPMax == 0 || m.TCPPressure == 0 || m.TCPPressure > m.TCPMax {
			return fmt.Sprintf("%+v", m)
		}
		return ""
	})
}
