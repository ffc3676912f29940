// Package appliance is one running gwlbproxy: it builds the data path
// (netstack, proxy, interception), the record sinks and the admin listener
// from Options, serves until told to stop, reloads the policy, drains, and
// answers the GWLB's health check. cmd/gwlbproxy only turns flags into
// Options.
package appliance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gwlbproxy/gwlbproxy/certs"
	"github.com/gwlbproxy/gwlbproxy/cwlogs"
	"github.com/gwlbproxy/gwlbproxy/internal/clientkey"
	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/netstack/capture"
	"github.com/gwlbproxy/gwlbproxy/proxy"
	"github.com/gwlbproxy/gwlbproxy/proxy/destcheck"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// Options is everything the appliance is configured with.
type Options struct {
	GeneveAddr        string
	AdminAddr         string
	AccessLog         string
	AccessLogRotation records.Rotation // --access-log-max-size, --access-log-max-age, --access-log-keep: the file rotates itself
	DrainTimeout      time.Duration
	DrainMin          time.Duration // --drain-min: a drain serves at least this long, new flows too, while the GWLB counts the 503s (drainFlows)
	TCPIdleTimeout    time.Duration
	IdleTimeout       time.Duration
	DialTimeout       time.Duration
	WriteStallTimeout time.Duration // a relayed TCP flow whose write makes no progress for it is aborted (proxy.Config.WriteStallTimeout)
	MaxFlows          int
	MaxFlowsPerClient int
	Readers           int
	ReturnPath        string
	MTU               int
	AckDelay          time.Duration // how long a pure ACK may wait for a reply to carry it (netstack.Config.AckDelay); 0: off
	LogLevel          string
	StateDir          string
	CACert            string
	CAKey             string
	CASecret          certs.Secret // --ca-secret*: the CA from AWS Secrets Manager
	TrustHost         string
	Config            string
	UpstreamCA        []string
	MaxHeaderBytes    int
	GWLBCIDRs         []netip.Prefix
	gwlbCIDRsFromVPC  bool           // GWLBCIDRs is the VPC's CIDR blocks, --gwlb-cidrs not given (resolveGWLBSenders)
	vpcCIDRs          []netip.Prefix // the VPC's CIDR blocks, nil if unknown: their base + 2 is refused (resolveVPCResolver)
	sysfs             string         // where sysfs is read from to tell EC2's hardware ("": /sys); tests fake it
	CloudWatch        cwlogs.Config  // shipping is on when Group is set
	AllowLoopback     bool           // --unsafe-allow-loopback: tests and benchmarks only
	// RecordStall is how long access records may be stuck behind a blocked
	// or slow sink, dropped without a break, or failing to be written (with
	// no clean second between failures), before the health check reports
	// the appliance broken.
	RecordStall time.Duration
	// DNSResolver is the DNS server the destination check (policy
	// destination_check: dns) asks for the addresses of names: an IP
	// address, optionally with a port. "": the first nameserver in
	// /etc/resolv.conf.
	DNSResolver string
	// DNSObserve lets the DNS answers relayed to a GWLB endpoint's
	// clients vouch for the destinations of that endpoint's flows.
	DNSObserve bool
	// DNSCacheSize bounds the names the destination check keeps: observed
	// answers and its own lookups, each. 0: destcheck.DefaultMaxEntries.
	DNSCacheSize int
	// AnyGWLBSender (--gwlb-cidrs any) accepts GENEVE from every sender:
	// the explicit opt-out of the sender check, warned about at start.
	// Without it and without GWLBCIDRs, New reads the VPC's CIDR blocks
	// from instance metadata, and off EC2 refuses to start.
	AnyGWLBSender bool
	// MetadataEndpoint is the instance metadata service the VPC's CIDR
	// blocks are read from (empty: the SDK's default, or
	// AWS_EC2_METADATA_SERVICE_ENDPOINT). Tests point it at a local server.
	MetadataEndpoint string
	// MaxEndpoints caps the GWLB endpoints served at once (--max-endpoints),
	// each with a gVisor stack of its own.
	MaxEndpoints int
	// DNSPorts are the UDP destination ports read as DNS (--dns-ports):
	// one record per query, answers to the destination check, and flows
	// ended a second after their last answer.
	DNSPorts []uint16
	// MaxUDPFlowsPerClient bounds the UDP flows (host sockets, each with
	// an ephemeral port) one client holds at once
	// (--max-udp-flows-per-client).
	MaxUDPFlowsPerClient int
	// MemoryCgroup is the directory of the cgroup whose memory limit binds
	// the process, if one does: the memory watch reads it instead of the
	// machine's MemAvailable (package memwatch).
	MemoryCgroup string
	// MaxEchoFlowsPerClient bounds the relayed ICMP echo flows (host ping
	// sockets) one client holds at once (--max-echo-flows-per-client).
	MaxEchoFlowsPerClient int
	// IPv6ClientPrefix (--ipv6-client-prefix) is the prefix length an IPv6
	// client is counted by in every per-client share, 48 to 128: 80, a
	// delegated prefix, by default; 128 counts each address apart
	// (package clientkey).
	IPv6ClientPrefix int
	// TLSKeyLog (--tls-keylog) is the file the secrets of both TLS
	// sessions of every bumped connection are appended to, in NSS key log
	// format, for Wireshark to decrypt captures with ("": none).
	TLSKeyLog string
	// Capture copies the inner packets to rotated pcapng files
	// (--pcap-dir and the --pcap-* flags) and to a mirror TAP device
	// (--mirror-tap); off when neither is set. With Capture.Plaintext
	// (--capture-plaintext) both also get the decrypted side of every
	// bumped connection, synthesized as packets.
	Capture capture.Config
	// NewStacksAtFullProcs wraps the making of each GWLB endpoint's stack
	// (netstack.Config.NewStacksAtFullProcs): main passes the Full of its
	// GOMAXPROCS controller (--adapt-procs).
	NewStacksAtFullProcs func(newStack func())

	// dnsLookupTimeout bounds the destination check's lookups
	// (destcheck.DefaultLookupTimeout when zero). No flag sets it: a test
	// that holds a lookup unanswered sets it past the work it does meanwhile.
	dnsLookupTimeout time.Duration
}

