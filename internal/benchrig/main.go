// Command benchrig measures bulk TCP through the appliance with real
// kernels at both ends, against plain kernel routing between the same
// namespaces, in one run (make bench-rig, as root).
//
// Three network namespaces: a client with Debian's iperf3 whose traffic
// gwlbsim --tun carries over GENEVE to gwlbproxy in the appliance's
// namespace, which relays it to an iperf3 server in the third. For one
// flow and for --parallel flows, each way (the client sending, then the
// server: iperf3 -R), it runs iperf3 through the appliance and with the
// appliance's namespace forwarding in the kernel instead, back to back.
// It prints Gbit/s, the appliance's and gwlbsim's CPU seconds (user +
// system, from /proc) per GiB carried, and the ratio to kernel routing.
// With --napi-threads, the veths receive the GENEVE legs in NAPI threads
// of their own, whose CPU counts for the process they deliver to.
//
// Every address lives inside the namespaces, which are deleted, and every
// process stopped, when it ends, also on an error or an interrupt.
//
//	go run ./internal/benchrig --bin bin --time 5s --runs 2
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// options is the command line.
type options struct {
	bin      string
	iperf3   string
	duration time.Duration
	runs     int
	parallel int
	mtu      int
	offload  bool
	napi     bool
	alone    bool
	keep     bool
	appEnv   string
	appArgs  string // extra flags for the appliance
}

func main() {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))
	os.Exit(runMain())
}

func runMain() int {
	if len(os.Args) > 1 && os.Args[1] == "shim" {
		if err := runShim(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "bench-rig:", err)
			return 1
		}
		return 0
	}
	var o options
	flag.StringVar(&o.bin, "bin", "bin", "directory holding gwlbproxy and gwlbsim (make build)")
	flag.StringVar(&o.iperf3, "iperf3", "iperf3", "the iperf3 program")
	flag.DurationVar(&o.duration, "time", 5*time.Second, "length of each iperf3 test")
	flag.IntVar(&o.runs, "runs", 1, "times each test runs (kernel and appliance alternating)")
	flag.IntVar(&o.parallel, "parallel", 4, "flows of the multi-flow tests (iperf3 -P)")
	flag.IntVar(&o.mtu, "mtu", 8500, "MTU of the client's TUN device and of the kernel-routed path (the GWLB's is 8500)")
	flag.BoolVar(&o.offload, "offload", true, "gwlbsim's TUN offloads (gwlbsim --offload)")
	flag.BoolVar(&o.napi, "napi-threads", false, "the veths receive UDP (the GENEVE legs) in NAPI threads of their own, with GRO on, as a NIC's receive runs apart from the sender, and each thread's CPU counts for the process it delivers to (default: the receiver's input path runs in the sender's system call, charged to the sender); TCP stays as by default; needs ethtool")
	flag.BoolVar(&o.alone, "sim-alone", true, "also measure gwlbsim alone, with a minimal GENEVE-to-TUN shim (kernel forwarding) in place of the appliance")
	flag.BoolVar(&o.keep, "keep-logs", false, "keep the work directory (logs, records) and print its path")
	flag.StringVar(&o.appEnv, "appliance-env", "", "space-separated NAME=VALUE pairs for the appliance's environment only, e.g. GOMAXPROCS=1")
	flag.StringVar(&o.appArgs, "appliance-args", "", "space-separated flags added to the appliance's, e.g. '--return-path bound'")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench-rig needs root: it creates network namespaces, veth pairs and a TUN device")
		return 1
	}
	if o.runs < 1 || o.parallel < 2 || o.duration < time.Second || o.mtu < 1280 || o.mtu > 65535 {
		fmt.Fprintln(os.Stderr, "bench-rig: want --runs >= 1, --parallel >= 2, --time >= 1s, --mtu 1280-65535")
		return 2
	}
	tools := []string{"ip", "ss", "sysctl", o.iperf3}
	if o.napi {
		tools = append(tools, "ethtool")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			fmt.Fprintf(os.Stderr, "bench-rig needs %s (apt-get install iproute2 procps iperf3 ethtool)\n", tool)
			return 1
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	r := &rig{o: o}
	err := r.run(ctx)
	r.cleanup()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-rig:", err)
		return 1
	}
	return 0
}

// rig is one run of the bench: the namespaces and the processes in them.
type rig struct {
	o                options
	work             string
	tp               topology
	server, app, sim *proc
	shim             *proc
	results          []result
	simAloneResults  []result
}

// cleanup stops every process and deletes the namespaces, whatever state
// the run ended in.
func (r *rig) cleanup() {
	r.sim.stop()
	r.shim.stop()
	r.app.stop()
	r.server.stop()
	r.tp.teardown()
	if r.work == "" {
		return
	}
	if r.o.keep {
		fmt.Fprintln(os.Stderr, "bench-rig: logs kept in", r.work)
		return
	}
	os.RemoveAll(r.work)
}

