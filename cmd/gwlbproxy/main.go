// Command gwlbproxy is a transparent egress proxy appliance for the AWS
// Gateway Load Balancer. See the README for its flags and deployment.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gwlbproxy/gwlbproxy/cwlogs"
	"github.com/gwlbproxy/gwlbproxy/internal/appliance"
	"github.com/gwlbproxy/gwlbproxy/internal/cliflag"
	"github.com/gwlbproxy/gwlbproxy/netstack/capture"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

func main() {
	err := runMain(os.Args[1:], os.Stdout, os.Stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0) // the usage was asked for, and printed: no error
	case err != nil:
		fmt.Fprintln(os.Stderr, "gwlbproxy:", err)
		os.Exit(2)
	}
}

func runMain(args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "version":
			fmt.Fprintln(stdout, "gwlbproxy", versionString())
			return nil
		case "ca":
			return runCA(args[1:], stdout, stderr)
		case "policy":
			return runPolicy(args[1:], stdout, stderr) // policycmd.go
		case "queries":
			return runQueriesCommand(context.Background(), args[1:], stdout, cwlogs.NewClient)
		case "query":
			return runQueryCommand(context.Background(), args[1:], stdout, cwlogs.NewClient)
		}
	}
	sigs, stopSignals := catchSignals() // before anything slow: see catchSignals
	o, p, err := parseArgs(args, stderr)
	if err != nil {
		stopSignals() // for callers in the same process (tests): nothing ran
		return err
	}
	// From here on the signals stay caught until the process exits: with
	// their default actions restored on the way out, a SIGHUP (a reload,
	// a path watcher) in the last moments would kill the process, and the
	// unit's RestartForceExitStatus=SIGHUP would restart an appliance the
	// operator stopped. One that comes then is read, or dropped, unheeded.
	setupLogging(o.LogLevel, stderr)
	if p.sniffWait {
		slog.Warn("--sniff-wait is deprecated and ignored: a connection is classified by whichever side speaks first")
	}
	// The access records go to stdout by default (--access-log -), and the
	// logs to stderr. Unless SIGPIPE is handled, Go kills the process when
	// a write to fd 1 or 2 meets a closed pipe (a log reader restarted or
	// gone): one such write would take every flow down with it. Ignored,
	// the write fails with EPIPE instead, counted as a failed record and,
	// after --record-stall, a failing health check, while the flows go on.
	// Only the appliance does this: the one-shot commands above keep the
	// usual behaviour of dying quietly in front of `| head`.
	signal.Ignore(syscall.SIGPIPE)
	if err := applyMemoryLimit(slog.Default(), p.memLimit, os.Getenv("GOMEMLIMIT"), os.DirFS("/")); err != nil {
		return err
	}
	o.MemoryCgroup = memoryCgroup(os.DirFS("/"))
	ctl, stopProcs := startProcs(slog.Default(), p.adaptProcs, os.Getenv("GOMAXPROCS"))
	defer stopProcs()
	if ctl != nil {
		o.NewStacksAtFullProcs = ctl.Full
	}
	a, reload, stop, err := awaitStart(sigs, func() (*appliance.Appliance, error) { return appliance.New(o) })
	if stop != nil {
		return nil
	}
	if err != nil {
		return err
	}
	if ctl != nil {
		ctl.SetWork(a.Carried)
	}
	// Every listener is open: the GWLB's health check and GENEVE queue
	// in the kernel until Run serves them, moments from now. READY=1 goes
	// before signalContext starts reading stops, so that systemd never
	// gets STOPPING=1 before it; a stop meanwhile waits in its channel.
	notify("READY=1")
	// A SIGHUP caught during start-up is reloaded on the reload goroutine,
	// not here: a stop signal is read while it runs, not held behind it.
	ctx, fast := signalContext(sigs, reload, a.Reload, func() { notify("STOPPING=1") }, a.CutDrain)
	return a.Run(ctx, func() time.Duration {
		if fast.Load() {
			return min(o.DrainTimeout, fastDrain)
		}
		return o.DrainTimeout
	})
}

