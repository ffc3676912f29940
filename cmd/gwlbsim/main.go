// Command gwlbsim simulates an AWS Gateway Load Balancer in front of one
// gwlbproxy appliance or a target group of them, for demos, benchmarks and
// namespace tests.
//
// In TUN mode it creates a layer-3 TUN device; every IP packet the kernel
// routes into that device is encapsulated in GENEVE with the AWS options
// (endpoint ID, attachment ID, a flow cookie per flow) and sent to the
// flow's target from one of several source ports of --addr, as the GWLB
// does. Replies are accepted only on --addr:--listen-port, only from the
// target that owns the flow and only under the exact header the simulator
// sent for it; they are written back to the device. Addresses and routes
// of the device are left to the caller:
//
//	gwlbsim --addr 198.18.1.2 --appliance 198.18.1.1 --tun tun0 &
//	ip addr add 198.18.50.2/32 dev tun0 && ip link set tun0 up
//	ip route add default dev tun0
//
// A target group: --target repeated (or a comma-separated list), with
// --stickiness, health checks (--health-port and the other --health-*
// flags), the target failover settings (--on-unhealthy,
// --on-deregistration) and --deregistration-delay. --admin-addr serves
// /stats, /flows, /route, /attributes, /register and /deregister.
//
// On SIGTERM or SIGINT it prints its counters as one JSON object on stdout
// and exits 0.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/cliflag"
	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/netstack/gwlbsim"
)

func main() {
	if err := runMain(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "gwlbsim:", err)
		os.Exit(2)
	}
}

// options is the command line.
type options struct {
	Addr       netip.Addr
	Appliance  netip.AddrPort // the first target; unset with --target alone
	TUN        string
	Endpoint   uint64
	Attachment uint64
	ListenPort uint16
	Senders    int
	LogLevel   string
	AdminAddr  string // "": no admin listener
	Offload    bool   // the TUN device's offloads (virtio-net header, TSO, GRO)
	// Group holds the target group's settings; nil when no flag of theirs
	// was given: a target group of one, with the defaults.
	Group *groupOptions
}

// groupOptions are the target group's flags.
type groupOptions struct {
	Targets        []netip.AddrPort // besides Appliance
	Stickiness     gwlbsim.Stickiness
	Health         gwlbsim.HealthCheck // Port 0: no health checks
	Attributes     gwlbsim.Attributes
	TCPIdleTimeout time.Duration
	IdleTimeout    time.Duration
}

func defaultGroup() groupOptions {
	return groupOptions{
		Stickiness: gwlbsim.FiveTuple,
		Health: gwlbsim.HealthCheck{
			Path: gwlbsim.DefaultHealthPath, Interval: gwlbsim.DefaultHealthInterval, Timeout: gwlbsim.DefaultHealthTimeout,
			HealthyThreshold: gwlbsim.DefaultHealthyThreshold, UnhealthyThreshold: gwlbsim.DefaultUnhealthyThreshold,
		},
		Attributes:     gwlbsim.Attributes{OnUnhealthy: gwlbsim.NoRebalance, OnDeregistration: gwlbsim.NoRebalance, DeregistrationDelay: 300 * time.Second},
		TCPIdleTimeout: gwlbsim.DefaultTCPIdleTimeout,
		IdleTimeout:    gwlbsim.DefaultIdleTimeout,
	}
}