func (r *rig) run(ctx context.Context) error {
	var err error
	if r.work, err = os.MkdirTemp("", "gwlbrig."); err != nil {
		return fmt.Errorf("creating a work directory: %w", err)
	}
	bin, err := filepath.Abs(r.o.bin)
	if err != nil {
		return fmt.Errorf("--bin: %w", err)
	}
	for _, b := range []string{"gwlbproxy", "gwlbsim"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			return fmt.Errorf("%s: %w (make build)", b, err)
		}
	}
	if err := newTopology(ctx, &r.tp, r.o.napi); err != nil {
		return fmt.Errorf("creating the namespaces: %w", err)
	}
	if err := r.startAll(ctx, bin); err != nil {
		return err
	}
	fmt.Printf("bench-rig: %d-second iperf3 tests, TUN MTU %d, gwlbsim offload %t, NAPI threads %t, %d CPUs\n",
		int(r.o.duration.Seconds()), r.o.mtu, r.o.offload, r.o.napi, numCPU())
	for run := 1; run <= r.o.runs; run++ {
		for _, flows := range []int{1, r.o.parallel} {
			for _, reverse := range []bool{false, true} {
				if err := r.measure(ctx, run, flows, reverse); err != nil {
					return err
				}
			}
		}
	}
	// The simulator's counters come out on SIGTERM.
	r.sim.stop()
	simLog := r.sim.log
	if r.o.alone {
		if err := r.simAlone(ctx, bin); err != nil {
			return err
		}
		r.sim.stop()
	}
	printSummary(os.Stdout, r.results)
	if r.o.alone {
		printAloneSummary(os.Stdout, r.simAloneResults)
	}
	if b, err := os.ReadFile(simLog); err == nil {
		fmt.Printf("\ngwlbsim's counters and log (through the appliance):\n%s", b)
	}
	return nil
}

// startAll starts the iperf3 server, the appliance and the simulator, and
// routes the client through the simulator's TUN device.
func (r *rig) startAll(ctx context.Context, bin string) error {
	var err error
	r.server, err = start(r.tp.srv, filepath.Join(r.work, "iperf3-server.log"), r.o.iperf3, "-s", "-B", srvAddr)
	if err != nil {
		return err
	}
	if err := waitFor(ctx, 10*time.Second, "the iperf3 server", r.server, func() bool { return listening(ctx, r.tp.srv, "t", 5201) }); err != nil {
		return err
	}
	app := []string{filepath.Join(bin, "gwlbproxy"),
		"--geneve-addr", applianceAddr + ":6081", "--admin-addr", applianceAddr + ":8080",
		// Explicit senders: off EC2 the appliance never asks instance metadata.
		"--gwlb-cidrs", simAddr + "/32",
		"--state-dir", filepath.Join(r.work, "state"), "--access-log", filepath.Join(r.work, "access.jsonl"),
		"--drain-timeout", "1s"}
	app = append(app, strings.Fields(r.o.appArgs)...)
	if r.o.appEnv != "" { // env(1) execs in place: the process ID stays the appliance's
		app = append(append([]string{"env"}, strings.Fields(r.o.appEnv)...), app...)
	}
	r.app, err = start(r.tp.app, filepath.Join(r.work, "gwlbproxy.log"), app[0], app[1:]...)
	if err != nil {
		return err
	}
	if err := waitFor(ctx, 20*time.Second, "the appliance's listeners", r.app, func() bool {
		return listening(ctx, r.tp.app, "u", 6081) && listening(ctx, r.tp.app, "t", 8080)
	}); err != nil {
		return err
	}
	r.sim, err = start(r.tp.client, filepath.Join(r.work, "gwlbsim.log"), filepath.Join(bin, "gwlbsim"), r.simArgs(applianceAddr)...)
	if err != nil {
		return err
	}
	return r.tp.routeThroughTUN(ctx, r.o.mtu, r.sim)
}

// measure runs one test through the kernel, then through the appliance.
func (r *rig) measure(ctx context.Context, run, flows int, reverse bool) error {
	res := result{run: run, flows: flows, reverse: reverse}
	if err := r.tp.kernelRouting(ctx, true, r.o.mtu); err != nil {
		return err
	}
	k, err := r.iperf(ctx, flows, reverse)
	if offErr := r.tp.kernelRouting(ctx, false, r.o.mtu); err == nil {
		err = offErr
	}
	if err != nil {
		return fmt.Errorf("kernel routing, %s: %w", res.name(), err)
	}
	res.kernel = k
	app0, err1 := r.app.cpuSeconds()
	sim0, err2 := r.sim.cpuSeconds()
	appRx0, err3 := r.tp.napiCPU(r.tp.app)
	simRx0, err4 := r.tp.napiCPU(r.tp.client)
	a, err := r.iperf(ctx, flows, reverse)
	app1, err5 := r.app.cpuSeconds()
	sim1, err6 := r.sim.cpuSeconds()
	appRx1, err7 := r.tp.napiCPU(r.tp.app)
	simRx1, err8 := r.tp.napiCPU(r.tp.client)
	if err != nil {
		return fmt.Errorf("through the appliance, %s: %w\nappliance log:\n%s\ngwlbsim log:\n%s", res.name(), err, r.app.tail(), r.sim.tail())
	}
	if err := errors.Join(err1, err2, err3, err4, err5, err6, err7, err8); err != nil {
		return err
	}
	res.appliance, res.napi = a, r.o.napi
	res.appRxCPU = appRx1 - appRx0
	res.appCPU, res.simCPU = app1-app0+res.appRxCPU, sim1-sim0+simRx1-simRx0
	r.results = append(r.results, res)
	printResult(os.Stdout, res)
	return nil
}

// simArgs is gwlbsim's command line in front of the appliance at addr.
func (r *rig) simArgs(addr string) []string {
	args := []string{"--addr", simAddr, "--appliance", addr, "--tun", tunName}
	if !r.o.offload {
		// Only when asked: a gwlbsim from before the flag existed runs too.
		args = append(args, "--offload=false")
	}
	return args
}