// catchSignals catches SIGTERM, SIGINT and SIGHUP from now on. runMain
// calls it before anything slow: start-up can take seconds (instance
// metadata, the CA from Secrets Manager), and a SIGHUP's default action
// is to kill the process, with a status (signalled) that systemd's
// Restart=on-failure counts as clean: a SIGHUP landing in that window
// would leave the appliance down for good. The runtime's and the packages'
// initialisation before main (about 100-200 ms) remains a window no code
// here can close; the packaged unit's RestartForceExitStatus=SIGHUP
// restarts a process a SIGHUP killed there.
func catchSignals() (signals, func()) {
	// Buffered: signal.Notify drops what does not fit. Stops have their
	// own channel, read by a goroutine that does nothing slow, so a burst
	// of SIGHUPs cannot crowd a SIGTERM out; the SIGHUP channel's one
	// slot coalesces a burst into one reload (see signals.hup).
	stop, hup := make(chan os.Signal, 4), make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	signal.Notify(hup, syscall.SIGHUP)
	return signals{stop: stop, hup: hup}, func() { signal.Stop(stop); signal.Stop(hup) }
}

// version is stamped at build time (make build: -X main.version=...).
var version string

// versionString is the stamped version, or else the git revision the go
// command recorded in the binary.
func versionString() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	rev, dirty := "", false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "unknown"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "-dirty"
	}
	return rev
}

// parseFlags parses the appliance's flags into its options.
func parseFlags(args []string, stderr io.Writer) (appliance.Options, error) {
	o, _, err := parseArgs(args, stderr)
	return o, err
}

// processFlags are the flags that tune the process rather than the appliance.
type processFlags struct {
	memLimit   memoryLimit
	adaptProcs bool
	sniffWait  bool // the deprecated --sniff-wait was given
}

