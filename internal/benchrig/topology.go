package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The rig's addresses, all inside its own namespaces (198.18.0.0/15 is
// reserved for benchmarking), as the namespace tests and the demo use them.
const (
	simAddr       = "198.18.1.2"  // client ns, veth to the appliance ns: gwlbsim's own
	applianceAddr = "198.18.1.1"  // appliance ns: GENEVE and admin
	appSrvAddr    = "198.18.2.1"  // appliance ns, veth to the server ns: where flows leave from
	srvAddr       = "198.18.2.3"  // server ns: iperf3 -s
	clientAddr    = "198.18.50.2" // client ns, on the TUN device: iperf3 -c
	tunName       = "tun0"
	vethMTU       = 9001 // an EC2 instance's
)

// topology is the rig's three namespaces, wired by two veth pairs:
// client (iperf3 -c, gwlbsim) ─ appliance (gwlbproxy, or kernel
// forwarding) ─ server (iperf3 -s).
type topology struct {
	client, app, srv string
	made             []string // namespaces created, for teardown
	// napi holds the NAPI threads (pids) of each namespace's veths, when
	// they receive in threads of their own.
	napi map[string][]int
}

// napiThreads turns GRO (and UDP GRO forwarding) on at every veth and
// makes each receive in a kernel thread of its own (threaded NAPI), then
// finds those threads. The rig charges each thread's CPU to the process
// its namespace's packets go to.
//
// A veth otherwise runs the receiver's whole input path inside the
// sender's system call, and with no IRQ time accounting in the kernel that
// work is charged to the sender. A NIC's receive runs apart from any
// sender. But a veth hands a packet to its NAPI thread only when the
// sending veth does no TSO, or when the packet comes from a UDP or ICMP
// socket and the receiving veth forwards UDP GRO (veth.c,
// veth_skb_is_eligible_for_gro). TSO stays on, as on an EC2 instance, so
// only the GENEVE legs (UDP, between gwlbsim and the appliance) move to
// the threads: TCP between the appliance and the server is still received
// inside its sender's system call and charged to it.
func (tp *topology) napiThreads(ctx context.Context) error {
	tp.napi = make(map[string][]int)
	for _, nd := range [][2]string{{tp.client, "to-app"}, {tp.app, "to-client"}, {tp.app, "to-srv"}, {tp.srv, "to-app"}} {
		ns, dev := nd[0], nd[1]
		if err := run(ctx, "ip", "netns", "exec", ns, "ethtool", "-K", dev, "gro", "on", "rx-udp-gro-forwarding", "on"); err != nil {
			return err
		}
		before := napiPids()
		if err := run(ctx, "ip", "netns", "exec", ns, "sh", "-c", "echo 1 > /sys/class/net/"+dev+"/threaded"); err != nil {
			return err
		}
		n := len(tp.napi[ns])
		for pid := range napiPids() {
			if !before[pid] {
				tp.napi[ns] = append(tp.napi[ns], pid)
			}
		}
		if len(tp.napi[ns]) == n {
			return fmt.Errorf("no NAPI thread appeared for %s in %s", dev, ns)
		}
	}
	return nil
}

// napiPids returns the kernel's NAPI threads now ("napi/DEV-ID").
func napiPids() map[int]bool {
	pids := make(map[int]bool)
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		if comm, err := os.ReadFile("/proc/" + d.Name() + "/comm"); err == nil && strings.HasPrefix(string(comm), "napi/") {
			pids[pid] = true
		}
	}
	return pids
}

// napiCPU is the CPU seconds so far of the NAPI threads of namespace ns
// (0 when there are none).
func (tp *topology) napiCPU(ns string) (float64, error) {
	var sum float64
	for _, pid := range tp.napi[ns] {
		s, err := pidCPU(pid, "a NAPI thread")
		if err != nil {
			return 0, err
		}
		sum += s
	}
	return sum, nil
}

// newTopology creates the namespaces and the veth pairs inside them. With
// napi set, every veth receives in a NAPI thread of its own, with GRO on
// (see napiThreads). On an error, what was made is still in tp.made for
// teardown.
func newTopology(ctx context.Context, tp *topology, napi bool) error {
	suffix := fmt.Sprintf("%08x", rand.Uint32())
	tp.client, tp.app, tp.srv = "gwlbrig-client-"+suffix, "gwlbrig-app-"+suffix, "gwlbrig-srv-"+suffix
	for _, ns := range []string{tp.client, tp.app, tp.srv} {
		if err := run(ctx, "ip", "netns", "add", ns); err != nil {
			return err
		}
		tp.made = append(tp.made, ns)
	}
	mtu := strconv.Itoa(vethMTU)
	for _, args := range [][]string{
		// Created inside the namespaces: their fixed names never clash
		// with the host's or another run's.
		{"-n", tp.client, "link", "add", "to-app", "mtu", mtu, "type", "veth", "peer", "name", "to-client", "mtu", mtu, "netns", tp.app},
		{"-n", tp.app, "link", "add", "to-srv", "mtu", mtu, "type", "veth", "peer", "name", "to-app", "mtu", mtu, "netns", tp.srv},
		{"-n", tp.client, "addr", "add", simAddr + "/24", "dev", "to-app"},
		{"-n", tp.app, "addr", "add", applianceAddr + "/24", "dev", "to-client"},
		{"-n", tp.app, "addr", "add", appSrvAddr + "/24", "dev", "to-srv"},
		{"-n", tp.srv, "addr", "add", srvAddr + "/24", "dev", "to-app"},
		{"-n", tp.client, "link", "set", "lo", "up"},
		{"-n", tp.app, "link", "set", "lo", "up"},
		{"-n", tp.srv, "link", "set", "lo", "up"},
		{"-n", tp.client, "link", "set", "to-app", "up"},
		{"-n", tp.app, "link", "set", "to-client", "up"},
		{"-n", tp.app, "link", "set", "to-srv", "up"},
		{"-n", tp.srv, "link", "set", "to-app", "up"},
		// For the kernel-routing runs: the way back to the client's
		// address. Unused while the appliance carries the flows (it
		// dials from its own address).
		{"-n", tp.app, "route", "add", clientAddr + "/32", "via", simAddr, "dev", "to-client"},
		{"-n", tp.srv, "route", "add", clientAddr + "/32", "via", appSrvAddr, "dev", "to-app"},
	} {
		if err := run(ctx, "ip", args...); err != nil {
			return err
		}
	}
	if napi {
		if err := tp.napiThreads(ctx); err != nil {
			return err
		}
	}
	for _, ns := range []string{tp.client, tp.app, tp.srv} {
		if err := tp.sysctl(ctx, ns, "net.ipv4.ip_forward=0"); err != nil {
			return err
		}
	}
	// IPv6 chatter (router solicitations, MLD) stays out of the tunnel.
	if err := tp.sysctl(ctx, tp.client, "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"); err != nil {
		return err
	}
	return nil
}