// Defaults for the simulated endpoint. The endpoint ID prints, the way the
// appliance's records name it, as vpce-0123456789abcdef0.
const (
	defaultEndpoint   = "vpce-0123456789abcdef0"
	defaultAttachment = "0a1b2c3d4e5f6071"
)

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("gwlbsim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: gwlbsim --addr IP --appliance HOST[:PORT] --tun NAME [flags]
       gwlbsim --addr IP --target HOST[:PORT] --target HOST[:PORT]... --tun NAME [flags]

gwlbsim is a GWLB simulator: IP packets routed into the TUN device travel
over GENEVE to a gwlbproxy appliance, or to the targets of a target group;
replies carrying each flow's header, from the flow's target, come back out
of the device. Configure the device's address and routes yourself once it
exists. SIGTERM/SIGINT print the counters as JSON on stdout.

A target group: new flows go to healthy targets only, by a hash of the
--stickiness tuple; to every registered target when none is healthy
(fail-open). A target is healthy after one passing health check (initial),
or --healthy-threshold in a row (unhealthy), unhealthy after
--unhealthy-threshold failures in a row. Existing flows stay on their
target (no_rebalance) or move, under a new flow cookie, to a healthy one
(rebalance): on unhealthy at once, on deregistration when the delay ends.

Admin listener (--admin-addr): GET /stats (JSON: counters, attributes,
targets with their health and flows), GET /flows, GET
/route?proto=tcp&src=IP:PORT&dst=IP:PORT[&count=N] (where a packet would
go; with count, for N source ports from PORT), GET and POST
/attributes?on_unhealthy=&on_deregistration=&deregistration_delay=,
POST /deregister?target=IP[:PORT], POST /register?target=IP[:PORT].

Flags:
`)
		fs.PrintDefaults()
	}
	addr := fs.String("addr", "", "the simulator's own IPv4 address: replies are received on addr:listen-port, packets are sent from varying source ports of it (required)")
	appliance := fs.String("appliance", "", fmt.Sprintf("the appliance's GENEVE listener, host[:port] (port defaults to %d): a target group of one; required unless --target is given", netstack.GenevePort))
	fs.StringVar(&o.TUN, "tun", "", "name of the TUN device to create (IFF_TUN, no packet information; required)")
	fs.BoolVar(&o.Offload, "offload", true, "the TUN device's offloads: virtio-net header, TCP (and UDP) segments of up to 64 KiB split into packets on read, replies coalesced on write; false: one packet per read and write")
	endpoint := fs.String("endpoint-id", defaultEndpoint, "GWLB endpoint ID, hex, with or without the vpce- prefix")
	attachment := fs.String("attachment-id", defaultAttachment, "GWLB attachment ID, hex")
	port := fs.Uint("listen-port", netstack.GenevePort, "UDP port replies are accepted on (the GWLB's own is 6081)")
	fs.IntVar(&o.Senders, "senders", 16, "UDP sockets (source ports) flows are spread over")
	fs.StringVar(&o.LogLevel, "log-level", "info", "debug, info, warn or error (logs go to stderr)")
	fs.StringVar(&o.AdminAddr, "admin-addr", "", "TCP address of the admin listener (/stats, /flows, /route, /attributes, /register, /deregister); empty: none")
	g := defaultGroup()
	var targets []string
	fs.Func("target", "a target's GENEVE address, host[:port] (repeatable, or comma-separated): a target group; --appliance, if given, is the first", func(v string) error {
		for _, f := range strings.Split(v, ",") {
			if f = strings.TrimSpace(f); f != "" {
				targets = append(targets, f)
			}
		}
		return nil
	})
	stickiness := fs.String("stickiness", string(g.Stickiness), "what defines a flow: 5-tuple, 3-tuple (source IP, destination IP, protocol) or 2-tuple (source IP, destination IP)")
	fs.IntVar(&g.Health.Port, "health-port", 0, "HTTP port health checks go to on each target's address (the GWLB's default is 80); 0: no health checks, every target healthy")
	fs.StringVar(&g.Health.Path, "health-path", g.Health.Path, "path of the HTTP health check")
	fs.DurationVar(&g.Health.Interval, "health-interval", g.Health.Interval, "time between two checks of a target (the GWLB: 5s-300s; here from 10ms)")
	fs.DurationVar(&g.Health.Timeout, "health-timeout", g.Health.Timeout, "a check without an answer within this fails; at most the interval")
	fs.IntVar(&g.Health.HealthyThreshold, "healthy-threshold", g.Health.HealthyThreshold, "consecutive passing checks (status 200-399) that make an unhealthy target healthy (a new one needs one)")
	fs.IntVar(&g.Health.UnhealthyThreshold, "unhealthy-threshold", g.Health.UnhealthyThreshold, "consecutive failed checks that make a target unhealthy")
	onUnhealthy := fs.String("on-unhealthy", string(g.Attributes.OnUnhealthy), "target_failover.on_unhealthy: no_rebalance (existing flows stay) or rebalance (they move to a healthy target, under a new flow cookie)")
	onDereg := fs.String("on-deregistration", string(g.Attributes.OnDeregistration), "target_failover.on_deregistration: no_rebalance (the flows are dropped when the delay ends) or rebalance (they move then)")
	fs.DurationVar(&g.Attributes.DeregistrationDelay, "deregistration-delay", g.Attributes.DeregistrationDelay, "how long a deregistered target keeps its existing flows (0s-3600s)")
	fs.DurationVar(&g.TCPIdleTimeout, "tcp-idle-timeout", g.TCPIdleTimeout, "a TCP flow without packets for this long is forgotten; its next packet is a new flow")
	fs.DurationVar(&g.IdleTimeout, "idle-timeout", g.IdleTimeout, "a flow of any other protocol without packets for this long is forgotten")
	if err := cliflag.Parse(fs, args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q (see -help)", fs.Arg(0))
	}
	if lv := new(slog.Level); lv.UnmarshalText([]byte(o.LogLevel)) != nil {
		return o, fmt.Errorf("--log-level %q: want debug, info, warn or error", o.LogLevel)
	}
	var err error
	if o.Addr, err = parseAddr(*addr); err != nil {
		return o, err
	}
	if *appliance != "" || len(targets) == 0 {
		if o.Appliance, err = parseAppliance(*appliance); err != nil {
			return o, err
		}
	}
	groupFlags := map[string]bool{}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "target", "stickiness", "health-port", "health-path", "health-interval", "health-timeout", "healthy-threshold",
			"unhealthy-threshold", "on-unhealthy", "on-deregistration", "deregistration-delay", "tcp-idle-timeout", "idle-timeout":
			groupFlags[f.Name] = true
		}
	})
	if len(groupFlags) > 0 {
		if err := g.parse(targets, *stickiness, *onUnhealthy, *onDereg, o.Appliance, groupFlags); err != nil {
			return o, err
		}
		o.Group = &g
	}
	if o.TUN == "" {
		return o, errors.New("--tun is required: name the TUN device to create, e.g. --tun tun0")
	}
	if o.Endpoint, err = parseID(*endpoint); err != nil {
		return o, fmt.Errorf("--endpoint-id: %w", err)
	}
	if o.Attachment, err = parseID(*attachment); err != nil {
		return o, fmt.Errorf("--attachment-id: %w", err)
	}
	if *port == 0 || *port > 65535 {
		return o, fmt.Errorf("--listen-port %d: want 1-65535", *port)
	}
	o.ListenPort = uint16(*port)
	if o.Senders <= 0 || o.Senders > 1024 {
		return o, fmt.Errorf("--senders %d: want 1-1024", o.Senders)
	}
	return o, nil
}

func parseAddr(s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, errors.New("--addr is required: the simulator's own IPv4 address")
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return netip.Addr{}, fmt.Errorf("--addr %q: want an IPv4 address (the GWLB's outer header is always IPv4)", s)
	}
	return a, nil
}

// parseAppliance resolves host[:port] to an IPv4 address and port.
func parseAppliance(s string) (netip.AddrPort, error) {
	if s == "" {
		return netip.AddrPort{}, errors.New("--appliance is required: the appliance's GENEVE address, host[:port] (or --target, repeated, for a target group)")
	}
	return parseTarget("--appliance", s)
}

// parseTarget resolves host[:port] (port 6081 by default) to an IPv4
// address and port.
func parseTarget(flagName, s string) (netip.AddrPort, error) {
	if _, _, err := net.SplitHostPort(s); err != nil {
		s = net.JoinHostPort(s, strconv.Itoa(netstack.GenevePort))
	}
	ua, err := net.ResolveUDPAddr("udp4", s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%s %q: %w", flagName, s, err)
	}
	ap := ua.AddrPort()
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	if !ap.Addr().Is4() || ap.Addr().IsUnspecified() || ap.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("%s %q: want a unicast IPv4 address and a port", flagName, s)
	}
	return ap, nil
}

// parse checks the target group's flags; set names the ones given.
func (g *groupOptions) parse(targets []string, stickiness, onUnhealthy, onDereg string, appliance netip.AddrPort, set map[string]bool) error {
	seen := map[netip.Addr]bool{}
	if appliance.IsValid() {
		seen[appliance.Addr()] = true
	}
	for _, s := range targets {
		t, err := parseTarget("--target", s)
		if err != nil {
			return err
		}
		if seen[t.Addr()] {
			return fmt.Errorf("--target %s: that address is already a target (replies are told apart by address)", s)
		}
		seen[t.Addr()] = true
		g.Targets = append(g.Targets, t)
	}
	var err error
	if g.Stickiness, err = gwlbsim.ParseStickiness(stickiness); err != nil {
		return fmt.Errorf("--stickiness: %w", err)
	}
	if g.Attributes.OnUnhealthy, err = gwlbsim.ParseFailover(onUnhealthy); err != nil {
		return fmt.Errorf("--on-unhealthy: %w", err)
	}
	if g.Attributes.OnDeregistration, err = gwlbsim.ParseFailover(onDereg); err != nil {
		return fmt.Errorf("--on-deregistration: %w", err)
	}
	if d := g.Attributes.DeregistrationDelay; d < 0 || d > time.Hour {
		return fmt.Errorf("--deregistration-delay %s: want 0s-3600s", d)
	}
	if g.TCPIdleTimeout <= 0 || g.IdleTimeout <= 0 {
		return errors.New("--tcp-idle-timeout and --idle-timeout must be positive")
	}
	if g.Health.Port == 0 {
		for _, f := range []string{"health-path", "health-interval", "health-timeout", "healthy-threshold", "unhealthy-threshold"} {
			if set[f] {
				return fmt.Errorf("--%s needs --health-port: without it there are no health checks", f)
			}
		}
		return nil
	}
	return checkHealth(g.Health)
}

// healthFlags names the flag of each health check setting.
var healthFlags = map[string]string{
	"port": "--health-port", "path": "--health-path", "interval": "--health-interval",
	"timeout": "--health-timeout", "healthy threshold": "--healthy-threshold", "unhealthy threshold": "--unhealthy-threshold",
}

// checkHealth validates health check flags with the simulator's own check,
// naming the flag at fault.
func checkHealth(h gwlbsim.HealthCheck) error {
	// The simulator reads a zero as "the default"; a flag set to zero is
	// a mistake, since the flags' own defaults are the simulator's.
	for _, z := range []struct {
		flag string
		zero bool
	}{
		{"--health-interval", h.Interval == 0}, {"--health-timeout", h.Timeout == 0},
		{"--healthy-threshold", h.HealthyThreshold == 0}, {"--unhealthy-threshold", h.UnhealthyThreshold == 0},
	} {
		if z.zero {
			return fmt.Errorf("%s 0: must be positive", z.flag)
		}
	}
	err := h.Check()
	var he *gwlbsim.HealthCheckError
	if errors.As(err, &he) {
		reason := strings.ReplaceAll(he.Reason, "the interval", "--health-interval")
		return fmt.Errorf("%s %v: %s", healthFlags[he.Setting], he.Value, reason)
	}
	return err
}

// parseID reads a 64-bit ID in hex. AWS prints endpoint IDs as vpce- and 17
// hex digits, the first of which is 0 for every 64-bit value.
func parseID(s string) (uint64, error) {
	h := strings.TrimPrefix(strings.ToLower(strings.TrimSpace(s)), "vpce-")
	h = strings.TrimPrefix(h, "0x")
	if h == "" {
		return 0, fmt.Errorf("%q: empty", s)
	}
	v, err := strconv.ParseUint(h, 16, 64)
	if err != nil {
		return 0, fmt.Errorf("%q: want at most 64 bits of hex: %w", s, err)
	}
	return v, nil
}

func setupLogging(level string, w io.Writer) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		l = slog.LevelInfo
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})))
}

// runMain parses the command line and runs the simulator until SIGTERM or
// SIGINT.
func runMain(args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	setupLogging(o.LogLevel, stderr)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return runTUN(ctx, o, stdout)
}

// simConfig is the simulator's configuration from the command line.
func (o options) simConfig() gwlbsim.Config {
	g := defaultGroup()
	if o.Group != nil {
		g = *o.Group
	}
	return gwlbsim.Config{
		Addr: o.Addr, ListenPort: o.ListenPort, Appliance: o.Appliance, Targets: g.Targets, Senders: o.Senders,
		Stickiness: g.Stickiness, HealthCheck: g.Health, Attributes: g.Attributes,
		TCPIdleTimeout: g.TCPIdleTimeout, IdleTimeout: g.IdleTimeout,
	}
}

// runTUN carries the TUN device's packets until ctx is cancelled, then
// prints the counters to stdout.
func runTUN(ctx context.Context, o options, stdout io.Writer) error {
	dev, name, err := openTUN(o.TUN, o.Offload)
	if err != nil {
		return err
	}
	cfg := o.simConfig()
	sim, err := gwlbsim.New(cfg)
	if err != nil {
		dev.Close()
		return err
	}
	ep := sim.Endpoint(o.Endpoint, o.Attachment)
	p := newPump(dev, ep)
	var admin *adminServer
	if o.AdminAddr != "" {
		if admin, err = startAdmin(o.AdminAddr, sim, o.Endpoint, p); err != nil {
			sim.Close()
			dev.Close()
			return err
		}
	}
	loopErr := make(chan error, 1)
	go func() { loopErr <- p.readLoop() }()
	targets := make([]string, 0, len(cfg.Targets)+1)
	for _, t := range sim.Targets() {
		targets = append(targets, t.Addr.String())
	}
	slog.Info("gwlbsim running", "tun", name, "addr", sim.Addr(), "targets", strings.Join(targets, ","),
		"endpoint", netstack.FlowInfo{Endpoint: o.Endpoint}.EndpointName(),
		"attachment", fmt.Sprintf("%016x", o.Attachment), "senders", o.Senders,
		"stickiness", cfg.Stickiness, "health_port", cfg.HealthCheck.Port, "admin", o.AdminAddr,
		"offload", o.Offload, "batch", dev.BatchSize())

	var runErr error
	select {
	case <-ctx.Done():
		slog.Info("gwlbsim stopping")
	case runErr = <-loopErr:
		// The device failed under us; still report what was counted.
		if runErr == nil {
			runErr = errors.New("the TUN device was closed")
		}
	}
	if admin != nil {
		admin.close()
	}
	// The device goes first, so no packet is sent into a closed simulator;
	// then the simulator, whose reply reader may still write to the device
	// (the pump ignores writes to a closed device).
	dev.Close()
	if runErr == nil {
		runErr = <-loopErr
	}
	sim.Close()
	enc := json.NewEncoder(stdout)
	if err := enc.Encode(collectStats(sim, p)); err != nil {
		return errors.Join(runErr, fmt.Errorf("printing the stats: %w", err))
	}
	return runErr
}