// defaultRecordStall outlasts the hiccups of a healthy log sink (a rotation,
// a slow fsync, a journald restart) that the record queue rides out; a sink
// stuck for longer leaves every new flow unaudited.
const defaultRecordStall = 30 * time.Second

// DefaultOptions returns the options of an appliance deployed behind a
// GWLB: its ports, timeouts and limits.
func DefaultOptions() Options {
	return Options{
		GeneveAddr:            fmt.Sprintf(":%d", netstack.GenevePort),
		AdminAddr:             ":80",
		AccessLog:             "-",
		AccessLogRotation:     records.Rotation{MaxSize: records.DefaultMaxSize, MaxAge: 24 * time.Hour, Keep: 7},
		DrainTimeout:          300 * time.Second,
		TCPIdleTimeout:        350 * time.Second,
		IdleTimeout:           120 * time.Second,
		DialTimeout:           10 * time.Second,
		WriteStallTimeout:     proxy.DefaultWriteStallTimeout,
		MaxFlows:              1_000_000,
		MaxEndpoints:          netstack.DefaultMaxEndpoints,
		ReturnPath:            netstack.ReturnPathAuto,
		AckDelay:              netstack.DefaultAckDelay,
		LogLevel:              "info",
		MaxHeaderBytes:        intercept.DefaultMaxHeaderBytes,
		StateDir:              "/var/lib/gwlbproxy",
		TrustHost:             certs.DefaultTrustHost,
		RecordStall:           defaultRecordStall,
		DNSObserve:            true,
		DNSPorts:              []uint16{53},
		MaxUDPFlowsPerClient:  proxy.DefaultMaxUDPFlowsPerClient,
		MaxEchoFlowsPerClient: proxy.DefaultMaxEchoFlowsPerClient,
		IPv6ClientPrefix:      clientkey.DefaultIPv6Bits,
		DNSCacheSize:          destcheck.DefaultMaxEntries,
	}
}

// Appliance is one running gwlbproxy: the GENEVE side, the proxy, the
// admin listener, and the record sinks.
type Appliance struct {
	opts     Options
	netstack *netstack.Server
	proxy    *proxy.Proxy
	ca       *certs.CA
	minter   *certs.Minter
	policy   *policy.Holder
	// reloadMu serialises Reload, so that its compare of the policy
	// before and after is of its own load.
	reloadMu sync.Mutex
	shipper  *cwlogs.Shipper
	records  *records.Writer
	admin    *http.Server
	adminLn  net.Listener
	closers  []io.Closer
	draining atomic.Bool
	// geneveDown is set when the GENEVE readers have stopped: while not
	// draining, no packet from the GWLB is read any more.
	geneveDown atomic.Bool
	wasBroken  atomic.Bool // for logging changes of the health check only
	// memoryCritical says how short memory is while it is critical
	// (watchMemory), nil otherwise.
	memoryCritical atomic.Pointer[string]
	// memoryCause is the memwatch.Cause of the memory level in force.
	memoryCause atomic.Int32
	// tcpMem is the last reading's kernel TCP memory in use, pressure
	// threshold and max, in bytes (observeMemory): one pointer, so /stats
	// never shows the three from two readings.
	tcpMem atomic.Pointer[memoryStats]
	// accessLog is the --access-log file (nil: none, or stdout).
	accessLog *records.LogFile
	// destCheck ties decisions made on names to destination addresses.
	destCheck *destcheck.Checker
	// capture copies inner packets to pcap files and the mirror (nil: off);
	// keyLog is the TLS key log (nil: off).
	capture *capture.Capture
	keyLog  *capture.KeyLog
	cut     drainCut // CutDrain: a SIGINT during a drain
}