func (tp *topology) sysctl(ctx context.Context, ns string, settings ...string) error {
	return run(ctx, "ip", append([]string{"netns", "exec", ns, "sysctl", "-q", "-w"}, settings...)...)
}

// routeThroughTUN gives gwlbsim's device the client's address, the MTU
// and the default route, once it exists.
func (tp *topology) routeThroughTUN(ctx context.Context, mtu int, sim *proc) error {
	if err := waitFor(ctx, 10*time.Second, "gwlbsim's TUN device", sim, func() bool {
		return exec.CommandContext(ctx, "ip", "-n", tp.client, "link", "show", tunName).Run() == nil
	}); err != nil {
		return err
	}
	for _, args := range [][]string{
		{"-n", tp.client, "addr", "add", clientAddr + "/32", "dev", tunName},
		{"-n", tp.client, "link", "set", tunName, "mtu", strconv.Itoa(mtu), "up"},
		{"-n", tp.client, "route", "add", "default", "dev", tunName, "src", clientAddr},
	} {
		if err := run(ctx, "ip", args...); err != nil {
			return err
		}
	}
	return nil
}

// kernelRouting switches the client's route to the server between the
// tunnel (off) and plain kernel forwarding through the appliance's
// namespace (on), with the same MTU as the tunnel.
func (tp *topology) kernelRouting(ctx context.Context, on bool, mtu int) error {
	if !on {
		err := run(ctx, "ip", "-n", tp.client, "route", "del", srvAddr+"/32")
		return errors.Join(err, tp.sysctl(ctx, tp.app, "net.ipv4.ip_forward=0"))
	}
	if err := tp.sysctl(ctx, tp.app, "net.ipv4.ip_forward=1"); err != nil {
		return err
	}
	return run(ctx, "ip", "-n", tp.client, "route", "add", srvAddr+"/32", "via", applianceAddr,
		"dev", "to-app", "src", clientAddr, "mtu", strconv.Itoa(mtu))
}

// teardown deletes the namespaces (processes in them must be stopped
// first). It does not use ctx: it runs after an interrupt too.
func (tp *topology) teardown() {
	for _, ns := range tp.made {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		if err := run(ctx, "ip", "netns", "del", ns); err != nil {
			slog.Error("bench-rig: deleting a namespace", "ns", ns, "err", err)
		}
		cancel()
	}
	tp.made = nil
}

// run runs a command to completion; its output goes into the error.
func run(ctx context.Context, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// proc is a long-running process the rig started, in a namespace.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string // file holding its stdout and stderr
	done chan struct{}
	err  error
}

// start starts name with args in namespace ns ("ip netns exec" execs it in
// place, so the process's ID is the program's own).
func start(ns, logPath, name string, args ...string) (*proc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("creating %s: %w", logPath, err)
	}
	defer f.Close()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, waits up to 5 s, then SIGKILLs and waits.
func (p *proc) stop() {
	if p == nil || p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// tail is the end of the process's log, for error messages.
func (p *proc) tail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// cpuSeconds is the process's user and system CPU time so far.
func (p *proc) cpuSeconds() (float64, error) { return pidCPU(p.cmd.Process.Pid, p.name) }

// pidCPU is a process's or thread's user and system CPU time so far, from
// /proc (clock ticks of 1/100 s: USER_HZ on Linux).
func pidCPU(pid int, name string) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("reading %s's CPU time: %w", name, err)
	}
	// Fields after the command name (which may hold spaces) in ")".
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("%s's /proc stat: %d fields", name, len(f))
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("%s's /proc stat: %w", name, err)
	}
	return float64(utime+stime) / 100, nil
}

// waitFor polls cond every 20 ms until it holds, the process dies, or
// the timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, what string, p *proc, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if p != nil && p.exited() {
			return fmt.Errorf("%s exited while waiting for %s: %v\n%s", p.name, what, p.err, p.tail())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s", timeout, what)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// listening reports whether something in ns listens on the port (proto
// "t" for TCP, "u" for UDP).
func listening(ctx context.Context, ns, proto string, port int) bool {
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "ss", "-Hln"+proto, "sport = :"+strconv.Itoa(port)).Output()
	return err == nil && len(strings.TrimSpace(string(out))) > 0
}
