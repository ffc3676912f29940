// Command gwlbsim simulates an AWS Gateway Load Balancer in front of a
// gwlbproxy appliance, for demos, benchmarks and namespace tests.
//
// In TUN mode it creates a layer-3 TUN device; every IP packet the kernel
// routes into that device is encapsulated in GENEVE with the AWS options
// (endpoint ID, attachment ID, a flow cookie per 5-tuple) and sent to the
// appliance from one of several source ports of --addr, as the GWLB does.
// Replies are accepted only on --addr:--listen-port and only under the exact
// header the simulator sent for their flow; they are written back to the
// device. Addresses and routes of the device are left to the caller:
//
//	gwlbsim --addr 198.18.1.2 --appliance 198.18.1.1 --tun tun0 &
//	ip addr add 198.18.50.2/32 dev tun0 && ip link set tun0 up
//	ip route add default dev tun0
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
	Appliance  netip.AddrPort
	TUN        string
	Endpoint   uint64
	Attachment uint64
	ListenPort uint16
	Senders    int
	LogLevel   string
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

gwlbsim is a GWLB simulator: IP packets routed into the TUN device travel
over GENEVE to a gwlbproxy appliance; replies carrying each flow's header
come back out of the device. Configure the device's address and routes
yourself once it exists. SIGTERM/SIGINT print the counters as JSON on stdout.

Flags:
`)
		fs.PrintDefaults()
	}
	addr := fs.String("addr", "", "the simulator's own IPv4 address: replies are received on addr:listen-port, packets are sent from varying source ports of it (required)")
	appliance := fs.String("appliance", "", fmt.Sprintf("the appliance's GENEVE listener, host[:port] (port defaults to %d; required)", netstack.GenevePort))
	fs.StringVar(&o.TUN, "tun", "", "name of the TUN device to create (IFF_TUN, no packet information; required)")
	endpoint := fs.String("endpoint-id", defaultEndpoint, "GWLB endpoint ID, hex, with or without the vpce- prefix")
	attachment := fs.String("attachment-id", defaultAttachment, "GWLB attachment ID, hex")
	port := fs.Uint("listen-port", netstack.GenevePort, "UDP port replies are accepted on (the GWLB's own is 6081)")
	fs.IntVar(&o.Senders, "senders", 16, "UDP sockets (source ports) flows are spread over")
	fs.StringVar(&o.LogLevel, "log-level", "info", "debug, info, warn or error (logs go to stderr)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q (see -help)", fs.Arg(0))
	}
	var err error
	if o.Addr, err = parseAddr(*addr); err != nil {
		return o, err
	}
	if o.Appliance, err = parseAppliance(*appliance); err != nil {
		return o, err
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
		return netip.AddrPort{}, errors.New("--appliance is required: the appliance's GENEVE address, host[:port]")
	}
	if _, _, err := net.SplitHostPort(s); err != nil {
		s = net.JoinHostPort(s, strconv.Itoa(netstack.GenevePort))
	}
	ua, err := net.ResolveUDPAddr("udp4", s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("--appliance %q: %w", s, err)
	}
	ap := ua.AddrPort()
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	if !ap.Addr().Is4() || ap.Addr().IsUnspecified() || ap.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("--appliance %q: want a unicast IPv4 address and a port", s)
	}
	return ap, nil
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

// finalStats is what gwlbsim prints on exit: the simulator's counters and
// the TUN pump's. Field names are stable; tests and scripts parse them.
type finalStats struct {
	gwlbsim.Stats
	TUN pumpStats `json:"tun"`
}

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

// runTUN carries the TUN device's packets until ctx is cancelled, then
// prints the counters to stdout.
func runTUN(ctx context.Context, o options, stdout io.Writer) error {
	dev, name, err := openTUN(o.TUN)
	if err != nil {
		return err
	}
	sim, err := gwlbsim.New(gwlbsim.Config{Addr: o.Addr, ListenPort: o.ListenPort, Appliance: o.Appliance, Senders: o.Senders})
	if err != nil {
		dev.Close()
		return err
	}
	ep := sim.Endpoint(o.Endpoint, o.Attachment)
	p := &pump{dev: dev, send: ep.Send}
	ep.SetReceiver(p.deliver)
	loopErr := make(chan error, 1)
	go func() { loopErr <- p.readLoop() }()
	slog.Info("gwlbsim running", "tun", name, "addr", sim.Addr(), "appliance", o.Appliance,
		"endpoint", netstack.FlowInfo{Endpoint: o.Endpoint}.EndpointName(),
		"attachment", fmt.Sprintf("%016x", o.Attachment), "senders", o.Senders)

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
	// The device goes first, so no packet is sent into a closed simulator;
	// then the simulator, whose reply reader may still write to the device
	// (the pump ignores writes to a closed device).
	dev.Close()
	if runErr == nil {
		runErr = <-loopErr
	}
	sim.Close()
	enc := json.NewEncoder(stdout)
	if err := enc.Encode(finalStats{Stats: sim.Stats(), TUN: p.stats()}); err != nil {
		return errors.Join(runErr, fmt.Errorf("printing the stats: %w", err))
	}
	return runErr
}