// New opens every listener; Run serves them. On an error, whatever it had
// opened is closed again.
func New(o Options) (_ *Appliance, err error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if err := clientkey.SetIPv6Bits(o.IPv6ClientPrefix); err != nil {
		return nil, err
	}
	if o.RecordStall <= 0 {
		o.RecordStall = defaultRecordStall
	}
	if err := resolveGWLBSenders(&o); err != nil {
		return nil, err
	}
	senders, err := geneveSenders(&o)
	if err != nil {
		return nil, err
	}
	resolveVPCResolver(&o)
	// a, not the named result: an error return sets that to nil before
	// the deferred clean-up below reads it.
	a := &Appliance{opts: o, policy: proxy.AllowAll()}
	if o.Config != "" {
		if err := a.policy.LoadFile(o.Config); err != nil {
			return nil, fmt.Errorf("--config: %w", err)
		}
	}
	logPolicy("policy loaded", a.policy.Status())
	// Audit mode decrypts nothing and so needs no CA, unless one is given.
	if a.policy.Load().Mode() != policy.Audit || o.CACert != "" || o.CASecret.ID != "" {
		if a.ca, err = LoadCA(&o); err != nil {
			return nil, err
		}
		warnCAKey(a.ca) // an RSA, P-384 or P-521 CA mints 6 to 40 times dearer
		if a.minter, err = certs.NewMinter(a.ca, certs.MinterOptions{}); err != nil {
			return nil, err
		}
	}
	roots, err := upstreamRoots(o.UpstreamCA)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			a.Close()
		}
	}()
	var files []io.Writer
	switch o.AccessLog {
	case "":
	case "-":
		files = append(files, os.Stdout)
	default:
		// Reopened when logrotate renames it (records.LogFile), and
		// rotated past its size (records.Rotation).
		f, err := records.OpenLogFile(o.AccessLog, o.AccessLogRotation)
		if err != nil {
			return nil, fmt.Errorf("opening --access-log: %w", err)
		}
		files = append(files, f)
		a.closers = append(a.closers, f)
		a.accessLog = f
	}
	var shipper records.Shipper
	if o.CloudWatch.Group != "" {
		if a.shipper, err = cwlogs.New(context.Background(), o.CloudWatch); err != nil {
			return nil, fmt.Errorf("CloudWatch Logs: %w", err)
		}
		shipper = a.shipper
	}
	if len(files) == 0 && shipper == nil {
		// Documented (--access-log ""), so allowed, but an appliance whose
		// job is to audit egress then audits nothing: say so loudly.
		slog.Warn("no access record sink: --access-log is empty and --cloudwatch-group unset, so no flow is recorded (each record is counted as dropped)")
	}
	a.records = records.NewWriter(shipper, files...)
	a.destCheck = newDestCheck(&o)
	var dnsAnswer func(uint64, string, netip.Addr, []byte)
	if o.DNSObserve {
		dnsAnswer = a.destCheck.ObserveAt
	}
	var keyLog io.Writer
	if o.TLSKeyLog != "" {
		if a.keyLog, err = capture.OpenKeyLog(o.TLSKeyLog); err != nil {
			return nil, err
		}
		keyLog = a.keyLog
		slog.Warn("--tls-keylog: the secrets of every bumped TLS connection are written to the key log; anyone who can read it can decrypt captures of them",
			"file", o.TLSKeyLog)
	}
	if a.capture, err = capture.New(o.Capture); err != nil {
		return nil, err
	}
	var tap netstack.Tap          // a nil *Capture in it would not be nil
	var plain intercept.Plaintext // likewise
	if a.capture != nil {
		tap = a.capture
		slog.Info("capturing inner packets", "pcap_dir", o.Capture.PcapDir, "mirror_tap", o.Capture.MirrorTAP,
			"pcap_filters", len(o.Capture.Filters), "plaintext", o.Capture.Plaintext)
		if o.Capture.Plaintext {
			plain = plaintextTap{a.capture, a}
			slog.Warn("--capture-plaintext: the decrypted contents of every bumped connection are written to the capture outputs; anyone who can read them reads the traffic")
		}
	}
	// How long a flow nobody answered yet lives, in the stack and the UDP
	// relay alike; a SYN waits for the dial, so it outlives the dial.
	transitory := max(netstack.DefaultTransitoryTimeout, 2*o.DialTimeout)
	a.proxy = proxy.New(proxy.Config{
		DialTimeout:           o.DialTimeout,
		UDPIdleTimeout:        o.IdleTimeout,
		UDPUnansweredTimeout:  transitory,
		EchoIdleTimeout:       o.IdleTimeout,
		Records:               a.records,
		AllowLoopback:         o.AllowLoopback,
		Policy:                a.policy,
		DestinationCheck:      a.destCheck.Check,
		DestinationLookedUp:   a.destCheck.LookedUp,
		DNSAnswer:             dnsAnswer,
		DNSGeneration:         a.destCheck.Generation,
		DNSPorts:              o.DNSPorts,
		MaxUDPFlowsPerClient:  o.MaxUDPFlowsPerClient,
		MaxEchoFlowsPerClient: o.MaxEchoFlowsPerClient,
		WriteStallTimeout:     o.WriteStallTimeout,
		// Sibling appliances' and the GWLB's GENEVE and admin ports.
		SenderPrefixes: senderPrefixes(&o),
		GenevePorts:    genevePorts(o.GeneveAddr),
		AdminPort:      senderAdminPort(&o),
		// The VPC's DNS server, which would answer as the appliance.
		VPCCIDRs: o.vpcCIDRs,
		Intercept: intercept.Config{
			Minter:         a.minter,
			UpstreamRoots:  roots,
			Trust:          a.trustHandler(),
			TrustHost:      o.TrustHost,
			MaxHeaderBytes: o.MaxHeaderBytes,
			KeyLogWriter:   keyLog,
			Plaintext:      plain,
		},
	})
	a.netstack, err = netstack.Listen(netstack.Config{
		ListenAddr:           o.GeneveAddr,
		Readers:              o.Readers,
		ReturnPath:           o.ReturnPath,
		TCPIdleTimeout:       o.TCPIdleTimeout,
		TransitoryTimeout:    transitory,
		IdleTimeout:          o.IdleTimeout,
		MaxFlows:             o.MaxFlows,
		MaxFlowsPerClient:    o.MaxFlowsPerClient,
		MTU:                  o.MTU,
		AckDelay:             o.AckDelay,
		AllowLoopback:        o.AllowLoopback,
		Senders:              senders,
		MaxEndpoints:         o.MaxEndpoints,
		Handler:              a.proxy,
		Tap:                  tap,
		NewStacksAtFullProcs: o.NewStacksAtFullProcs,
		// A connection the proxy has closed gets as long to deliver its
		// last bytes as a write of the relay would have had.
		TCP: netstack.TCPOptions{ClosedSendTimeout: o.WriteStallTimeout},
	})
	if err != nil {
		return nil, err
	}
	a.adminLn, err = net.Listen("tcp", o.AdminAddr)
	if err != nil {
		return nil, fmt.Errorf("admin listener on %s: %w", o.AdminAddr, err)
	}
	a.admin = a.adminServer()
	return a, nil
}