// parseArgs parses the flags: the appliance's options, and the process's
// (--memory-limit, applyMemoryLimit; --adapt-procs, startProcs).
func parseArgs(args []string, stderr io.Writer) (appliance.Options, processFlags, error) {
	o, p := appliance.DefaultOptions(), processFlags{memLimit: defaultMemoryLimit(), adaptProcs: true}
	fs := flag.NewFlagSet("gwlbproxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.GeneveAddr, "geneve-addr", o.GeneveAddr, "UDP address the GWLB's GENEVE traffic arrives on")
	fs.StringVar(&o.AdminAddr, "admin-addr", o.AdminAddr, "TCP address of the admin listener: health check (/), /stats, /metrics")
	fs.StringVar(&o.AccessLog, "access-log", o.AccessLog, `file access records are appended to as JSON lines ("-": stdout, "": none)`)
	fs.Func("access-log-max-size", "size past which the --access-log file rotates itself (to FILE.1, ... FILE.N, the oldest removed): 1GiB, 512MiB (default 1GiB); past twice this, its rotation failing for 10s, records fail; 0: another rotator's, and 1GiB when no logrotate configuration names the file. Whatever this says, a logrotate configuration that names the file at start leaves its rotation to logrotate, this then only a backstop: past twice it for 10s, records fail until logrotate renames the file; its first rename (or copytruncate) disarms it", func(v string) error {
		if v == "0" {
			o.AccessLogRotation.MaxSize = 0
			return nil
		}
		n, err := parseSize(v)
		if err != nil {
			return err
		}
		if n < 1<<20 {
			return fmt.Errorf("%d bytes: under 1 MiB, the log would rotate away records within seconds", n)
		}
		o.AccessLogRotation.MaxSize = n
		return nil
	})
	fs.DurationVar(&o.AccessLogRotation.MaxAge, "access-log-max-age", o.AccessLogRotation.MaxAge, "how old the --access-log file gets (from its birth time, or where the filesystem keeps none from when the appliance opened it) before it is rotated, at the next batch of records written (same chain as --access-log-max-size): 24h, 1h, 0 for never; at least 1m")
	fs.IntVar(&o.AccessLogRotation.Keep, "access-log-keep", o.AccessLogRotation.Keep, "how many files the appliance's rotation (--access-log-max-size, --access-log-max-age) keeps (FILE.1 to FILE.N), 1 to 1000")
	fs.DurationVar(&o.DrainTimeout, "drain-timeout", o.DrainTimeout, "on SIGTERM, how long until exit: existing flows are served, then the last records shipped in the last fifth (1s to 10s) of it (SIGINT: at most 5s)")
	fs.DurationVar(&o.DrainMin, "drain-min", o.DrainMin, "on SIGTERM, how long the drain lasts at least, flows open or not: new flows are still served while the health check's 503 reaches the GWLB; set it above the target group's unhealthy threshold times its interval (0 to --drain-timeout)")
	fs.DurationVar(&o.TCPIdleTimeout, "tcp-idle-timeout", o.TCPIdleTimeout, "TCP flow idle timeout; match the GWLB's (60s-6000s)")
	fs.DurationVar(&o.IdleTimeout, "idle-timeout", o.IdleTimeout, "idle timeout of UDP and ICMP flows")
	fs.DurationVar(&o.DialTimeout, "dial-timeout", o.DialTimeout, "how long connecting to a destination may take before the client gets a RST (at most "+appliance.MaxDialTimeout.String()+")")
	fs.DurationVar(&o.WriteStallTimeout, "write-stall-timeout", o.WriteStallTimeout, "how long a relayed TCP flow's write to the client or the destination may make no progress before the flow is reset (60s at most while memory is short, 10s while critical)")
	fs.IntVar(&o.MaxFlows, "max-flows", o.MaxFlows, "flow table capacity; a new flow beyond it takes the place of the oldest never established or answered, else is dropped and counted")
	fs.IntVar(&o.MaxFlowsPerClient, "max-flows-per-client", 0, "flows one client (inner source IPv4 address or IPv6 prefix of --ipv6-client-prefix, behind one GWLB endpoint) may hold; 0: a tenth of --max-flows")
	fs.IntVar(&o.MaxEchoFlowsPerClient, "max-echo-flows-per-client", o.MaxEchoFlowsPerClient, "relayed ICMP echo flows (host ping sockets: the host has about 65,000 ping identifiers) one client (IPv4 address or IPv6 prefix of --ipv6-client-prefix, behind one GWLB endpoint) may hold at once; new ones beyond it are dropped and counted")
	fs.IntVar(&o.MaxUDPFlowsPerClient, "max-udp-flows-per-client", o.MaxUDPFlowsPerClient, "UDP flows (host sockets, an ephemeral port each) one client (IPv4 address or IPv6 prefix of --ipv6-client-prefix, behind one GWLB endpoint) may hold at once; new flows beyond it are dropped and counted")
	fs.IntVar(&o.IPv6ClientPrefix, "ipv6-client-prefix", o.IPv6ClientPrefix, "prefix length (48-128) an IPv6 client is counted by in every per-client share: 80 makes a prefix-delegated /80 one client; hosts given addresses one by one then share their /80 with any neighbour that picks an address in it, so without prefix delegation set 128")
	fs.IntVar(&o.Readers, "readers", o.Readers, "GENEVE reader sockets (SO_REUSEPORT); 0: one per CPU")
	fs.StringVar(&o.ReturnPath, "return-path", o.ReturnPath, "how replies reach the GWLB from each flow's source port: raw (CAP_NET_RAW), bound (a UDP socket per port), auto")
	fs.DurationVar(&o.AckDelay, "ack-delay", o.AckDelay, "how long a pure ACK to a client that answers quickly may wait for a reply to carry it (delayed ACK; 0: off, at most 40ms)")
	fs.IntVar(&o.MTU, "mtu", o.MTU, "inner MTU; 0 picks the largest that keeps every GENEVE datagram within the GWLB's 8500 bytes")
	fs.StringVar(&o.StateDir, "state-dir", o.StateDir, "directory for state kept across restarts: the CA created on first start")
	fs.StringVar(&o.CACert, "ca-cert", o.CACert, "interception CA certificate (PEM; may hold an intermediate and its issuers); with --ca-key, instead of the state-dir CA")
	fs.StringVar(&o.CAKey, "ca-key", o.CAKey, "the CA's private key (PEM)")
	caSecretFlags(fs, &o)
	fs.StringVar(&o.TrustHost, "trust-host", o.TrustHost, "host name whose requests the appliance answers with the CA-trust page")
	fs.Func("gwlb-cidrs", `comma-separated CIDRs GENEVE is accepted from: the GWLB's subnets (default on EC2: the VPC's CIDR blocks, from instance metadata; required elsewhere). "any" accepts every sender: unsafe`, func(v string) error {
		if strings.TrimSpace(v) == "any" {
			o.AnyGWLBSender = true
			return nil
		}
		ps, err := parseGWLBCIDRs(v)
		o.GWLBCIDRs = append(o.GWLBCIDRs, ps...)
		return err
	})
	fs.IntVar(&o.MaxEndpoints, "max-endpoints", o.MaxEndpoints, "GWLB endpoints served at once, each with a stack of its own; datagrams for new endpoints beyond it are dropped and counted")
	fs.StringVar(&o.Config, "config", o.Config, "YAML file with the egress policy (see README); SIGHUP reloads it")
	fs.Func("upstream-ca", "PEM file of extra roots bumped destinations are verified against, besides the system's (repeatable)", func(v string) error {
		o.UpstreamCA = append(o.UpstreamCA, v)
		return nil
	})
	fs.Func("sniff-wait", "deprecated and ignored: a connection is classified by whichever side speaks first, with no time limit", func(string) error {
		// Accepted so that unit files written for older versions still
		// start; warned about by runMain once logging is set up, in its
		// format and at its level (logged here, it went out through Go's
		// default logger, in another format, whatever --log-level said).
		p.sniffWait = true
		return nil
	})
	fs.DurationVar(&o.RecordStall, "record-stall", o.RecordStall, "how long access records may wait behind a blocked or slow sink, be dropped, or keep failing to be written before the health check reports the appliance broken (503)")
	fs.IntVar(&o.MaxHeaderBytes, "max-header-bytes", o.MaxHeaderBytes, "largest HTTP/1 request head (request line and headers, 64 bytes more a line), and HTTP/2 header list (32 bytes more a field), a client may send; a larger one gets 431 (1024 to 1048576)")
	fs.StringVar(&o.DNSResolver, "dns-resolver", o.DNSResolver, "DNS server the destination check asks for the addresses of names (IP, or IP:port; default: the first nameserver in /etc/resolv.conf)")
	fs.BoolVar(&o.DNSObserve, "dns-observe", o.DNSObserve, "let the DNS answers relayed to a GWLB endpoint's clients vouch for that endpoint's destinations (false: only the appliance's own lookups do)")
	fs.IntVar(&o.DNSCacheSize, "dns-cache-size", o.DNSCacheSize, "names the destination check keeps, for observed answers and for its own lookups each; one endpoint's answers get at most half")
	fs.Func("dns-ports", "comma-separated UDP destination ports whose traffic is read as DNS: a record per query, answers to the destination check (default 53)", func(v string) error {
		o.DNSPorts = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.ParseUint(strings.TrimSpace(f), 10, 16)
			if err != nil || n == 0 {
				return fmt.Errorf("%q: want ports 1-65535", f)
			}
			o.DNSPorts = append(o.DNSPorts, uint16(n))
		}
		return nil
	})
	fs.StringVar(&o.CloudWatch.Group, "cloudwatch-group", "", "CloudWatch Logs group to ship access records to (off when empty); created if missing. The other --cloudwatch-* flags need it")
	fs.StringVar(&o.CloudWatch.Stream, "cloudwatch-stream", "", "log stream (default: the EC2 instance ID, or the host name off EC2)")
	fs.StringVar(&o.CloudWatch.Region, "cloudwatch-region", "", "AWS region (default: from the environment or instance metadata)")
	fs.StringVar(&o.CloudWatch.Endpoint, "cloudwatch-endpoint", "", "CloudWatch Logs endpoint URL, e.g. a VPC endpoint")
	fs.DurationVar(&o.CloudWatch.FlushInterval, "cloudwatch-flush", cwlogs.DefaultFlushInterval, "ship a partial batch after this long")
	fs.IntVar(&o.CloudWatch.BufferBytes, "cloudwatch-buffer", cwlogs.DefaultBufferBytes, "bytes of records held while CloudWatch is slow or unreachable; beyond it the oldest are dropped and counted")
	fs.Func("cloudwatch-retention-days", "retention applied to a log group the appliance creates (e.g. 30, 90, 365)", func(v string) error {
		n, err := strconv.ParseInt(v, 10, 32) // no wrap: 4294967297 is not 1
		if err != nil || !cwlogs.ValidRetentionDays(int32(n)) {
			return fmt.Errorf("%q is not a retention CloudWatch Logs offers", v)
		}
		o.CloudWatch.RetentionDays = int32(n)
		return nil
	})
	fs.StringVar(&o.TLSKeyLog, "tls-keylog", "", "file (mode 0600) the secrets of both TLS sessions of every bumped connection are appended to, NSS key log format, so Wireshark can decrypt captures; it holds secrets (off when empty)")
	fs.StringVar(&o.Capture.PcapDir, "pcap-dir", "", "directory every inner packet received from and sent to the GWLB is written to, as rotated pcapng files with one interface per GWLB endpoint (off when empty). The other --pcap-* flags need it")
	fs.Int64Var(&o.Capture.RotateBytes, "pcap-rotate-bytes", capture.DefaultRotateBytes, "start a new pcap file before the current one would grow past this many bytes")
	fs.DurationVar(&o.Capture.RotateAge, "pcap-rotate-age", capture.DefaultRotateAge, "start a new pcap file once the current one is this old")
	fs.Int64Var(&o.Capture.MaxBytes, "pcap-max-bytes", capture.DefaultMaxBytes, "bytes the pcap files may take together; the oldest are deleted to stay under it")
	fs.Func("pcap-filter", "write only the packets this filter matches to the pcap files: conditions separated by ';', each key=value[,value...], keys client_cidrs, dest_cidrs, ports, protocols (tcp, udp, icmp), endpoints; repeat the flag for several filters (a packet matching any is written)", func(v string) error {
		f, err := capture.ParseFilter(v)
		if err != nil {
			return err
		}
		o.Capture.Filters = append(o.Capture.Filters, f)
		return nil
	})
	fs.StringVar(&o.Capture.MirrorTAP, "mirror-tap", "", "TAP device every inner packet is mirrored to, for an IDS to read: Ethernet frames with one 802.1Q VLAN per GWLB endpoint; created if missing (CAP_NET_ADMIN) (off when empty)")
	fs.BoolVar(&o.Capture.Plaintext, "capture-plaintext", false, "also write the decrypted side of every bumped TLS connection to --pcap-dir and --mirror-tap, synthesized as a TCP stream between the client's and the destination's real addresses, to the real port, from the client's port with its top bit flipped, or the next free port when a flow holds that one (HTTP/1 as sent, HTTP/2 as its frames), marked apart from the wire packets: pcap interface vpce-…-plaintext, mirror VLAN = the endpoint's + 2000; it holds the traffic's secrets (needs --pcap-dir or --mirror-tap)")
	fs.BoolVar(&o.AllowLoopback, "unsafe-allow-loopback", false, "TESTING ONLY: let clients reach loopback destinations, the appliance's own services included")
	fs.StringVar(&o.LogLevel, "log-level", o.LogLevel, "debug, info, warn or error (logs go to stderr)")
	fs.Var(&p.memLimit, "memory-limit", memoryLimitUsage)
	fs.BoolVar(&p.adaptProcs, "adapt-procs", p.adaptProcs, adaptProcsUsage)
	if err := cliflag.Parse(fs, args); err != nil {
		return o, p, err
	}
	if fs.NArg() > 0 {
		return o, p, fmt.Errorf("unexpected argument %q (see --help)", fs.Arg(0))
	}
	// Leaving --config out runs the built-in allow-all policy; giving it
	// empty is rather `--config "$POLICY"` with the variable unset, which
	// must not quietly do the same.
	configGiven := false
	fs.Visit(func(f *flag.Flag) { configGiven = configGiven || f.Name == "config" })
	if configGiven && o.Config == "" {
		return o, p, errors.New(`--config "": empty; name the policy file, or leave the flag out to allow every flow`)
	}
	if err := appliance.CheckCAFlags(&o); err != nil {
		return o, p, err
	}
	if err := checkFlagValues(&o); err != nil {
		return o, p, err
	}
	if o.RecordStall <= 0 {
		return o, p, fmt.Errorf("--record-stall %s: must be positive", o.RecordStall)
	}
	if lv := new(slog.Level); lv.UnmarshalText([]byte(o.LogLevel)) != nil {
		return o, p, fmt.Errorf("--log-level %q: want debug, info, warn or error", o.LogLevel)
	}
	if o.MaxHeaderBytes < 1024 {
		return o, p, fmt.Errorf("--max-header-bytes %d: must be at least 1024", o.MaxHeaderBytes)
	}
	if o.MaxHeaderBytes > intercept.MaxMaxHeaderBytes {
		return o, p, fmt.Errorf("--max-header-bytes %d: must be at most %d (1 MiB), the most HTTP/2 can be held to: the HTTP/2 server behind the limit refuses larger header lists itself, unrecorded", o.MaxHeaderBytes, intercept.MaxMaxHeaderBytes)
	}
	// The service would refuse every batch sent under such a name.
	if g := o.CloudWatch.Group; g != "" {
		if err := cwlogs.CheckGroupName(g); err != nil {
			return o, p, fmt.Errorf("--cloudwatch-group %q: %w", g, err)
		}
	}
	if st := o.CloudWatch.Stream; st != "" {
		if err := cwlogs.CheckStreamName(st); err != nil {
			return o, p, fmt.Errorf("--cloudwatch-stream %q: %w", st, err)
		}
	}
	// After the values' own checks, which name the problem more closely.
	if err := checkOutputTuning(fs); err != nil {
		return o, p, err
	}
	return o, p, nil
}

func setupLogging(level string, w io.Writer) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		l = slog.LevelInfo
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})))
}

// notify tells systemd (Type=notify) how the service stands; a failure
// is logged, not fatal: the unit's start times out and it restarts.
func notify(state string) {
	if err := sdNotify(state); err != nil {
		slog.Warn("telling systemd", "state", state, "err", err)
	}
}
