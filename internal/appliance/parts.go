// The parts New wires that need a few lines of their own: the trust page,
// the roots upstream certificates are checked against, the plaintext tap
// into the capture, the destination check, and the memory watch.

package appliance

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/http"
	"os"

	"github.com/gwlbproxy/gwlbproxy/certs"
	"github.com/gwlbproxy/gwlbproxy/internal/memwatch"
	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/netstack/capture"
	"github.com/gwlbproxy/gwlbproxy/proxy/destcheck"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// trustHandler serves the CA-trust page, or nil without a CA.
func (a *Appliance) trustHandler() http.Handler {
	if a.ca == nil {
		return nil
	}
	return certs.TrustHandler(a.ca, a.opts.TrustHost)
}

// upstreamRoots returns the system roots plus the given PEM files.
func upstreamRoots(files []string) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("--upstream-ca: %w", err)
		}
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("--upstream-ca %s: no PEM certificate in it", f)
		}
	}
	return pool, nil
}

// plaintextTap hands the decrypted side of bumped connections to the
// capture, which synthesizes it as packets.
// a is the appliance whose flow table the streams' ports must not collide
// with: its netstack is up before the first bumped connection.
type plaintextTap struct {
	c *capture.Capture
	a *Appliance
}

// OpenPlaintext implements intercept.Plaintext.
func (p plaintextTap) OpenPlaintext(f intercept.PlaintextFlow) intercept.PlaintextStream {
	if s := p.c.OpenPlaintext(capture.PlaintextFlow{Endpoint: f.Endpoint, FlowCookie: f.FlowCookie, Client: f.Client, Dest: f.Dest,
		Taken: p.a.netstack.HasFlow}); s != nil {
		return s
	}
	return nil
}

// closeCapture writes out the queued packets and closes the pcap files,
// the mirror device and the key log, within ctx: what capture cannot write
// by then (a stalled disk) is dropped and counted, so that the drain keeps
// its bound.
func (a *Appliance) closeCapture(ctx context.Context) {
	if err := a.capture.CloseContext(ctx); err != nil {
		slog.Warn("closing the packet capture", "err", err)
	}
	if a.keyLog != nil {
		if err := a.keyLog.Close(); err != nil {
			slog.Warn("closing the TLS key log", "err", err)
		}
	}
}

// newDestCheck returns the checker that ties decisions made on names to
// destination addresses (policy destination_check: dns). Without a resolver
// it still accepts what relayed DNS answers vouch for; everything else
// fails to be checked, and the log says why.
func newDestCheck(o *Options) *destcheck.Checker {
	cfg := destcheck.Config{MaxEntries: o.DNSCacheSize, LookupTimeout: o.dnsLookupTimeout}
	if o.DNSResolver != "" {
		cfg.Resolver, _ = destcheck.ParseResolver(o.DNSResolver) // Validate checked it
	} else if r, err := destcheck.SystemResolver(destcheck.ResolvConf); err != nil {
		slog.Warn("the destination check has no resolver: only relayed DNS answers can vouch for names (set --dns-resolver)", "err", err)
	} else {
		cfg.Resolver = r
	}
	return destcheck.New(cfg)
}

// watchMemory tells the data plane how short of memory the process is
// until ctx ends, so that it refuses new flows before the OOM killer ends
// them all (package memwatch), and gives stalled relayed flows, which hold
// their buffers, less time (proxy.SetMemoryPressure). Logs, /stats and the
// health check name the measure that set the level.
func (a *Appliance) watchMemory(ctx context.Context) {
	first := true
	w := &memwatch.Watcher{Cgroup: a.opts.MemoryCgroup, Report: func(l memwatch.Level, c memwatch.Cause, s memwatch.Sample) {
		a.memoryReport(l, c, s, first)
		first = false
	}, Observe: a.observeMemory}
	w.Run(ctx)
}