// Carried is the bytes of GENEVE the appliance has taken in and sent out so
// far: the work its GOMAXPROCS controller judges a raise by.
func (a *Appliance) Carried() uint64 { return a.netstack.Carried() }

// Close releases an appliance that was never Run (Run releases everything
// itself), and what a failed New had opened.
func (a *Appliance) Close() {
	if a.adminLn != nil {
		a.adminLn.Close()
	}
	if a.netstack != nil {
		a.netstack.Close()
	}
	if a.destCheck != nil {
		a.destCheck.Close()
	}
	if a.proxy != nil {
		a.proxy.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	a.closeCapture(ctx)
	a.closeSinks(ctx)
	if a.shipper != nil {
		_ = a.shipper.Close(ctx) // nothing was shipped yet
	}
}

// Run serves until ctx is cancelled, then drains: health turns 503 at once,
// flows keep being served (new ones too) for at least DrainMin, then until
// none remain or the drain's flow time passes, and the records are written
// and shipped within the rest of the drain.
func (a *Appliance) Run(ctx context.Context, drain func() time.Duration) error {
	wctx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	go a.watchMemory(wctx)
	if a.ca != nil {
		go a.watchCAExpiry(wctx, caExpiryCheckEvery)
	}
	go func() {
		a.netstack.Serve()
		a.geneveDown.Store(true)
		if !a.draining.Load() {
			slog.Error("GENEVE readers stopped: the health check reports broken")
		}
	}()
	go func() {
		if err := a.admin.Serve(a.adminLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Error("admin listener", "err", err)
		}
	}()
	slog.Info("gwlbproxy serving", "geneve", a.netstack.Addr(), "admin", a.adminLn.Addr())
	<-ctx.Done()
	a.draining.Store(true)
	timeout := drain()
	end := time.Now().Add(timeout)
	reserve := flushReserve(timeout)
	slog.Info("draining", "active_flows", a.proxy.Active(), "timeout", timeout, "flush_reserve", reserve, "min", a.opts.DrainMin)
	end, reserve = a.drainFlows(time.Now().Add(a.opts.DrainMin), end, reserve)
	a.proxy.StacksClosing() // the flows closing the stacks ends are recorded as the shutdown's
	a.netstack.Close()
	a.destCheck.Close()
	a.proxy.Close()
	// Closing the stacks ends the flows the drain left open; their records
	// follow within moments: wait for them half the reserve, at least half
	// a second (a drain of 0 has no reserve), and never past the end.
	recordsDue := end.Add(-reserve / 2)
	recordsFloor := time.Now().Add(500 * time.Millisecond)
	if recordsDue.Before(recordsFloor) {
		recordsDue = recordsFloor
	}
	if latest := end.Add(time.Second); recordsDue.After(latest) {
		recordsDue = latest
	}
	// A cut (CutDrain) arriving now bounds this wait as it bounds a
	// drain of its length: half its reserve before its deadline.
	rctx, rcancel := a.untilCut(recordsDue, recordsFloor, func(deadline time.Time, within time.Duration) time.Time {
		return deadline.Add(-flushReserve(within) / 2)
	})
	if err := a.proxy.Wait(rctx); err != nil {
		// These flows' records will never be written: say how many, so
		// that the loss is not silent.
		st := a.proxy.Stats()
		slog.Error("flows still open after the stacks closed; their access records are lost",
			"active_flows", a.proxy.Active(), "tcp", st.TCPActive, "udp", st.UDPActive, "icmp", st.EchoActive)
	}
	rcancel()
	// An admin client that holds its connection open must not eat the
	// records' time: the admin listener gets a moment, then is closed.
	actx, acancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	if err := a.admin.Shutdown(actx); err != nil {
		_ = a.admin.Close()
	}
	acancel()
	// The files, CloudWatch and the packet capture each have their own
	// queue: flush them at once, so that a stuck file cannot take
	// CloudWatch's time, and the records never wait behind packets (up to
	// 4096 queued per capture output, on a disk that may be stalled).
	flushDue := end.Add(time.Second)
	flushFloor := time.Now().Add(time.Second)
	if flushDue.Before(flushFloor) {
		flushDue = flushFloor
	}
	// A cut, in any phase of the drain, ends the flush a second after its
	// deadline: flushDue comes from the drain's original end when the cut
	// arrived after the flows were gone.
	sctx, scancel := a.untilCut(flushDue, flushFloor, func(deadline time.Time, _ time.Duration) time.Time {
		return deadline.Add(time.Second)
	})
	defer scancel()
	var wg sync.WaitGroup
	wg.Go(func() { a.closeCapture(sctx) })
	if a.shipper != nil {
		wg.Go(func() {
			// What cannot be shipped by then is counted as dropped.
			if err := a.shipper.Close(sctx); err != nil {
				slog.Error("flushing records to CloudWatch Logs", "err", err, "stats", a.shipper.Stats())
			}
		})
	}
	a.closeSinks(sctx)
	wg.Wait()
	slog.Info("stopped")
	return nil
}

// closeSinks writes out the records still queued for the files, within
// ctx, then closes the files. The CloudWatch shipper is closed afterwards.
func (a *Appliance) closeSinks(ctx context.Context) {
	if a.records != nil {
		if err := a.records.Close(ctx); err != nil {
			slog.Error("writing the last access records", "err", err, "records", a.records.Stats())
		}
	}
	for _, c := range a.closers {
		if err := c.Close(); err != nil {
			slog.Warn("closing a record sink", "err", err)
		}
	}
}