// memoryReport applies a memory level and the measure that set it: to
// admission, the stall bound, /stats, the health check and the log. first
// is the watch's first reading, whose ample level is not news.
//
// Critical fails the health check, except when the kernel's TCP memory
// sets it: that pool is the host's, which one client can fill cheaply (a
// few dozen flows stalled both ways) and, in a container, other tenants'
// sockets count towards. Failing the check on it would let a client take
// target after target out of rotation for a few hundred connections, and
// another target would relieve nothing another tenant holds. Admission
// and the stall bound still act on it, which is what frees the pool.
func (a *Appliance) memoryReport(l memwatch.Level, c memwatch.Cause, s memwatch.Sample, first bool) {
	p := netstack.MemoryAmple
	switch l {
	case memwatch.Short:
		p = netstack.MemoryShort
	case memwatch.Critical:
		p = netstack.MemoryCritical
	}
	// The cause and the health check's reason first: whoever sees the
	// new level sees why.
	a.memoryCause.Store(int32(c))
	if p == netstack.MemoryCritical && c != memwatch.KernelTCPMemory {
		why := fmt.Sprintf("memory critical (%s), new flows refused to clients holding many (Go memory in use %s of a %s limit; %s of %s available; cgroup: %s of %s; kernel TCP memory %s, pressure from %s, max %s)",
			causeText(c), mib(s.InUse), mib(s.Limit), mib(s.Available), mib(s.Total), mib(s.CgroupAvailable), mib(s.CgroupTotal),
			mib(s.TCPInUse), mib(s.TCPPressure), mib(s.TCPMax))
		a.memoryCritical.Store(&why)
	} else {
		a.memoryCritical.Store(nil)
	}
	// Reclaim frees the stack's buffers; the kernel's TCP memory is the
	// host sockets', which resetting the heaviest client's connections
	// would not free (and any client can fill: see above).
	a.netstack.SetReclaim(c != memwatch.KernelTCPMemory)
	a.netstack.SetMemoryPressure(p)
	a.proxy.SetMemoryPressure(p)
	attrs := []any{"cause", c.String(), "go_in_use", s.InUse, "go_limit", s.Limit, "available", s.Available, "total", s.Total,
		"cgroup_available", s.CgroupAvailable, "cgroup_limit", s.CgroupTotal,
		"tcp_in_use", s.TCPInUse, "tcp_pressure", s.TCPPressure, "tcp_max", s.TCPMax}
	switch {
	case p == netstack.MemoryShort:
		slog.Warn("memory is short: clients holding many flows get no new ones", append(attrs, "client_flows", netstack.ShortMemoryClientFlows,
			"write_stall_timeout", a.proxy.WriteStallTimeout())...)
	case p == netstack.MemoryCritical:
		slog.Error("memory is critical: clients holding more than a few flows get no new ones", append(attrs, "client_flows", netstack.CriticalMemoryClientFlows,
			"write_stall_timeout", a.proxy.WriteStallTimeout(), "health_check_fails", c != memwatch.KernelTCPMemory)...)
	case !first:
		slog.Info("memory is ample again: new flows admitted", attrs...)
	}
}

// observeMemory keeps the last reading's kernel TCP memory for /stats.
func (a *Appliance) observeMemory(s memwatch.Sample) {
	a.tcpMem.Store(&memoryStats{TCPInUse: s.TCPInUse, TCPPressure: s.TCPPressure, TCPMax: s.TCPMax})
}

// causeText says in words which measure set a memory level.
func causeText(c memwatch.Cause) string {
	switch c {
	case memwatch.GoMemory:
		return "Go memory in use near --memory-limit"
	case memwatch.AvailableMemory:
		return "the machine's available memory low"
	case memwatch.CgroupMemory:
		return "the cgroup's memory near its limit"
	case memwatch.KernelTCPMemory:
		return "the kernel's TCP memory near net.ipv4.tcp_mem"
	}
	return c.String()
}

// mib writes n bytes in MiB; "none" for 0 (a measure not known).
func mib(n uint64) string {
	if n == 0 {
		return "none"
	}
	return fmt.Sprintf("%d MiB", n>>20)
}
